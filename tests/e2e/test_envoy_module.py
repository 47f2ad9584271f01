"""keygate inside Envoy: the real Envoy 1.40 loads libkeygate_envoy.so (the
keygate-envoy crate, built by `cargo test`) as a dynamic-module HTTP filter
that decides like Check from a key table snapshot (hashes, never keys).

Nothing here skips: if Envoy cannot load the module or its config, it
refuses to start, the Envoy fixture fails and every test fails with Envoy's
log."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from pyharness import envoyproc, keyformat
from pyharness.envoyproc import EnvoyServer
from pyharness.httpc import http_request
from pyharness.paths import ENVOY_MODULE_TEMPLATE, envoy_module_dir
from pyharness.procs import free_ports

MODULE_FILE = "libkeygate_envoy.so"
IDENTITY = ["x-keygate-key-id", "x-keygate-owner-id", "x-keygate-environment",
            "x-keygate-key-prefix", "x-keygate-abilities"]


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class Keys:
    """Keys in keygate's format and the snapshot entry of each (what a
    keygate server would export: the SHA-256 of the token, never the key)."""

    def __init__(self):
        self.plain: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.entries: list[dict] = []

    def add(self, name: str, environment: str = "live", **fields) -> str:
        key = keyformat.make_key(environment)
        _, _, token = keyformat.split_key(key)
        key_id = str(uuid.uuid4())
        self.entries.append({
            "hash": hashlib.sha256(token.encode()).hexdigest(), "id": key_id,
            "owner_id": f"owner-{name}", "environment": environment,
            "key_prefix": keyformat.key_prefix_of(key), **fields})
        self.plain[name], self.ids[name] = key, key_id
        return key

    def snapshot(self, complete: bool = True) -> str:
        return json.dumps({"complete": complete, "keys": self.entries})


@pytest.fixture(scope="module")
def module_dir():
    d = envoy_module_dir()
    if not (d / MODULE_FILE).is_file():
        pytest.fail(f"{d / MODULE_FILE} is missing: build the keygate-envoy crate "
                    f"(cargo test -p keygate-envoy) or set KEYGATE_ENVOY_MODULE_DIR",
                    pytrace=False)
    return d


@pytest.fixture(scope="module")
def keys():
    now = datetime.now(timezone.utc)
    k = Keys()
    k.add("reader", abilities=["read:orders"], metadata={"tier": "gold", "plan": "pro"})
    k.add("admin", superkey=True)
    k.add("revoked", revoked_at=_iso(now - timedelta(minutes=1)))
    k.add("rotating", revoked_at="2040-01-02T03:04:05Z")
    k.add("expired", expires_at=_iso(now - timedelta(minutes=1)))
    k.add("suspended", owner_suspended=True)
    k.add("limited", rate_limit={"max_attempts": 2, "decay_seconds": 3600})
    k.add("test-env", environment="test")
    k.add("credits", has_credits=True)
    # The test client reaches Envoy from 127.0.0.1.
    k.add("loopback-only", allowed_cidrs=["127.0.0.0/8"])
    k.add("elsewhere-only", allowed_cidrs=["10.0.0.0/8", "2001:db8::/32"])
    return k


def filter_config(**table) -> str:
    """The filter's JSON config as the tests use it, with `table`: a
    snapshot_path, a feed, or both."""
    return json.dumps({**table, "metadata_headers": ["tier"], "dynamic_metadata": True})


def start_envoy(binary, workdir, upstream_port, module_dir, config: str, name="envoy-module",
                keygate_port: int | None = None):
    """keygate_port: keygate's forward-auth port, for a `lookup`; by
    default a port nobody listens on."""
    if keygate_port is None:
        (keygate_port,) = free_ports(1)
    try:
        return EnvoyServer(workdir, keygate_port=keygate_port, upstream_port=upstream_port,
                           binary=binary, name=name, template=ENVOY_MODULE_TEMPLATE,
                           extra_env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module_dir)},
                           extra_values={"FILTER_CONFIG": config})
    except (RuntimeError, TimeoutError) as e:
        pytest.fail(f"Envoy did not start with the keygate module: {e}", pytrace=False)


@pytest.fixture(scope="module")
def envoy_module(envoy_binary, echo_upstream, module_dir, keys, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("envoy-module")
    snapshot = workdir / "keys.json"
    snapshot.write_text(keys.snapshot())
    env = start_envoy(envoy_binary, workdir, echo_upstream.port, module_dir,
                      filter_config(snapshot_path=str(snapshot)))
    yield env
    env.stop()


def get(env, path, headers=None):
    return http_request(env.base_url, path, headers)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_denied(r, status: int, code: str):
    assert r.status == status, r
    assert r.headers["content-type"] == "application/json", r
    assert r.json()["error"]["code"] == code, r
    assert r.json()["error"]["message"], r
    if status == 401:
        assert r.headers["www-authenticate"] == 'Bearer realm="keygate"', r
    assert "x-keygate-key-id" not in r.headers, r


def test_every_decision_code_is_answered_in_envoy(envoy_module, keys):
    k = keys.plain
    unknown = keyformat.make_key("live")
    swapped = k["reader"].replace("_live_", "_test_", 1)
    cases = [
        ("/orders", {}, 401, "missing_credentials"),
        ("/orders", {"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}, 401,
         "missing_credentials"),
        ("/orders", bearer(keyformat.tamper(k["reader"])), 401, "malformed_key"),
        ("/orders", {"x-api-key": "sk_live_tooshort"}, 401, "malformed_key"),
        ("/orders", bearer(unknown), 401, "invalid_key"),
        ("/orders", bearer(swapped), 401, "invalid_key"),
        ("/x", bearer(k["revoked"]), 401, "key_revoked"),
        ("/x", bearer(k["expired"]), 401, "key_expired"),
        ("/x", bearer(k["suspended"]), 403, "owner_suspended"),
        ("/live-only", bearer(k["test-env"]), 403, "environment_not_allowed"),
        ("/admin-only", bearer(k["reader"]), 403, "insufficient_ability"),
    ]
    for path, headers, status, code in cases:
        assert_denied(get(envoy_module, path, headers), status, code)


def test_an_allowed_request_reaches_upstream_with_checks_identity_headers(envoy_module, keys):
    r = get(envoy_module, "/orders/7", {**bearer(keys.plain["reader"]), "x-api-key": "other",
                                        "x-keygate-owner-id": "forged"})
    assert r.status == 200, r
    seen = r.upstream["headers"]
    assert seen["x-keygate-key-id"] == keys.ids["reader"]
    assert seen["x-keygate-owner-id"] == "owner-reader"
    assert seen["x-keygate-environment"] == "live"
    assert seen["x-keygate-key-prefix"] == keyformat.key_prefix_of(keys.plain["reader"])
    assert seen["x-keygate-abilities"] == "read:orders"
    assert seen["x-keygate-meta-tier"] == "gold"
    assert "x-keygate-meta-plan" not in seen
    assert "authorization" not in seen and "x-api-key" not in seen
    assert "x-keygate-shadow-decision" not in seen


FORGED = [(name, value) for header in [*IDENTITY, "x-keygate-meta-tier",
                                       "x-keygate-shadow-decision"]
          for name, value in [(header, "forged"), (header.upper(), "forged-again")]]


def upstream_list(r) -> dict[str, list[str]]:
    """Each header the upstream received, with every value it came with."""
    seen: dict[str, list[str]] = {}
    for name, value in r.upstream["header_list"]:
        seen.setdefault(name, []).append(value)
    return seen


def test_forged_identity_headers_sent_twice_never_reach_upstream(envoy_module, keys):
    # No filter before the module drops them on these routes
    # (envoy-module.yaml.tmpl): what upstream sees is the module's doing.
    allowed = get(envoy_module, "/orders/7", [*bearer(keys.plain["reader"]).items(), *FORGED])
    assert allowed.status == 200, allowed
    seen = upstream_list(allowed)
    assert seen["x-keygate-key-id"] == [keys.ids["reader"]], seen
    assert seen["x-keygate-owner-id"] == ["owner-reader"], seen
    assert seen["x-keygate-environment"] == ["live"], seen
    assert seen["x-keygate-key-prefix"] == [keyformat.key_prefix_of(keys.plain["reader"])], seen
    assert seen["x-keygate-abilities"] == ["read:orders"], seen
    assert seen["x-keygate-meta-tier"] == ["gold"], seen
    assert "x-keygate-shadow-decision" not in seen, seen

    # A key without the metadata: the forged header goes, none replaces it.
    admin = upstream_list(get(envoy_module, "/x", [*bearer(keys.plain["admin"]).items(), *FORGED]))
    assert "x-keygate-meta-tier" not in admin, admin
    assert admin["x-keygate-owner-id"] == ["owner-admin"], admin

    # A shadow route letting a denied key through: no identity at all, and
    # the one decision keygate took.
    shadow = upstream_list(get(envoy_module, "/shadow",
                               [*bearer(keys.plain["revoked"]).items(), *FORGED]))
    assert not any(h in shadow for h in [*IDENTITY, "x-keygate-meta-tier"]), shadow
    assert shadow["x-keygate-shadow-decision"] == ["key_revoked"], shadow


def test_an_allowed_key_is_described_in_envoys_dynamic_metadata(envoy_module, keys):
    # The route adds headers from %DYNAMIC_METADATA(keygate:owner_id)% and
    # %DYNAMIC_METADATA(keygate.metadata:tier)% (envoy-module.yaml.tmpl).
    forged = {"x-seen-metadata-owner": "forged", "x-seen-metadata-tier": "forged"}
    r = get(envoy_module, "/orders/7", {**bearer(keys.plain["reader"]), **forged})
    assert r.status == 200, r
    seen = r.upstream["headers"]
    assert seen["x-seen-metadata-owner"] == "owner-reader"
    assert seen["x-seen-metadata-tier"] == "gold"
    # Where the filter is off, it describes nobody.
    public = get(envoy_module, "/public").upstream["headers"]
    assert public.get("x-seen-metadata-owner", "") in ("", "-"), public


def test_a_superkey_passes_every_ability_and_shows_a_star(envoy_module, keys):
    r = get(envoy_module, "/admin-only", {"x-api-key": keys.plain["admin"]})
    assert r.status == 200, r
    assert r.upstream["headers"]["x-keygate-abilities"] == "*"


def test_rate_limit_headers_then_429_with_retry_after(envoy_module, keys):
    key = keys.plain["limited"]
    first = get(envoy_module, "/x", bearer(key))
    assert first.status == 200, first
    assert first.headers["x-ratelimit-limit"] == "2", first
    assert first.headers["x-ratelimit-remaining"] == "1", first
    assert get(envoy_module, "/x", bearer(key)).status == 200
    r = get(envoy_module, "/x", bearer(key))
    assert_denied(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 3600, r


def test_a_key_in_its_rotation_overlap_gets_deprecation_and_sunset(envoy_module, keys):
    r = get(envoy_module, "/x", bearer(keys.plain["rotating"]))
    assert r.status == 200, r
    assert r.headers["deprecation"] == "true", r
    assert r.headers["sunset"] == "Mon, 02 Jan 2040 03:04:05 GMT", r


def test_a_shadow_route_allows_and_reports_what_it_would_have_decided(envoy_module, keys):
    r = get(envoy_module, "/shadow", bearer(keys.plain["revoked"]))
    assert r.status == 200, r
    seen = r.upstream["headers"]
    assert seen["x-keygate-shadow-decision"] == "key_revoked"
    assert not any(h in seen for h in IDENTITY)


def test_a_route_with_the_filter_disabled_needs_no_key_and_drops_forged_identity(envoy_module):
    r = get(envoy_module, "/public/x", {"x-keygate-key-id": "forged"})
    assert r.status == 200, r
    assert "x-keygate-key-id" not in r.upstream["headers"]


def test_an_ip_allow_list_is_checked_against_the_address_envoy_sees(envoy_module, keys):
    k = keys.plain
    r = get(envoy_module, "/x", bearer(k["loopback-only"]))
    assert r.status == 200, r
    assert r.upstream["headers"]["x-keygate-key-id"] == keys.ids["loopback-only"]
    assert_denied(get(envoy_module, "/x", bearer(k["elsewhere-only"])), 403, "ip_not_allowed")
    # A client cannot claim another address: without Envoy trusting them,
    # forwarding headers do not change `source.address`.
    forged = {**bearer(k["elsewhere-only"]), "x-forwarded-for": "10.1.2.3",
              "x-real-ip": "10.1.2.3"}
    assert_denied(get(envoy_module, "/x", forged), 403, "ip_not_allowed")


def test_a_key_with_credits_is_refused_rather_than_allowed_unspent(envoy_module, keys):
    r = get(envoy_module, "/x", bearer(keys.plain["credits"]))
    assert r.status == 503, r
    assert r.json()["error"]["code"] == "unavailable", r


def test_decisions_are_counted_in_envoys_stats(envoy_module, keys):
    before = envoy_module.stats("keygate.")
    get(envoy_module, "/x", bearer(keys.plain["admin"]))
    get(envoy_module, "/x", bearer(keyformat.make_key("live")))
    get(envoy_module, "/shadow", {})
    after = envoy_module.stats("keygate.")

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)
    assert delta("keygate.decisions.allowed") == 1, after
    assert delta("keygate.decisions.invalid_key") == 1, after
    assert delta("keygate.decisions.missing_credentials") == 1, after
    assert delta("keygate.shadow") == 1, after


def _validate(envoy_binary, tmp_path, search_path, snapshot_text):
    snapshot = tmp_path / "keys.json"
    snapshot.write_text(snapshot_text)
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(envoyproc.render(
        ENVOY_MODULE_TEMPLATE.read_text(), LISTEN_ADDRESS="127.0.0.1", LISTEN_PORT=18081,
        ADMIN_ADDRESS="127.0.0.1", ADMIN_PORT=19902, UPSTREAM_HOST="127.0.0.1",
        UPSTREAM_PORT=18000, KEYGATE_HOST="127.0.0.1", KEYGATE_PORT=18001,
        FILTER_CONFIG=filter_config(snapshot_path=str(snapshot))))
    return subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(cfg), "-l", "error"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(search_path)})


def test_envoy_refuses_the_config_when_the_module_is_not_found(envoy_binary, keys, tmp_path):
    """The failure mode the fixtures rely on: no module, no Envoy."""
    empty = tmp_path / "no-module-here"
    empty.mkdir()
    r = _validate(envoy_binary, tmp_path, empty, keys.snapshot())
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Failed to load dynamic module" in r.stdout + r.stderr, r.stdout + r.stderr


def test_envoy_refuses_a_partial_snapshot_and_says_why(envoy_binary, module_dir, keys,
                                                       tmp_path):
    r = _validate(envoy_binary, tmp_path, module_dir, keys.snapshot(complete=False))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "the key snapshot is partial" in out, out
    for entry in keys.entries:
        assert entry["hash"] not in out
