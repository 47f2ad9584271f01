"""keygate inside Envoy, fed by keygate: the real Envoy 1.40 loads
libkeygate_envoy.so with no key file, only the address of a real
`keygate serve`'s admin listener (its KeyFeed). Keys created, revoked and
suspended through KeyAdmin reach the filter through the feed; when keygate
goes away Envoy keeps deciding from the table it has (docs/envoy-module.md,
"The key feed")."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from pyharness import keyformat
from pyharness.admin import AdminClient
from pyharness.paths import REPO_ROOT
from pyharness.httpc import http_request
from pyharness.procs import eventually, free_ports
# module_dir is a fixture: the module that the tests load.
from test_envoy_module import (assert_denied, bearer, filter_config, get,  # noqa: F401
                               module_dir, start_envoy)

# Far beyond how long a change takes to arrive (milliseconds, measured in
# BENCHMARKS.md); a test waiting this long has failed.
PATIENCE = 10.0


@pytest.fixture
def fed(keygate_factory, admin_stubs, envoy_binary, echo_upstream, module_dir,
        tmp_path_factory):
    """A keygate of its own (SQLite), its admin client, and an Envoy whose
    keygate filter is fed by it."""
    server = keygate_factory(name="keygate-feed")
    admin = AdminClient(server.admin_addr, admin_stubs)
    workdir = tmp_path_factory.mktemp("envoy-module-feed")
    config = filter_config(feed={"address": f"http://{server.admin_addr}"})
    envoy = start_envoy(envoy_binary, workdir, echo_upstream.port, module_dir, config,
                        name="envoy-module-feed")
    yield server, admin, envoy
    envoy.stop()
    admin.close()


# The filter's `lookup`: the cluster the Envoy template defines for
# keygate's forward-auth listener.
LOOKUP = {"cluster": "keygate_forward_auth", "timeout_ms": 5000}


def forward_auth_port(server) -> int:
    return int(server.forward_auth_addr.rsplit(":", 1)[1])


@pytest.fixture
def fed_and_asking(keygate_factory, admin_stubs, envoy_binary, echo_upstream, module_dir,
                   tmp_path_factory):
    """As `fed`, with the filter asking keygate's forward-auth listener
    about what its table cannot decide."""
    # keygate's own metadata headers, as the filter's (filter_config).
    server = keygate_factory(name="keygate-asked", extra_env={"KEYGATE_METADATA_HEADERS": "tier"})
    admin = AdminClient(server.admin_addr, admin_stubs)
    workdir = tmp_path_factory.mktemp("envoy-module-asking")
    config = filter_config(feed={"address": f"http://{server.admin_addr}"}, lookup=LOOKUP)
    envoy = start_envoy(envoy_binary, workdir, echo_upstream.port, module_dir, config,
                        name="envoy-module-asking", keygate_port=forward_auth_port(server))
    yield server, admin, envoy
    envoy.stop()
    admin.close()


def assert_allowed(envoy, key):
    r = get(envoy, "/x", bearer(key))
    assert r.status == 200, r


def test_keys_created_and_revoked_on_keygate_are_decided_by_the_filter(fed, owner):
    _, admin, envoy = fed
    created = admin.create_key(owner, abilities=["read:orders"], metadata={"tier": "gold"})

    def allowed():
        r = get(envoy, "/orders/1", bearer(created.key))
        assert r.status == 200, r
        return r
    r = eventually(allowed, timeout=PATIENCE, desc="the new key allowed through the feed")
    seen = r.upstream["headers"]
    assert seen["x-keygate-key-id"] == created.api_key.id
    assert seen["x-keygate-owner-id"] == owner
    assert seen["x-keygate-meta-tier"] == "gold"

    assert_denied(get(envoy, "/orders/1", bearer(keyformat.make_key("live"))), 401,
                  "invalid_key")

    # The filter reports what it decided; keygate records it as Check's own.
    def recorded():
        usage = admin.key_usage(owner, created.api_key.id)
        assert usage.request_count >= 1, usage
        assert usage.top_endpoints[0].endpoint == "/orders/{id}", usage
        assert usage.last_used_ip == "127.0.0.1", usage
    eventually(recorded, timeout=PATIENCE, desc="the filter's usage report recorded")

    admin.revoke_key(owner, created.api_key.id, reason="leaked")
    revoked_at = time.monotonic()
    eventually(lambda: assert_denied(get(envoy, "/orders/1", bearer(created.key)), 401,
                                     "key_revoked"),
               timeout=PATIENCE, interval=0.005, desc="the revoke reaches the filter")
    print(f"revoke reached Envoy's filter {1000 * (time.monotonic() - revoked_at):.1f} ms "
          f"after RevokeKey returned")


def test_a_suspended_owner_is_refused_by_the_filter(fed, owner):
    _, admin, envoy = fed
    created = admin.create_key(owner)
    eventually(lambda: assert_allowed(envoy, created.key), timeout=PATIENCE)
    admin.suspend_owner(owner)
    eventually(lambda: assert_denied(get(envoy, "/x", bearer(created.key)), 403,
                                     "owner_suspended"),
               timeout=PATIENCE, desc="the suspension reaches the filter")
    admin.resume_owner(owner)
    eventually(lambda: assert_allowed(envoy, created.key), timeout=PATIENCE)


def test_envoy_keeps_deciding_from_its_table_while_keygate_is_down_and_follows_it_back(
        fed, owner, keygate_factory, admin_stubs):
    server, admin, envoy = fed
    created = admin.create_key(owner)
    doomed = admin.create_key(owner)
    eventually(lambda: assert_allowed(envoy, created.key), timeout=PATIENCE)
    admin.revoke_key(owner, doomed.api_key.id)
    eventually(lambda: assert_denied(get(envoy, "/x", bearer(doomed.key)), 401, "key_revoked"),
               timeout=PATIENCE)

    server.stop()
    # Known keys keep their decisions; a key the table never had is unknown.
    for _ in range(3):
        assert_allowed(envoy, created.key)
        assert_denied(get(envoy, "/x", bearer(doomed.key)), 401, "key_revoked")
        assert_denied(get(envoy, "/x", bearer(keyformat.make_key("live"))), 401, "invalid_key")
        time.sleep(0.5)

    # keygate back on the same address and database: the filter reconnects,
    # takes a fresh snapshot, and follows changes again.
    same = {name: server.env[name] for name in (
        "KEYGATE_DATABASE_URL", "KEYGATE_AUTHZ_ADDR", "KEYGATE_ADMIN_ADDR",
        "KEYGATE_METRICS_ADDR", "KEYGATE_FORWARD_AUTH_ADDR", "KEYGATE_HTTP_ADDR")}
    back = keygate_factory(extra_env=same, name="keygate-feed-back")
    admin_back = AdminClient(back.admin_addr, admin_stubs)
    try:
        newer = admin_back.create_key(owner)
        eventually(lambda: assert_allowed(envoy, newer.key), timeout=PATIENCE,
                   desc="a key created after keygate came back")
        assert_allowed(envoy, created.key)
    finally:
        admin_back.close()


def test_before_the_first_snapshot_envoy_answers_503_not_invalid_key(
        envoy_binary, echo_upstream, module_dir, tmp_path):
    """A feed that cannot be reached and no key file: nothing can be
    decided, and the filter says so instead of calling every key invalid."""
    (nobody,) = free_ports(1)
    envoy = start_envoy(envoy_binary, tmp_path, echo_upstream.port, module_dir,
                        filter_config(feed={"address": f"http://127.0.0.1:{nobody}"}),
                        name="envoy-module-unfed")
    try:
        r = get(envoy, "/x", bearer(keyformat.make_key("live")))
        assert r.status == 503, r
        assert r.json()["error"]["code"] == "unavailable", r
        assert envoy.stats("keygate.").get("keygate.table_unavailable") == 1
    finally:
        envoy.stop()


def test_the_istio_example_s_filter_is_one_envoy_accepts(envoy_binary, module_dir, tmp_path):
    """examples/istio/keygate-module.yaml cannot be applied without a
    cluster; what can be checked here is that the HTTP filter it patches in
    is one the suite's Envoy 1.40 and the built module accept."""
    example = yaml.safe_load((REPO_ROOT / "examples/istio/keygate-module.yaml").read_text())
    assert example["kind"] == "EnvoyFilter"
    (patch,) = example["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "INSERT_BEFORE"
    # The files the example mounts into the sidecar, here in tmp_path: the
    # module reads both when Envoy loads the config.
    config_value = patch["patch"]["value"]["typed_config"]["filter_config"]
    settings = json.loads(config_value["value"])
    token, ca = tmp_path / "feed-token", tmp_path / "ca.pem"
    token.write_text("kga_example\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=keygate", "-days", "1",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)],
                   check=True, capture_output=True)
    settings["feed"].update(token_file=str(token), ca_file=str(ca))
    config_value["value"] = json.dumps(settings)
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [patch["patch"]["value"], {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    bootstrap = {"static_resources": {"listeners": [{
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}]}]}}
    config = tmp_path / "istio-inbound.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    r = subprocess.run([str(envoy_binary), "--mode", "validate", "-c", str(config), "-l", "error"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module_dir)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_key_with_credits_is_decided_by_keygate_through_the_lookup(fed_and_asking, owner):
    """Credits are spent in keygate's database: the filter asks keygate's
    forward-auth listener, which decides, spends and records, and applies
    its answer: identity upstream, credential stripped, then keygate's own
    429 once the credits are gone."""
    server, admin, envoy = fed_and_asking

    def lookups() -> int:
        return envoy.stats("keygate.").get("keygate.lookups", 0)

    # Before the first table every key is asked about; once it has come, a
    # key it lacks is not.
    def table_arrived():
        before = lookups()
        assert_denied(get(envoy, "/x", bearer(keyformat.make_key("live"))), 401, "invalid_key")
        assert lookups() == before
    eventually(table_arrived, timeout=PATIENCE, desc="the feed's first table")
    asked_before = lookups()
    created = admin.create_key(owner, credits=2, abilities=["read:orders"],
                               metadata={"tier": "gold"})

    def first():
        r = http_request(envoy.base_url, "/orders/7", {**bearer(created.key),
                                                       "x-keygate-key-id": "forged"},
                         method="POST", body=b'{"qty": 3}')
        assert r.status == 200, r
        return r
    # Until the feed brings the key, the table calls it unknown.
    r = eventually(first, timeout=PATIENCE, desc="the key with credits allowed")
    seen = r.upstream
    assert seen["headers"]["x-keygate-key-id"] == created.api_key.id
    assert seen["headers"]["x-keygate-meta-tier"] == "gold"
    assert "authorization" not in seen["headers"], seen
    assert seen["body_length"] == len(b'{"qty": 3}'), "the held body reaches the upstream"

    assert get(envoy, "/orders/8", bearer(created.key)).status == 200
    exhausted = get(envoy, "/orders/9", bearer(created.key))
    assert_denied(exhausted, 429, "credits_exhausted")
    # What the table can decide is decided without asking.
    assert_denied(get(envoy, "/admin-only", bearer(created.key)), 403, "insufficient_ability")

    stats = envoy.stats("keygate.")
    assert stats.get("keygate.lookups") - asked_before == 3, stats
    assert stats.get("keygate.lookup_failures", 0) == 0, stats
    assert stats.get("keygate.credits_unavailable", 0) == 0, stats

    # keygate recorded the three decisions it took as its own usage, and
    # the filter reported only the one it took itself (/admin-only), not
    # keygate's a second time. request_count counts the allowed ones.
    def recorded():
        usage = admin.key_usage(owner, created.api_key.id)
        assert usage.request_count == 2, usage
        decisions: dict[str, int] = {}
        for entry in usage.recent_logs:
            decisions[entry.decision] = decisions.get(entry.decision, 0) + entry.count
        assert decisions == {"allowed": 2, "credits_exhausted": 1,
                             "insufficient_ability": 1}, usage
    eventually(recorded, timeout=PATIENCE, desc="keygate's usage of the asked key")
    time.sleep(1.5)  # the filter's reports go every second
    recorded()


