"""docs/behaviour.md §2: every row of the decision table, and the Check contract around it,
asserted through Envoy's own generated ext_authz v3 stubs."""
from __future__ import annotations

import datetime as dt
import email.utils
import time

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ext_authz_pb2

from pyharness import keyformat
from pyharness.authz import (IMF_FIXDATE, assert_allowed, assert_denied, build_check_request)
from pyharness.procs import eventually

READ_ORDERS = {"keygate.abilities": "read:orders"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- sanity


def test_issued_keys_follow_the_key_format(create_key, owner):
    created = create_key(owner, abilities=["read:orders"])
    key, ak = created.key, created.api_key
    assert key.startswith("sk_live_"), key
    assert keyformat.is_well_formed(key), f"issued key fails our checksum algorithm: {key}"
    assert ak.key_prefix == keyformat.key_prefix_of(key)
    assert keyformat.KEY_PREFIX_RE.match(ak.key_prefix), ak.key_prefix
    assert ak.masked_key == ak.key_prefix + "••••••••"
    assert ak.owner_id == owner and ak.environment == "live" and ak.id


def test_valid_key_allowed_with_full_contract(create_key, check, owner):
    created = create_key(owner, abilities=["read:orders", "write:orders"])
    res = check(bearer(created.key), context_extensions=READ_ORDERS)
    assert_allowed(res, created.api_key, credential_header="authorization",
                   abilities="read:orders,write:orders", secret=created.key)
    assert res.upstream_headers["x-keygate-key-prefix"].startswith("sk_live_")
    # Every credential header goes, so a second key sent alongside never
    # reaches the upstream.
    assert "x-api-key" in res.headers_to_remove
    # No limit configured: no rate-limit headers; not rotating: no deprecation.
    assert not {"x-ratelimit-limit", "deprecation", "sunset"} & set(res.response_headers)


# ---------------------------------------------------------------- decision table


def test_no_credential_is_401_missing_credentials(check):
    assert_denied(check({}), 401, "missing_credentials")
    assert_denied(check({"user-agent": "curl/8"}, context_extensions=READ_ORDERS), 401,
                  "missing_credentials")


@pytest.mark.parametrize("value", [
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Bearer opaque-oauth-token-123",
    "Basic dXNlcjpwYXNz",
])
def test_bearer_without_our_prefix_is_401_missing_credentials(check, value):
    assert_denied(check({"authorization": value}), 401, "missing_credentials")


def test_foreign_bearer_allowed_without_identity_when_configured(keygate_factory):
    from pyharness.authz import AuthzClient
    srv = keygate_factory({"KEYGATE_FOREIGN_BEARER": "allow"}, name="keygate-foreign-allow")
    client = AuthzClient(srv.authz_addr)
    try:
        jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
        res = client.check({"authorization": f"Bearer {jwt}"})
        assert_allowed(res)
        leaked = {k for k in res.upstream_headers if k.startswith("x-keygate-")} - {
            "x-keygate-shadow-decision"}
        assert not leaked, f"foreign bearer got identity headers {leaked}: {res.dump()}"
        assert "authorization" not in res.headers_to_remove, (
            "a foreign bearer token is for the upstream; keygate must not strip it")
        # Still denied: no credential at all, and our own prefix with a bad shape.
        assert_denied(client.check({}), 401, "missing_credentials")
        assert_denied(client.check(bearer("sk_live_short")), 401, "malformed_key")
    finally:
        client.close()


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda k: k[:-1], id="truncated"),
    pytest.param(lambda k: k + "x", id="too-long"),
    pytest.param(keyformat.tamper, id="one-char-changed"),
    pytest.param(lambda k: keyformat.tamper(k, index=-1), id="checksum-char-changed"),
    pytest.param(lambda k: k[:12] + "0" + k[13:], id="non-base58-char-0"),
    pytest.param(lambda k: k[:12] + "l" + k[13:], id="non-base58-char-l"),
    pytest.param(lambda k: "sk_live_", id="empty-token"),
    pytest.param(lambda k: "sk_live_short", id="short"),
])
def test_our_prefix_with_bad_shape_or_checksum_is_401_malformed_key(check, create_key, owner,
                                                                     mutate):
    good = create_key(owner).key
    bad = mutate(good)
    assert bad != good
    assert_denied(check(bearer(bad)), 401, "malformed_key", secret=good)
    assert_denied(check({"x-api-key": bad}), 401, "malformed_key", secret=good)


