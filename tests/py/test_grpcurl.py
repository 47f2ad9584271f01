"""keygate driven by a second, non-Python client: grpcurl (Go gRPC).

KeyAdmin through server reflection (docs/behaviour.md §4: reflection on both listeners);
Check through a protoset built from Envoy's generated descriptors, so it does
not depend on which descriptors keygate registers for reflection."""
from __future__ import annotations

import json

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from pyharness import grpcurl


@pytest.fixture(scope="module")
def authz_protoset(tmp_path_factory):
    return grpcurl.write_protoset(tmp_path_factory.mktemp("protoset") / "authz.protoset",
                                  external_auth_pb2.DESCRIPTOR)


def _ok(r):
    assert r.returncode == 0, f"grpcurl failed ({r.returncode}): {r.stderr}{r.stdout}"
    return r.stdout


def test_reflection_on_both_listeners(keygate):
    services = _ok(grpcurl.run("-plaintext", keygate.admin_addr, "list")).split()
    assert "keygate.admin.v1.KeyAdmin" in services, services
    desc = _ok(grpcurl.run("-plaintext", keygate.admin_addr, "describe",
                           "keygate.admin.v1.KeyAdmin"))
    assert "rpc CreateKey" in desc and "rpc RotateKey" in desc, desc
    _ok(grpcurl.run("-plaintext", keygate.authz_addr, "list"))


def test_grpcurl_create_key_then_check(keygate, authz_protoset, owner):
    created = json.loads(_ok(grpcurl.run(
        "-plaintext", keygate.admin_addr, "keygate.admin.v1.KeyAdmin/CreateKey",
        data={"owner_id": owner, "name": "from grpcurl", "abilities": ["read:orders"]})))
    key = created["key"]
    assert key.startswith("sk_live_")
    ak = created.get("api_key") or created.get("apiKey")
    assert ak["owner_id" if "owner_id" in ak else "ownerId"] == owner

    def check(headers, ext=None):
        req = {"attributes": {"request": {"http": {"method": "GET", "path": "/v1/orders",
                                                   "headers": headers}},
                              "context_extensions": ext or {}}}
        return json.loads(_ok(grpcurl.run(
            "-plaintext", "-protoset", str(authz_protoset), keygate.authz_addr,
            "envoy.service.auth.v3.Authorization/Check", data=req)))

    ok = check({"authorization": f"Bearer {key}"}, {"keygate.abilities": "read:orders"})
    assert not ok.get("status", {}).get("code"), ok
    up = {h["header"]["key"]: h["header"].get("value") for h in ok["ok_response"]["headers"]}
    assert up["x-keygate-owner-id"] == owner, ok

    denied = check({})
    assert denied["status"]["code"] == 16, denied
    assert denied["denied_response"]["status"]["code"] == "Unauthorized", denied
    assert json.loads(denied["denied_response"]["body"])["error"]["code"] == \
        "missing_credentials"
