"""The harness and the Envoy config, verified without keygate: Envoy talks to
noop_authz.py (a Python ext_authz server) and to the echo upstream."""
from __future__ import annotations

import json
import time

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ext_authz_pb2

from pyharness import envoyproc as envoy_mod
from pyharness import keyformat
from pyharness.authz import (OVERWRITE_IF_EXISTS_OR_ADD, AuthzClient, assert_allowed,
                             assert_denied, build_check_request)
from pyharness.httpc import http_request
from pyharness.paths import ENVOY_EXAMPLE

# ---------------------------------------------------------------- config


def test_template_renders_and_envoy_validates_it(envoy_binary, tmp_path):
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(envoy_mod.render(
        LISTEN_ADDRESS="127.0.0.1", LISTEN_PORT=18080, ADMIN_ADDRESS="127.0.0.1",
        ADMIN_PORT=19901, KEYGATE_HOST="127.0.0.1", KEYGATE_PORT=50051,
        UPSTREAM_HOST="127.0.0.1", UPSTREAM_PORT=18000))
    assert "#!" not in cfg.read_text() and "${" not in cfg.read_text()
    r = envoy_mod.validate(cfg, envoy_binary)
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_config_is_in_sync_and_valid(envoy_binary):
    assert ENVOY_EXAMPLE.read_text() == envoy_mod.render_example(), (
        "examples/envoy/envoy.yaml is stale: run "
        ".venv-stubs/bin/python tests/pyharness/envoyproc.py --write-example")
    r = envoy_mod.validate(ENVOY_EXAMPLE, envoy_binary)
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_config_has_the_recommended_settings():
    text = ENVOY_EXAMPLE.read_text()
    for needle in ("transport_api_version: V3", "timeout: 0.2s", "failure_mode_allow: false",
                   "status_on_error: { code: ServiceUnavailable }", "validate_mutations: true",
                   "exact: authorization", "exact: x-api-key", "exact: x-forwarded-for",
                   "include_peer_certificate: false", "http2_protocol_options",
                   "connection_keepalive", "normalize_path: true", "merge_slashes: true",
                   "path_with_escaped_slashes_action: REJECT_REQUEST"):
        assert needle in text, needle


# ---------------------------------------------------------------- harness pieces


def test_echo_upstream_echoes_headers(echo_upstream):
    r = http_request(f"http://127.0.0.1:{echo_upstream.port}", "/x?y=1",
                     {"X-Test": "1", "Authorization": "Bearer t"}, method="POST", body=b"abc")
    assert r.status == 200
    up = r.json()
    assert up["method"] == "POST" and up["path"] == "/x?y=1" and up["body_length"] == 3
    assert up["headers"]["x-test"] == "1" and up["headers"]["authorization"] == "Bearer t"


def test_key_format_helpers():
    assert keyformat.b58_fixed(0) == "111111"
    assert keyformat.b58_fixed(57) == "11111z"
    assert keyformat.b58_fixed(58) == "111121"
    assert keyformat.b58_fixed(0xFFFFFFFF) == "7YXq9G"
    assert keyformat.checksum("1" * 32) == "6cqvG8"
    for _ in range(50):
        key = keyformat.make_key()
        assert keyformat.is_well_formed(key) and len(key) == len("sk_live_") + 38
        for i in range(38):
            assert not keyformat.is_well_formed(keyformat.tamper(key, i))
    assert keyformat.KEY_PREFIX_RE.match(keyformat.key_prefix_of(keyformat.make_key("test")))