def test_well_formed_but_never_issued_is_401_invalid_key(check):
    key = keyformat.make_key("live")
    assert keyformat.is_well_formed(key)
    assert_denied(check(bearer(key)), 401, "invalid_key", secret=key)
    # Again (negative cache path) and via x-api-key.
    assert_denied(check(bearer(key)), 401, "invalid_key", secret=key)
    assert_denied(check({"x-api-key": key}), 401, "invalid_key", secret=key)
    test_key = keyformat.make_key("test")
    assert_denied(check(bearer(test_key)), 401, "invalid_key", secret=test_key)


def test_issued_token_under_another_environment_prefix_is_rejected(check, create_key, owner):
    key = create_key(owner, environment="live").key
    _, _, token = keyformat.split_key(key)
    assert_denied(check(bearer(f"sk_test_{token}")), 401, {"invalid_key", "malformed_key"},
                  secret=key)


def test_revoked_key_is_401_key_revoked(admin, create_key, check, owner):
    created = create_key(owner, abilities=["read:orders"])
    assert_allowed(check(bearer(created.key)), created.api_key)  # now cached
    revoked = admin.revoke_key(owner, created.api_key.id, reason="leaked")
    assert revoked.revocation_reason == "leaked"
    eventually(lambda: assert_denied(check(bearer(created.key)), 401, "key_revoked",
                                     secret=created.key))
    assert_denied(check({"x-api-key": created.key}), 401, "key_revoked")


def test_expired_key_is_401_key_expired(create_key, check, owner):
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    created = create_key(owner, expires_at=expires)
    assert_allowed(check(bearer(created.key)), created.api_key)  # cached while valid
    # +1 s: allow for an expiry stored with whole-second precision.
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.0)
    # Evaluated at check time, not at cache-fill time.
    assert_denied(check(bearer(created.key)), 401, "key_expired", secret=created.key)


def test_suspended_owner_is_403_owner_suspended_until_resumed(admin, create_key, check, owner):
    created = create_key(owner, abilities=["read:orders"])
    assert_allowed(check(bearer(created.key)), created.api_key)
    suspended = admin.suspend_owner(owner, reason="fraud review")
    assert suspended.owner_id == owner and suspended.HasField("suspended_at")
    eventually(lambda: assert_denied(check(bearer(created.key)), 403, "owner_suspended"))
    # A key created for another owner is unaffected.
    other = create_key(owner + "-other")
    assert_allowed(check(bearer(other.key)), other.api_key)
    admin.resume_owner(owner)
    eventually(lambda: assert_allowed(check(bearer(created.key)), created.api_key))


def test_wrong_environment_is_403_environment_not_allowed(create_key, check, owner):
    test_key = create_key(owner, environment="test")
    assert test_key.key.startswith("sk_test_")
    assert test_key.api_key.environment == "test"
    assert_denied(check(bearer(test_key.key), context_extensions={"keygate.environment": "live"}),
                  403, "environment_not_allowed")
    ok = check(bearer(test_key.key), context_extensions={"keygate.environment": "test"})
    assert_allowed(ok, test_key.api_key)
    assert ok.upstream_headers["x-keygate-environment"] == "test"
    assert ok.upstream_headers["x-keygate-key-prefix"].startswith("sk_test_")
    live_key = create_key(owner, environment="live")
    assert_allowed(check(bearer(live_key.key), context_extensions={"keygate.environment": "live"}),
                   live_key.api_key)


