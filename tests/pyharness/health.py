"""grpc.health.v1 probing (grpcio-health-checking stubs)."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health_status(target: str, service: str = "", timeout: float = 1.0) -> str:
    """The ServingStatus name for `service` at target, or raise grpc.RpcError."""
    with grpc.insecure_channel(target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def is_serving(target: str, service: str = "") -> bool:
    try:
        return health_status(target, service) == "SERVING"
    except grpc.RpcError:
        return False
