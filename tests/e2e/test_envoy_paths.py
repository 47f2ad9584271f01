"""Hostile spellings of a path through the real Envoy and the example config:
each one is held to the route of the path the upstream resolves, and an
ambiguous one is refused, whether Envoy's routes or keygate's own route rules
name the requirements (needs KEYGATE_BIN)."""
from __future__ import annotations

import pytest

from pyharness.admin import AdminClient
from pyharness.httpc import http_request

# Decoded by Envoy to /admin-only/x: the route that needs admin:write.
ADMIN_ONLY_SPELLINGS = ("//admin-only/x", "/admin-only//x", "/orders/../admin-only/x",
                        "/%61dmin-only/x", "/admin-only/./x", "/ADMIN-ONLY/x",
                        "/admin-only\\x", "/public/../admin-only/x")
# The spellings of /v1/orders, which a keygate route rule protects.
ORDERS_SPELLINGS = ("//v1/orders", "/v1//orders", "/v1/./orders", "/x/../v1/orders",
                    "/V1/orders", "/v1/%6frders", "/v1\\orders")
# Refused by Envoy itself (escaped separators, a relative target).
REFUSED_BY_ENVOY = ("/v1%2forders", "/v1%5Corders", "/admin-only%2Fx", "v1/orders")


def bearer(key):
    return {"authorization": f"Bearer {key}"}


def assert_json_denial(r, status, code):
    assert r.status == status, r
    assert r.json()["error"]["code"] == code, r


def assert_refused_before_upstream(r):
    assert r.status == 400, r
    assert b"header_list" not in r.body, f"reached the upstream: {r}"


def test_every_spelling_of_a_protected_path_needs_its_ability(get, create_key, owner):
    reader = create_key(owner, abilities=["read:orders"])
    admin = create_key(owner, abilities=["admin:write"])
    for path in ADMIN_ONLY_SPELLINGS:
        for method in ("GET", "POST"):
            assert_json_denial(get(path, bearer(reader.key), method), 403, "insufficient_ability")
        allowed = get(path, bearer(admin.key))
        assert allowed.status == 200, (path, allowed)
        assert allowed.upstream["path"].lower() == "/admin-only/x", (path, allowed)


def test_a_dot_segment_cannot_climb_out_of_a_public_route(get):
    for path in ("/public/../admin-only/x", "/public/%2e%2e/admin-only/x",
                 "/public\\..\\admin-only\\x", "/public/./../admin-only/x"):
        assert_json_denial(get(path), 401, "missing_credentials")


def test_escaped_separators_and_relative_paths_are_refused(get, create_key, owner):
    admin = create_key(owner, abilities=["admin:write", "read:orders"])
    for path in REFUSED_BY_ENVOY + ("/public%2F..%2Fadmin-only",):
        assert_refused_before_upstream(get(path, bearer(admin.key)))


@pytest.fixture(scope="module")
def rules_gateway(keygate_factory, envoy_factory, admin_stubs, tmp_path_factory):
    """keygate with a route rule (no Envoy context extensions reach it on the
    example's default route), behind its own Envoy."""
    config = tmp_path_factory.mktemp("rules") / "keygate.toml"
    config.write_text('[[routes]]\npath = "/v1/orders*"\nabilities = ["write:orders"]\n')
    server = keygate_factory(extra_env={"KEYGATE_CONFIG": str(config)}, name="keygate-rules")
    envoy = envoy_factory(server, "envoy-rules")
    admin = AdminClient(server.admin_addr, admin_stubs)
    yield envoy, admin
    admin.close()


def test_route_rules_hold_for_every_spelling_of_the_path(rules_gateway, owner):
    envoy, admin = rules_gateway
    reader = admin.create_key(owner, abilities=["read:orders"])
    writer = admin.create_key(owner, abilities=["write:orders"])

    def via(path, key, method="GET"):
        return http_request(envoy.base_url, path, bearer(key), method=method)

    for path in ORDERS_SPELLINGS:
        for method in ("GET", "POST"):
            assert_json_denial(via(path, reader.key, method), 403, "insufficient_ability")
        allowed = via(path, writer.key, "POST")
        assert allowed.status == 200, (path, allowed)
        assert allowed.upstream["path"].lower() == "/v1/orders", (path, allowed)
    for path in REFUSED_BY_ENVOY:
        assert_refused_before_upstream(via(path, writer.key))
    # Envoy forwards an invalid escape as it is; keygate's rules cannot
    # judge it, so keygate refuses it.
    assert_json_denial(via("/v1/orders/%zz", writer.key), 400, "invalid_path")
    assert via("/v2/things", reader.key).status == 200