def test_missing_ability_is_403_insufficient_ability(create_key, check, owner):
    created = create_key(owner, abilities=["read:orders"])
    assert_allowed(check(bearer(created.key), context_extensions=READ_ORDERS), created.api_key)
    assert_denied(check(bearer(created.key),
                        context_extensions={"keygate.abilities": "write:orders"}),
                  403, "insufficient_ability")
    # All listed abilities are required.
    assert_denied(check(bearer(created.key),
                        context_extensions={"keygate.abilities": "read:orders,write:orders"}),
                  403, "insufficient_ability")
    both = create_key(owner, abilities=["read:orders", "write:orders"])
    assert_allowed(check(bearer(both.key),
                         context_extensions={"keygate.abilities": "read:orders,write:orders"}),
                   both.api_key)


def test_over_rate_limit_is_429_rate_limited_with_retry_after(create_key, check, owner):
    created = create_key(owner, rate_limit=(2, 60))
    assert created.api_key.rate_limit.max_attempts == 2
    assert created.api_key.rate_limit.decay_seconds == 60
    remaining = []
    for _ in range(2):
        res = check(bearer(created.key))
        assert_allowed(res, created.api_key)
        rh = res.response_headers
        for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
            assert h in rh and rh[h].isdigit(), f"{h}={rh.get(h)!r}: {res.dump()}"
        assert rh["x-ratelimit-limit"] == "2"
        remaining.append(int(rh["x-ratelimit-remaining"]))
    assert remaining == [1, 0], remaining
    res = check(bearer(created.key))
    assert_denied(res, 429, "rate_limited", secret=created.key)
    assert 1 <= int(res.denied_headers["retry-after"]) <= 60
    # The limit is per key: another key of the same owner is unaffected.
    other = create_key(owner, rate_limit=(2, 60))
    assert_allowed(check(bearer(other.key)), other.api_key)


# ---------------------------------------------------------------- extraction


def test_x_api_key_extraction(create_key, check, owner):
    created = create_key(owner, abilities=["read:orders"])
    res = check({"x-api-key": created.key}, context_extensions=READ_ORDERS)
    assert_allowed(res, created.api_key, credential_header="x-api-key", secret=created.key)
    assert "authorization" in res.headers_to_remove


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr", "Bearer"])
def test_bearer_scheme_is_case_insensitive(create_key, check, owner, scheme):
    created = create_key(owner)
    res = check({"authorization": f"{scheme} {created.key}"})
    assert_allowed(res, created.api_key, credential_header="authorization")


def test_authorization_wins_over_x_api_key(create_key, check, owner):
    a = create_key(owner, name="a")
    b = create_key(owner, name="b")
    res = check({"authorization": f"Bearer {a.key}", "x-api-key": b.key})
    assert_allowed(res, a.api_key, credential_header="authorization")


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_raw_header_map_extraction(create_key, check, owner, header):
    created = create_key(owner, abilities=["read:orders"])
    value = f"Bearer {created.key}" if header == "authorization" else created.key
    req = build_check_request({header: value}, context_extensions=READ_ORDERS, header_map=True)
    assert not req.attributes.request.http.headers
    res = check({header: value}, context_extensions=READ_ORDERS, header_map=True)
    assert_allowed(res, created.api_key, credential_header=header)
    assert_denied(check({}, header_map=True), 401, "missing_credentials")
    assert_denied(check({header: value.replace(created.key, keyformat.make_key())},
                        header_map=True), 401, "invalid_key")


# ---------------------------------------------------------------- abilities


def test_ability_prefix_wildcard(create_key, check, owner):
    created = create_key(owner, abilities=["orders:*"])
    assert_allowed(check(bearer(created.key),
                         context_extensions={"keygate.abilities": "orders:read,orders:write"}),
                   created.api_key, abilities="orders:*")
    assert_denied(check(bearer(created.key), context_extensions={"keygate.abilities": "billing:read"}),
                  403, "insufficient_ability")
    # `orders:*` covers abilities starting with "orders:", not "ordersx:".
    assert_denied(check(bearer(created.key), context_extensions={"keygate.abilities": "ordersx:read"}),
                  403, "insufficient_ability")


