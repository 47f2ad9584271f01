"""The Check listener's gRPC transport, which keygate writes out by hand
(src/grpc/ext_authz/server.rs) instead of generating it: calls the service
does not have, and bytes that are not a CheckRequest, get precise gRPC
errors and leave the server serving."""
from __future__ import annotations

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2

from pyharness.authz import assert_denied

SERVICE = "/envoy.service.auth.v3.Authorization"


def raw_call(target: str, method: str, payload: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return call(payload, timeout=5)
        except grpc.RpcError as error:
            return error


def test_an_unknown_method_is_unimplemented(keygate):
    result = raw_call(keygate.authz_addr, f"{SERVICE}/Nope", b"")
    assert isinstance(result, grpc.RpcError)
    assert result.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05\x0a"], ids=["garbage", "truncated"])
def test_bytes_that_are_not_a_check_request_are_invalid_argument(keygate, check, payload):
    result = raw_call(keygate.authz_addr, f"{SERVICE}/Check", payload)
    assert isinstance(result, grpc.RpcError)
    assert result.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid CheckRequest" in result.details()
    # The server keeps answering real requests.
    assert_denied(check({}), 401, "missing_credentials")


def test_an_empty_check_request_is_a_clear_denial(keygate):
    result = raw_call(keygate.authz_addr, f"{SERVICE}/Check", b"")
    assert not isinstance(result, grpc.RpcError), result
    response = external_auth_pb2.CheckResponse.FromString(result)
    assert response.denied_response.status.code == 401
    assert response.status.message == "missing_credentials"
