"""keygate's forward-auth listener behind real proxies: NGINX (Debian's
nginx-light, auth_request) running the shipped examples/nginx/nginx.conf,
Debian's Caddy (forward_auth) running examples/caddy/Caddyfile, and the real
Envoy in HTTP ext_authz mode (tests/e2e/envoy-http.yaml.tmpl)."""
from __future__ import annotations

import pytest

from pyharness import keyformat
from pyharness.admin import AdminClient
from pyharness.httpc import http_request
from pyharness.envoyproc import EnvoyServer
from pyharness.nginxproc import CaddyServer, NginxServer, caddy_bin, nginx_bin
from pyharness.paths import ENVOY_HTTP_TEMPLATE


@pytest.fixture(scope="module")
def kg_meta(keygate_factory):
    """keygate exporting the `tier` and `plan` metadata as headers."""
    return keygate_factory(extra_env={"KEYGATE_METADATA_HEADERS": "tier,plan",
                                      "KEYGATE_FORWARD_AUTH_PATH_PREFIX": "/ext-authz"},
                           name="keygate-forward-auth")


@pytest.fixture(scope="module")
def kg_admin(kg_meta, admin_stubs):
    client = AdminClient(kg_meta.admin_addr, admin_stubs)
    yield client
    client.close()


@pytest.fixture(scope="module")
def nginx(kg_meta, echo_upstream, tmp_path_factory):
    if not nginx_bin().exists():
        pytest.fail("nginx not installed: run scripts/setup-test-env.sh", pytrace=False)
    srv = NginxServer(tmp_path_factory.mktemp("nginx"), keygate_port=kg_meta.forward_auth_port,
                      upstream_port=echo_upstream.port)
    yield srv
    srv.stop()


@pytest.fixture
def get(nginx):
    def _get(path, headers=None):
        return http_request(nginx.base_url, path, headers)
    return _get


def test_allowed_request_reaches_upstream_with_identity_metadata_and_no_credential(
        get, kg_admin, owner):
    created = kg_admin.create_key(owner, abilities=["read:orders"],
                                  metadata={"tier": "gold", "region": "eu"})
    r = get("/orders/42", {"authorization": f"Bearer {created.key}",
                           "x-keygate-owner-id": "evil", "x-keygate-abilities": "*",
                           "x-keygate-meta-plan": "forged", "x-keygate-shadow-decision": "x"})
    assert r.status == 200, r
    up = r.upstream["headers"]
    assert up["x-keygate-key-id"] == created.api_key.id
    assert up["x-keygate-owner-id"] == owner
    assert up["x-keygate-abilities"] == "read:orders"
    assert up["x-keygate-environment"] == "live"
    assert up["x-keygate-meta-tier"] == "gold"
    assert "x-keygate-meta-plan" not in up and "x-keygate-shadow-decision" not in up, up
    assert "authorization" not in up, "the credential reached the upstream"
    assert "evil" not in str(r.upstream["header_list"]) and "forged" not in r.body.decode()
    r = get("/anything", {"x-api-key": created.key})
    assert r.status == 200 and "x-api-key" not in r.upstream["headers"], r


def test_denials_keep_their_status_and_challenge(get, kg_admin, owner):
    r = get("/orders")
    assert r.status == 401, r
    assert r.headers.get("www-authenticate") == 'Bearer realm="keygate"', r
    assert get("/orders", {"authorization": f"Bearer {keyformat.make_key()}"}).status == 401
    assert get("/orders", {"authorization": "Bearer sk_live_nope"}).status == 401
    reader = kg_admin.create_key(owner, abilities=[])
    r = get("/orders", {"authorization": f"Bearer {reader.key}"})
    assert r.status == 403 and "header_list" not in r.body.decode(), r
    test_key = kg_admin.create_key(owner, environment="test")
    assert get("/live-only", {"authorization": f"Bearer {test_key.key}"}).status == 403
    assert get("/anything", {"authorization": f"Bearer {test_key.key}"}).status == 200


def test_a_rate_limited_client_gets_429_with_retry_after_not_500(get, kg_admin, owner):
    created = kg_admin.create_key(owner, rate_limit=(1, 60))
    h = {"x-api-key": created.key}
    first = get("/anything", h)
    assert first.status == 200, first
    assert first.headers.get("x-ratelimit-limit") == "1", first
    assert first.headers.get("x-ratelimit-remaining") == "0", first
    limited = get("/anything", h)
    assert limited.status == 429, limited
    assert int(limited.headers["retry-after"]) >= 1, limited
    assert limited.json()["error"]["code"] == "rate_limited"