def test_ability_star_grants_everything(create_key, check, owner):
    created = create_key(owner, abilities=["*"])
    assert_allowed(check(bearer(created.key),
                         context_extensions={"keygate.abilities": "admin:write,billing:read"}),
                   created.api_key, abilities="*")


def test_superkey_grants_everything(create_key, check, owner):
    created = create_key(owner, superkey=True)
    assert created.api_key.superkey
    res = check(bearer(created.key), context_extensions={"keygate.abilities": "admin:write,x:y"})
    assert_allowed(res, created.api_key, abilities="*")
    assert res.upstream_headers["x-keygate-abilities"] == "*"
    assert res.metadata["abilities"] == "*"


def test_key_without_abilities(create_key, check, owner):
    created = create_key(owner, abilities=[])
    assert not created.api_key.superkey and not list(created.api_key.abilities)
    assert_allowed(check(bearer(created.key)), created.api_key, abilities="")
    assert_allowed(check(bearer(created.key), context_extensions={"keygate.abilities": ""}),
                   created.api_key, abilities="")
    assert_denied(check(bearer(created.key), context_extensions=READ_ORDERS), 403,
                  "insufficient_ability")


# ---------------------------------------------------------------- rotation


def test_rotation_with_overlap_keeps_old_key_with_deprecation(admin, create_key, check, owner):
    old = create_key(owner, abilities=["read:orders"], metadata={"team": "a"})
    assert_allowed(check(bearer(old.key)), old.api_key)
    before = dt.datetime.now(dt.timezone.utc)
    rot = admin.rotate_key(owner, old.api_key.id, overlap_minutes=10)
    assert rot.key and rot.key != old.key and keyformat.is_well_formed(rot.key)
    assert rot.previous.id == old.api_key.id
    assert rot.api_key.id != old.api_key.id
    assert list(rot.api_key.abilities) == ["read:orders"]

    def old_key_deprecated():
        res = check(bearer(old.key), context_extensions=READ_ORDERS)
        assert_allowed(res, old.api_key)
        rh = res.response_headers
        assert rh.get("deprecation") == "true", res.dump()
        assert IMF_FIXDATE.match(rh.get("sunset", "")), f"sunset {rh.get('sunset')!r}"
        return email.utils.parsedate_to_datetime(rh["sunset"])

    sunset = eventually(old_key_deprecated)
    assert before + dt.timedelta(minutes=9) <= sunset <= before + dt.timedelta(minutes=11), sunset

    new = check(bearer(rot.key), context_extensions=READ_ORDERS)
    assert_allowed(new, rot.api_key)
    assert "deprecation" not in new.response_headers and "sunset" not in new.response_headers


def test_rotation_without_overlap_revokes_old_key_now(admin, create_key, check, owner):
    old = create_key(owner)
    assert_allowed(check(bearer(old.key)), old.api_key)
    rot = admin.rotate_key(owner, old.api_key.id, overlap_minutes=0)
    eventually(lambda: assert_denied(check(bearer(old.key)), 401, "key_revoked"))
    assert_allowed(check(bearer(rot.key)), rot.api_key)


# ---------------------------------------------------------------- shadow mode

SHADOW = {"keygate.mode": "shadow"}


@pytest.mark.parametrize("headers,ext,want", [
    pytest.param({"authorization": f"Bearer {keyformat.make_key()}"}, {}, "invalid_key",
                 id="invalid-key"),
    pytest.param({}, {}, "missing_credentials", id="no-key"),
    pytest.param({"authorization": "Bearer sk_live_garbage"}, {}, "malformed_key",
                 id="malformed"),
])
def test_shadow_mode_allows_and_reports_decision(check, headers, ext, want):
    res = check(headers, context_extensions={**SHADOW, **ext})
    assert_allowed(res)
    assert res.upstream_headers.get("x-keygate-shadow-decision") == want, res.dump()


