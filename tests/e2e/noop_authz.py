"""A minimal ext_authz v3 gRPC server that allows everything: a baseline for
the Envoy config and the test harness without keygate.

It adds the upstream header `x-noop-authz: allowed` and, in process, records
every CheckRequest it parsed. Tests may swap `responder` to script answers.

    python tests/e2e/noop_authz.py --port 50051
"""
from __future__ import annotations

import argparse
import threading
from concurrent import futures
from typing import Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ext_authz_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as ext_authz_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

Responder = Callable[[ext_authz_pb2.CheckRequest], ext_authz_pb2.CheckResponse]


def allow(_req: ext_authz_pb2.CheckRequest) -> ext_authz_pb2.CheckResponse:
    resp = ext_authz_pb2.CheckResponse()
    resp.status.code = 0
    resp.ok_response.headers.add(
        header=base_pb2.HeaderValue(key="x-noop-authz", value="allowed"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
    return resp


class NoopAuthz(ext_authz_grpc.AuthorizationServicer):
    def __init__(self, responder: Responder = allow):
        self.responder = responder
        self.requests: list[ext_authz_pb2.CheckRequest] = []
        self._lock = threading.Lock()

    def Check(self, request, context):  # noqa: N802 - gRPC name
        with self._lock:
            self.requests.append(request)
        return self.responder(request)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


class NoopAuthzServer:
    """The servicer on a grpc server bound to host:port (0 = pick one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 responder: Responder = allow):
        self.servicer = NoopAuthz(responder)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.max_receive_message_length", 64 << 20)])
        ext_authz_grpc.add_AuthorizationServicer_to_server(self.servicer, self.server)
        hs = health.HealthServicer()
        hs.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(hs, self.server)
        reflection.enable_server_reflection([
            ext_authz_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.target = f"{host}:{self.port}"
        self.server.start()

    @property
    def requests(self) -> list[ext_authz_pb2.CheckRequest]:
        return self.servicer.requests

    def stop(self) -> None:
        self.server.stop(grace=1).wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50051)
    a = ap.parse_args()
    srv = NoopAuthzServer(a.host, a.port)
    print(f"noop ext_authz on {srv.target}", flush=True)
    try:
        srv.server.wait_for_termination()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