def test_a_bad_original_uri_is_never_an_allowance(get, kg_admin, owner):
    created = kg_admin.create_key(owner)
    r = get("/public/../orders", {"x-api-key": created.key})
    assert r.status in (400, 500), r
    assert "header_list" not in r.body.decode(), r


@pytest.fixture(scope="module")
def envoy_http(envoy_binary, kg_meta, echo_upstream, tmp_path_factory):
    srv = EnvoyServer(tmp_path_factory.mktemp("envoy-http"), keygate_port=kg_meta.forward_auth_port,
                      upstream_port=echo_upstream.port, binary=envoy_binary, name="envoy-http",
                      template=ENVOY_HTTP_TEMPLATE)
    yield srv
    srv.stop()


def test_envoy_http_mode_passes_identity_and_metadata_and_strips_forgeries(
        envoy_http, kg_admin, owner):
    created = kg_admin.create_key(owner, abilities=["read:orders"], metadata={"tier": "gold"},
                                  rate_limit=(5, 60))
    r = http_request(envoy_http.base_url, "/v1/orders?x=1",
                     {"authorization": f"Bearer {created.key}", "x-keygate-owner-id": "evil",
                      "x-keygate-meta-plan": "forged"})
    assert r.status == 200, r
    up = r.upstream["headers"]
    assert up["x-keygate-owner-id"] == owner and up["x-keygate-key-id"] == created.api_key.id
    assert up["x-keygate-meta-tier"] == "gold"
    assert "x-keygate-meta-plan" not in up and "authorization" not in up, up
    assert "evil" not in str(r.upstream["header_list"])
    assert r.headers.get("x-ratelimit-limit") == "5", r


def test_envoy_http_mode_returns_keygate_denials(envoy_http, kg_admin, owner):
    r = http_request(envoy_http.base_url, "/v1/orders", {})
    assert r.status == 401, r
    assert r.json()["error"]["code"] == "missing_credentials"
    assert r.headers.get("www-authenticate") == 'Bearer realm="keygate"', r
    created = kg_admin.create_key(owner, rate_limit=(1, 60))
    h = {"x-api-key": created.key}
    assert http_request(envoy_http.base_url, "/v1/x", h).status == 200
    limited = http_request(envoy_http.base_url, "/v1/x", h)
    assert limited.status == 429, limited
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1


@pytest.fixture(scope="module")
def caddy(kg_meta, echo_upstream, tmp_path_factory):
    if not caddy_bin().exists():
        pytest.fail("caddy not installed: run scripts/setup-test-env.sh", pytrace=False)
    srv = CaddyServer(tmp_path_factory.mktemp("caddy"), keygate_port=kg_meta.forward_auth_port,
                      upstream_port=echo_upstream.port)
    yield srv
    srv.stop()


def test_caddy_passes_identity_and_metadata_and_drops_forgeries(caddy, kg_admin, owner):
    created = kg_admin.create_key(owner, abilities=["read:orders"], metadata={"tier": "gold"})
    r = http_request(caddy.base_url, "/v1/orders/7",
                     {"authorization": f"Bearer {created.key}", "x-keygate-owner-id": "evil",
                      "x-keygate-meta-plan": "forged"})
    assert r.status == 200, r
    up = r.upstream["headers"]
    assert up["x-keygate-owner-id"] == owner and up["x-keygate-meta-tier"] == "gold", up
    # Caddy 2.6 (Debian's) passes a header keygate did not set as its
    # unreplaced placeholder; 2.7 and later omit it. Never the client's value.
    assert up.get("x-keygate-meta-plan") in (
        None, "{http.reverse_proxy.header.X-Keygate-Meta-Plan}"), up
    assert "authorization" not in up, up
    assert "evil" not in str(r.upstream["header_list"]) and "forged" not in r.body.decode()


def test_caddy_returns_keygate_denials_whole(caddy, kg_admin, owner):
    r = http_request(caddy.base_url, "/v1/orders", {})
    assert r.status == 401 and r.json()["error"]["code"] == "missing_credentials", r
    assert r.headers.get("www-authenticate") == 'Bearer realm="keygate"', r
    created = kg_admin.create_key(owner, rate_limit=(1, 60))
    h = {"x-api-key": created.key}
    assert http_request(caddy.base_url, "/v1/x", h).status == 200
    limited = http_request(caddy.base_url, "/v1/x", h)
    assert limited.status == 429 and limited.json()["error"]["code"] == "rate_limited", limited
    assert int(limited.headers["retry-after"]) >= 1