def test_shadow_mode_reports_allowed_and_denials_for_real_keys(create_key, check, owner):
    created = create_key(owner, abilities=["read:orders"])
    ok = check(bearer(created.key), context_extensions={**SHADOW, **READ_ORDERS})
    assert_allowed(ok)
    assert ok.upstream_headers.get("x-keygate-shadow-decision") == "allowed", ok.dump()
    no = check(bearer(created.key),
               context_extensions={**SHADOW, "keygate.abilities": "admin:write"})
    assert_allowed(no)
    assert no.upstream_headers.get("x-keygate-shadow-decision") == "insufficient_ability"


# ---------------------------------------------------------------- hostile input


def test_ten_thousand_headers(check):
    headers = {f"x-junk-{i}": f"value-{i}" for i in range(10_000)}
    assert_denied(check(headers), 401, "missing_credentials")


def test_ten_thousand_headers_with_a_valid_key(create_key, check, owner):
    created = create_key(owner)
    headers = {f"x-junk-{i}": f"value-{i}" for i in range(10_000)}
    headers["authorization"] = f"Bearer {created.key}"
    assert_allowed(check(headers), created.api_key)


def test_64kib_header_values(check):
    huge = "A" * (64 * 1024)
    assert_denied(check(bearer("sk_live_" + huge)), 401, "malformed_key")
    assert_denied(check({"authorization": "Bearer " + huge}), 401, "missing_credentials")
    assert_denied(check({"x-api-key": "sk_live_" + huge}), 401, "malformed_key")
    assert_denied(check({"x-api-key": huge}), 401, {"missing_credentials", "malformed_key"})
    assert_denied(check({"x-junk": huge}), 401, "missing_credentials")


def test_non_ascii_header_values(check):
    assert_denied(check(bearer("sk_live_ÄÖÜäöüß€ключ🔑" * 3)), 401, "malformed_key")
    good_shape = keyformat.make_key()
    assert_denied(check(bearer(good_shape[:-1] + "é")), 401, "malformed_key")
    assert_denied(check({"x-api-key": "ключ-🔑"}), 401, {"missing_credentials", "malformed_key"})
    assert_denied(check({"authorization": "Bearer ключ"}), 401, "missing_credentials")
    assert_denied(check(bearer("sk_live_ÄÖÜ"), header_map=True), 401, "malformed_key")


def test_invalid_utf8_raw_header_value(authz):
    req = build_check_request({}, header_map=True)
    req.attributes.request.http.header_map.headers.add(
        key="authorization", raw_value=b"Bearer sk_live_\xff\xfe\x80")
    assert_denied(authz.check_request(req), 401, "malformed_key")


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "Bearer    ", "sk_live_"])
def test_degenerate_authorization_values(check, value):
    res = check({"authorization": value})
    assert_denied(res, 401, {"missing_credentials", "malformed_key"})


def test_empty_attributes(authz):
    assert_denied(authz.check_request(ext_authz_pb2.CheckRequest()), 401, "missing_credentials")


def test_missing_http_block(authz):
    req = ext_authz_pb2.CheckRequest()
    req.attributes.source.address.socket_address.address = "203.0.113.7"
    req.attributes.context_extensions["keygate.abilities"] = "read:orders"
    req.attributes.request.time.GetCurrentTime()
    assert not req.attributes.request.HasField("http")
    assert_denied(authz.check_request(req), 401, "missing_credentials")


def test_metrics_endpoint_serves_prometheus_text(keygate):
    import urllib.request
    with urllib.request.urlopen(f"http://{keygate.metrics_addr}/metrics", timeout=5) as r:
        assert r.status == 200
        assert "keygate_check_decisions_total" in r.read().decode("utf-8")