def test_check_builder_requests_parse_on_a_stub_server(noop):
    client = AuthzClient(noop.target)
    try:
        key = keyformat.make_key()
        res = client.check({"Authorization": f"Bearer {key}", "x-forwarded-for": "198.51.100.9"},
                           path="/v1/orders/42?x=1", method="POST",
                           context_extensions={"keygate.abilities": "read:orders"})
        assert_allowed(res)
        assert res.upstream_headers == {"x-noop-authz": "allowed"}
        assert res.upstream_append_actions["x-noop-authz"] == OVERWRITE_IF_EXISTS_OR_ADD
        got = noop.requests[-1]
        http = got.attributes.request.http
        assert http.method == "POST" and http.path == "/v1/orders/42?x=1"
        assert http.headers["authorization"] == f"Bearer {key}"
        assert http.headers["x-forwarded-for"] == "198.51.100.9"
        assert http.headers[":method"] == "POST" and http.headers[":path"] == "/v1/orders/42?x=1"
        assert dict(got.attributes.context_extensions) == {"keygate.abilities": "read:orders"}
        assert got.attributes.source.address.socket_address.address == "203.0.113.7"
        assert got.attributes.source.address.socket_address.port_value == 54321
        assert got.attributes.request.HasField("time")

        client.check({"x-api-key": key}, header_map=True)
        hm = noop.requests[-1].attributes.request.http
        assert not hm.headers
        assert {h.key: h.raw_value for h in hm.header_map.headers}["x-api-key"] == key.encode()

        client.check({f"x-junk-{i}": "v" for i in range(10_000)})
        assert len(noop.requests[-1].attributes.request.http.headers) == 10_000 + 4
        client.check({"x-api-key": "A" * 65536})
        assert len(noop.requests[-1].attributes.request.http.headers["x-api-key"]) == 65536
        client.check({"authorization": "Bearer sk_live_ÄÖÜ🔑"})
        assert noop.requests[-1].attributes.request.http.headers["authorization"].endswith("🔑")
        client.check_request(ext_authz_pb2.CheckRequest())
        assert not noop.requests[-1].HasField("attributes")
        assert len(noop.requests) == 6
    finally:
        client.close()


def _denial(http_status, code, grpc_code, extra_headers=()):
    resp = ext_authz_pb2.CheckResponse()
    resp.status.code = grpc_code
    resp.denied_response.status.code = http_status
    resp.denied_response.body = json.dumps({"error": {"code": code, "message": "nope"}})
    hdrs = [("content-type", "application/json"), *extra_headers]
    if http_status == 401:
        hdrs.append(("www-authenticate", 'Bearer realm="keygate"'))
    for k, v in hdrs:
        resp.denied_response.headers.add(header=base_pb2.HeaderValue(key=k, value=v))
    return resp


def test_contract_assertions_on_scripted_responses(noop):
    """assert_denied / assert_allowed accept contract-shaped answers and reject others."""
    client = AuthzClient(noop.target)
    try:
        noop.servicer.responder = lambda req: _denial(429, "rate_limited", 8,
                                                      [("retry-after", "7")])
        assert_denied(client.check({}), 429, "rate_limited")
        with pytest.raises(AssertionError):
            assert_denied(client.check({}), 401, "rate_limited")
        noop.servicer.responder = lambda req: _denial(429, "rate_limited", 8,
                                                      [("retry-after", "0.5")])
        with pytest.raises(AssertionError, match="retry-after"):
            assert_denied(client.check({}), 429, "rate_limited")
        noop.servicer.responder = lambda req: _denial(401, "invalid_key", 16)
        assert_denied(client.check({}), 401, "invalid_key")
        with pytest.raises(AssertionError, match="error.code"):
            assert_denied(client.check({}), 401, "key_revoked")
    finally:
        client.close()


# ---------------------------------------------------------------- through Envoy


def test_envoy_to_noop_authz_to_echo(envoy_noop, noop):
    r = http_request(envoy_noop.base_url, "/orders/42",
                     {"authorization": "Bearer abc", "x-api-key": "k1",
                      "x-forwarded-for": "198.51.100.9", "x-other": "secret-ish"})
    assert r.status == 200, r
    up = r.upstream
    assert up["path"] == "/orders/42"
    assert up["headers"]["x-noop-authz"] == "allowed"
    assert up["headers"]["x-other"] == "secret-ish"
    # What Envoy sent to the authz server.
    assert len(noop.requests) == 1
    req = noop.requests[0]
    http = req.attributes.request.http
    assert http.path == "/orders/42" and http.method == "GET"
    assert http.headers["authorization"] == "Bearer abc"
    assert http.headers["x-api-key"] == "k1"
    # use_remote_address: Envoy appends the peer to x-forwarded-for.
    assert http.headers["x-forwarded-for"].startswith("198.51.100.9")
    assert "x-other" not in http.headers, "allowed_headers should keep x-other from the Check"
    assert not http.header_map.headers, "Envoy should send the headers map, not raw headers"
    assert req.attributes.source.address.socket_address.address == "127.0.0.1"
    assert dict(req.attributes.context_extensions) == {"keygate.abilities": "read:orders"}
    assert not req.attributes.source.certificate