def test_before_the_first_table_keys_are_asked_of_keygate(
        keygate_factory, admin_stubs, envoy_binary, echo_upstream, module_dir, tmp_path, owner):
    """A feed that cannot be reached: with a lookup, keygate decides each
    key instead of the 503 the filter gives without one."""
    server = keygate_factory(name="keygate-lookup-only")
    admin = AdminClient(server.admin_addr, admin_stubs)
    (nobody,) = free_ports(1)
    envoy = start_envoy(envoy_binary, tmp_path, echo_upstream.port, module_dir,
                        filter_config(feed={"address": f"http://127.0.0.1:{nobody}"},
                                      lookup=LOOKUP),
                        name="envoy-module-lookup-only", keygate_port=forward_auth_port(server))
    try:
        created = admin.create_key(owner)
        r = get(envoy, "/x", bearer(created.key))
        assert r.status == 200, r
        assert r.upstream["headers"]["x-keygate-owner-id"] == owner
        assert_denied(get(envoy, "/x", bearer(keyformat.make_key("live"))), 401, "invalid_key")
        assert envoy.stats("keygate.").get("keygate.lookups") == 2

        # keygate gone: the filter says it could not ask, never "allowed".
        server.stop()
        r = get(envoy, "/x", bearer(created.key))
        assert r.status == 503, r
        assert r.json()["error"]["code"] == "unavailable", r
        assert envoy.stats("keygate.").get("keygate.lookup_failures") == 1
    finally:
        envoy.stop()
        admin.close()