@pytest.mark.parametrize("path,ext", [
    ("/orders", {"keygate.abilities": "read:orders"}),
    ("/orders/7/items", {"keygate.abilities": "read:orders"}),
    ("/admin-only", {"keygate.abilities": "admin:write"}),
    ("/live-only/x", {"keygate.environment": "live"}),
    ("/anything/else", {}),
    ("/ordersx", {}),  # path_separated_prefix: not the /orders route
])
def test_per_route_context_extensions_reach_authz(envoy_noop, noop, path, ext):
    r = http_request(envoy_noop.base_url, path)
    assert r.status == 200, r
    assert len(noop.requests) == 1
    assert dict(noop.requests[0].attributes.context_extensions) == ext


def test_public_route_skips_authz(envoy_noop, noop):
    r = http_request(envoy_noop.base_url, "/public/docs", {"x-keygate-owner-id": "evil"})
    assert r.status == 200, r
    assert noop.requests == []
    assert "x-noop-authz" not in r.upstream["headers"]
    assert "x-keygate-owner-id" not in r.upstream["headers"], "forged identity header reached upstream"


def test_envoy_applies_ok_response_mutations(envoy_noop, noop):
    """What keygate relies on: OVERWRITE_IF_EXISTS_OR_ADD replaces a client's
    header, headers_to_remove strips the credential, response_headers_to_add
    reaches the client."""
    def ok(req):
        resp = ext_authz_pb2.CheckResponse()
        resp.status.code = 0
        for k, v in [("x-keygate-owner-id", "owner-1"), ("x-forgeable", "real")]:
            resp.ok_response.headers.add(header=base_pb2.HeaderValue(key=k, value=v),
                                         append_action=OVERWRITE_IF_EXISTS_OR_ADD)
        resp.ok_response.headers_to_remove.append("authorization")
        resp.ok_response.response_headers_to_add.add(
            header=base_pb2.HeaderValue(key="x-ratelimit-limit", value="2"))
        resp.ok_response.response_headers_to_add.add(
            header=base_pb2.HeaderValue(key="sunset", value="Sun, 06 Nov 1994 08:49:37 GMT"))
        resp.dynamic_metadata.update({"key_id": "k", "owner_id": "owner-1"})
        return resp
    noop.servicer.responder = ok
    r = http_request(envoy_noop.base_url, "/orders",
                     {"authorization": "Bearer sk_live_x", "x-forgeable": "evil",
                      "x-keygate-owner-id": "evil"})
    assert r.status == 200, r
    up = r.upstream
    assert "authorization" not in up["headers"]
    assert up["headers"]["x-keygate-owner-id"] == "owner-1"
    assert up["headers"]["x-forgeable"] == "real"
    assert [v for k, v in up["header_list"] if k == "x-forgeable"] == ["real"]
    assert r.headers["x-ratelimit-limit"] == "2"
    assert r.headers["sunset"] == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_envoy_relays_denials(envoy_noop, noop):
    noop.servicer.responder = lambda req: _denial(401, "invalid_key", 16)
    r = http_request(envoy_noop.base_url, "/orders", {"authorization": "Bearer sk_live_x"})
    assert r.status == 401, r
    assert r.headers["content-type"] == "application/json"
    assert r.headers["www-authenticate"] == 'Bearer realm="keygate"'
    assert r.json() == {"error": {"code": "invalid_key", "message": "nope"}}
    noop.servicer.responder = lambda req: _denial(429, "rate_limited", 8, [("retry-after", "9")])
    r = http_request(envoy_noop.base_url, "/orders")
    assert r.status == 429 and r.headers["retry-after"] == "9", r


def test_slow_authz_hits_the_200ms_timeout_and_fails_closed(envoy_noop, noop):
    def slow(req):
        time.sleep(0.6)
        raise AssertionError("unreachable")  # never answers in time
    noop.servicer.responder = slow
    t0 = time.monotonic()
    r = http_request(envoy_noop.base_url, "/orders")
    assert r.status == 503, r
    assert time.monotonic() - t0 < 0.55, "the ext_authz timeout should be 0.2s"


def test_unreachable_authz_fails_closed_with_503(envoy_dead_authz, echo_upstream):
    r = http_request(envoy_dead_authz.base_url, "/orders", {"authorization": "Bearer x"})
    assert r.status == 503, r
    r = http_request(envoy_dead_authz.base_url, "/public")
    assert r.status == 200, r