def test_an_imported_key_is_decided_by_keygate_through_the_lookup(
        keygate_factory, admin_stubs, envoy_binary, echo_upstream, module_dir, tmp_path, owner):
    """A key imported from another system is found by the hash of its whole
    string, which the module's table does not hold: with the prefix in
    `imported_prefixes`, the filter asks keygate, which knows it."""
    server = keygate_factory(name="keygate-imported",
                             extra_env={"KEYGATE_IMPORTED_PREFIXES": "lk_"})
    admin = AdminClient(server.admin_addr, admin_stubs)
    config = filter_config(feed={"address": f"http://{server.admin_addr}"}, lookup=LOOKUP,
                           imported_prefixes=["lk_"])
    envoy = start_envoy(envoy_binary, tmp_path, echo_upstream.port, module_dir, config,
                        name="envoy-module-imported", keygate_port=forward_auth_port(server))
    try:
        legacy = "lk_" + "Legacy0Key1From2Another3System4AbCdEf"
        admin.import_key(owner, legacy)
        r = get(envoy, "/x", bearer(legacy))
        assert r.status == 200, r
        assert r.upstream["headers"]["x-keygate-owner-id"] == owner
        assert "authorization" not in r.upstream["headers"]
        assert_denied(get(envoy, "/x", bearer("lk_" + "NotImported" * 4)), 401, "invalid_key")
        assert envoy.stats("keygate.").get("keygate.lookups") == 2
    finally:
        envoy.stop()
        admin.close()
