"""Offline tests of the keygate Helm chart.

Helm itself runs in-process: helm-python-sdk binds Helm's Go SDK (the same
code as `helm lint` and `helm template`) through a shared library shipped in
its wheel, so no cluster, no network and no helm binary are needed. Rendered
manifests are checked against the Kubernetes OpenAPI schemas bundled with
kubernetes-validate, in strict mode (unknown fields are errors).

Run with scripts/test-chart.sh.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "keygate"
HA_VALUES = yaml.safe_load((CHART / "ci" / "ha-values.yaml").read_text())
DEFAULT_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())

RELEASE = "demo"
NAMESPACE = "auth"
FULLNAME = "demo-keygate"

DATABASE_URL = "postgres://keygate:s3cret@postgres.db.svc:5432/keygate?sslmode=require"
# One of each role (a `feed` token for keygate-envoy modules too).
ADMIN_TOKENS = "backend:service:" + "a" * 64 + ",ops:admin:" + "b" * 64 + ",envoy:feed:" + "c" * 64
# The smallest install: only what the chart cannot default.
REQUIRED = {"secrets": {"databaseUrl": DATABASE_URL, "adminTokens": ADMIN_TOKENS}}

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kv.latest_version())

# Kinds kubernetes-validate has no schema for, because they are custom
# resources. Nothing else may skip validation; their shape is asserted below.
CUSTOM_RESOURCE_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

SCHEMA_FAILURE = "don't meet the specifications of the schema"


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge values layers, later ones winning (like repeated -f)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def render(values: dict[str, Any]) -> dict[str, str]:
    """`helm template demo charts/keygate -n auth` with these values."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def the(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def lint_errors(values: dict[str, Any] | None) -> list[str]:
    """`helm lint --strict`: errors, plus warnings, which strict mode fails on."""
    report = helm.lint(CHART, values, strict=True)
    warnings = [f'{m["path"]}: {m["error"]}' for m in report["messages"] if m["severity"] >= 2]
    return list(report["errors"]) + warnings


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return manifests(REQUIRED)


@pytest.fixture(scope="module")
def ha_docs() -> list[dict[str, Any]]:
    return manifests(HA_VALUES)


@pytest.fixture(scope="module")
def deployment(default_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return the(default_docs, "Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# --- helm lint ---------------------------------------------------------------


def test_chart_lints_strictly_with_default_values_and_a_database_secret() -> None:
    assert lint_errors(REQUIRED) == []


def test_chart_lints_strictly_with_the_ha_values() -> None:
    assert lint_errors(HA_VALUES) == []


# --- every manifest is valid Kubernetes ----------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", ["default", "ha"])
def test_every_rendered_manifest_is_valid_kubernetes(value_set: str, version: str) -> None:
    docs = manifests(REQUIRED if value_set == "default" else HA_VALUES)
    problems = []
    validated = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCE_KINDS:
            continue
        name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
        try:
            kv.validate(doc, version, strict=True)
            validated += 1
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{name}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{name}: {e.message}")
    assert problems == []
    assert validated >= 6


def test_the_validator_rejects_a_field_kubernetes_does_not_know() -> None:
    """Guards the test above: strict validation must catch a misspelt field."""
    docs = manifests(REQUIRED)
    deployment = copy.deepcopy(the(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_only_custom_resources_are_exempt_from_kubernetes_validation(ha_docs: list[dict[str, Any]]) -> None:
    rendered_kinds = {(d["apiVersion"], d["kind"]) for d in ha_docs}
    assert CUSTOM_RESOURCE_KINDS <= rendered_kinds
    for api_version, kind in CUSTOM_RESOURCE_KINDS:
        with pytest.raises(kv.SchemaNotFoundError):
            kv.validate({"apiVersion": api_version, "kind": kind}, KUBERNETES_VERSIONS[-1], strict=True)


def test_service_monitor_scrapes_the_metrics_port_of_this_release(ha_docs: list[dict[str, Any]]) -> None:
    monitor = the(ha_docs, "ServiceMonitor")
    service = the(ha_docs, "Service", FULLNAME)
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] == "http-metrics"
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["interval"])
    assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["scrapeTimeout"])


# --- the Deployment's security and lifecycle --------------------------------


def test_pods_run_as_a_fixed_non_root_user(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532
    assert pod["fsGroup"] == 65532
    assert container["securityContext"]["runAsNonRoot"] is True


def test_container_has_a_read_only_root_and_no_privilege_escalation(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False


def test_container_drops_all_capabilities_under_runtime_default_seccomp(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_tmp_is_a_writable_empty_dir(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_pods_mount_no_service_account_token_and_get_no_service_links(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    # Service links would put KEYGATE_PORT & co. into keygate's environment.
    assert spec["enableServiceLinks"] is False


def test_container_serves_keygate_on_the_three_listeners(container: dict[str, Any]) -> None:
    assert container["command"] == ["keygate", "serve"]
    assert container["image"] == "ghcr.io/keygate/keygate:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc-authz": 50051, "grpc-admin": 50052, "http-metrics": 9090}


def test_probes_are_native_grpc_health_checks(container: dict[str, Any]) -> None:
    assert container["livenessProbe"]["grpc"]["port"] == 50052
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert container["startupProbe"]["grpc"]["port"] == 50052
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert set(container[probe]) & {"httpGet", "tcpSocket", "exec"} == set()


def test_probes_fall_back_to_tcp_when_the_listeners_speak_tls(ha_docs: list[dict[str, Any]]) -> None:
    (c,) = the(ha_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["tcpSocket"]["port"] == "grpc-authz"
    assert c["livenessProbe"]["tcpSocket"]["port"] == "grpc-admin"
    assert "grpc" not in c["readinessProbe"]


def duration_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9]+)(ms|s|m|h)", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


@pytest.mark.parametrize("value_set", ["default", "ha"])
def test_termination_grace_outlasts_the_drain(value_set: str) -> None:
    docs = manifests(REQUIRED if value_set == "default" else HA_VALUES)
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    config = the(docs, "ConfigMap")["data"]
    drain = duration_seconds(config["KEYGATE_SHUTDOWN_GRACE"])
    pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_rendering_fails_when_termination_grace_does_not_outlast_the_drain() -> None:
    message = render_error(merged(REQUIRED, {"config": {"shutdownGrace": "1m"}, "terminationGracePeriodSeconds": 60}))
    assert "terminationGracePeriodSeconds (60)" in message


def test_replicas_spread_over_nodes_by_default(deployment: dict[str, Any]) -> None:
    assert deployment["spec"]["replicas"] == 2
    terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_a_config_change_rolls_the_pods(deployment: dict[str, Any]) -> None:
    changed = the(manifests(merged(REQUIRED, {"config": {"cacheTtl": "30s"}})), "Deployment")
    before = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = changed["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert before != after


def test_a_secret_change_rolls_the_pods(deployment: dict[str, Any]) -> None:
    other = merged(REQUIRED, {"secrets": {"databaseUrl": "postgres://keygate@other/keygate"}})
    changed = the(manifests(other), "Deployment")
    before = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] != before


# --- configuration --------------------------------------------------------------


def test_config_map_carries_every_setting_with_the_documented_default(default_docs: list[dict[str, Any]]) -> None:
    assert the(default_docs, "ConfigMap")["data"] == {
        "KEYGATE_AUTHZ_ADDR": "0.0.0.0:50051",
        "KEYGATE_ADMIN_ADDR": "0.0.0.0:50052",
        "KEYGATE_METRICS_ADDR": "0.0.0.0:9090",
        "KEYGATE_LOG_FORMAT": "json",
        "KEYGATE_KEY_PREFIX": "sk",
        "KEYGATE_ENVIRONMENTS": "live,test",
        "KEYGATE_TOKEN_LENGTH": "32",
        "KEYGATE_MAX_KEYS_PER_OWNER": "100",
        "KEYGATE_CACHE_TTL": "60s",
        "KEYGATE_NEGATIVE_CACHE_TTL": "5s",
        "KEYGATE_USAGE_FLUSH_INTERVAL": "1s",
        "KEYGATE_USAGE_BATCH_SIZE": "5000",
        "KEYGATE_USAGE_BUFFER": "100000",
        "KEYGATE_FOREIGN_BEARER": "deny",
        "KEYGATE_MIGRATE_ON_START": "false",
        "KEYGATE_SHUTDOWN_GRACE": "25s",
        "KEYGATE_USAGE_LOG_ENABLED": "true",
        "KEYGATE_USAGE_LOG_RETENTION_DAYS": "30",
        "KEYGATE_RATE_LIMIT_TIMEOUT": "5ms",
        "KEYGATE_RATE_LIMIT_PREFIX": "keygate:",
        "KEYGATE_CREDIT_LEASE": "100",
        "KEYGATE_WEBHOOKS_ENABLED": "true",
        "KEYGATE_WEBHOOK_TIMEOUT": "10s",
        "KEYGATE_WEBHOOK_RETRY_FOR": "24h",
        "KEYGATE_EXPIRY_WARNINGS": "7d,1d",
        "KEYGATE_WEBHOOK_ALLOW_PRIVATE": "false",
        "KEYGATE_WEBHOOK_ALLOW_HTTP": "false",
        "KEYGATE_DORMANT_AFTER": "off",
        "KEYGATE_LEAK_ACTION": "revoke",
        # keygate's own default is 0.0.0.0:8081; off, it stays on the pod's loopback.
        "KEYGATE_FORWARD_AUTH_ADDR": "127.0.0.1:8081",
    }


def test_webhook_settings_reach_the_config_map_and_a_disabled_dispatcher_stays_off() -> None:
    values = merged(
        REQUIRED,
        {"config": {"webhooksEnabled": False, "expiryWarnings": ["3d"], "webhookAllowHttp": True}},
    )
    data = the(manifests(values), "ConfigMap")["data"]
    assert data["KEYGATE_WEBHOOKS_ENABLED"] == "false"
    assert data["KEYGATE_EXPIRY_WARNINGS"] == "3d"
    assert data["KEYGATE_WEBHOOK_ALLOW_HTTP"] == "true"


def test_key_hygiene_settings_reach_the_config_map() -> None:
    values = merged(
        REQUIRED,
        {"config": {"dormantAfter": "90d", "importedPrefixes": ["lk_", "old_"], "leakAction": "notify"}},
    )
    data = the(manifests(values), "ConfigMap")["data"]
    assert data["KEYGATE_DORMANT_AFTER"] == "90d"
    assert data["KEYGATE_IMPORTED_PREFIXES"] == "lk_,old_"
    assert data["KEYGATE_LEAK_ACTION"] == "notify"


def test_ability_catalog_and_extra_settings_reach_the_config_map() -> None:
    values = merged(
        REQUIRED, {"config": {"abilities": ["read:orders", "write:*"], "extraEnv": {"KEYGATE_X_Y": "1"}}}
    )
    data = the(manifests(values), "ConfigMap")["data"]
    assert data["KEYGATE_ABILITIES"] == "read:orders,write:*"
    assert data["KEYGATE_X_Y"] == "1"


def test_the_rest_api_is_off_by_default_and_exposed_when_enabled(default_docs: list[dict[str, Any]]) -> None:
    assert "KEYGATE_HTTP_ADDR" not in the(default_docs, "ConfigMap")["data"]
    assert all(p["name"] != "http-rest" for p in the(default_docs, "Service", FULLNAME)["spec"]["ports"])
    docs = manifests(merged(REQUIRED, {"rest": {"enabled": True, "containerPort": 8088, "servicePort": 80}}))
    assert the(docs, "ConfigMap")["data"]["KEYGATE_HTTP_ADDR"] == "0.0.0.0:8088"
    container = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "http-rest", "containerPort": 8088, "protocol": "TCP"} in container["ports"]
    ports = the(docs, "Service", FULLNAME)["spec"]["ports"]
    assert {"name": "http-rest", "port": 80, "targetPort": "http-rest", "protocol": "TCP",
            "appProtocol": "http"} in ports


def test_forward_auth_is_off_by_default_and_bound_on_the_pod_loopback(default_docs: list[dict[str, Any]]) -> None:
    data = the(default_docs, "ConfigMap")["data"]
    assert data["KEYGATE_FORWARD_AUTH_ADDR"] == "127.0.0.1:8081"
    assert "KEYGATE_FORWARD_AUTH_PATH_PREFIX" not in data
    (c,) = the(default_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert all(p["name"] != "http-fwd-auth" for p in c["ports"])
    assert all(p["name"] != "http-fwd-auth" for p in the(default_docs, "Service", FULLNAME)["spec"]["ports"])


def test_a_disabled_forward_auth_listener_follows_its_container_port_on_loopback() -> None:
    docs = manifests(merged(REQUIRED, {"forwardAuth": {"containerPort": 18081}}))
    assert the(docs, "ConfigMap")["data"]["KEYGATE_FORWARD_AUTH_ADDR"] == "127.0.0.1:18081"


FORWARD_AUTH = {"forwardAuth": {"enabled": True, "containerPort": 8181, "servicePort": 80, "pathPrefix": "/ext-authz"}}


def test_forward_auth_is_exposed_on_its_port_when_enabled() -> None:
    docs = manifests(merged(REQUIRED, FORWARD_AUTH))
    data = the(docs, "ConfigMap")["data"]
    assert data["KEYGATE_FORWARD_AUTH_ADDR"] == "0.0.0.0:8181"
    assert data["KEYGATE_FORWARD_AUTH_PATH_PREFIX"] == "/ext-authz"
    container = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "http-fwd-auth", "containerPort": 8181, "protocol": "TCP"} in container["ports"]
    ports = the(docs, "Service", FULLNAME)["spec"]["ports"]
    assert {"name": "http-fwd-auth", "port": 80, "targetPort": "http-fwd-auth", "protocol": "TCP",
            "appProtocol": "http"} in ports
    (job_c,) = the(docs, "Job")["spec"]["template"]["spec"]["containers"]
    assert data.items() <= env_of(job_c).items()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_with_rest_forward_auth_and_check_mtls_are_valid_kubernetes(version: str) -> None:
    values = merged(HA_VALUES, FORWARD_AUTH, {"rest": {"enabled": True}},
                    {"tls": {"authzClientCaSecretName": "keygate-proxy-ca"}})
    docs = manifests(values)
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM_RESOURCE_KINDS:
            kv.validate(doc, version, strict=True)
    assert lint_errors(values) == []


def test_the_path_prefix_is_sent_only_when_set() -> None:
    values = merged(REQUIRED, {"forwardAuth": {"enabled": True}})
    data = the(manifests(values), "ConfigMap")["data"]
    assert data["KEYGATE_FORWARD_AUTH_ADDR"] == "0.0.0.0:8081"
    assert "KEYGATE_FORWARD_AUTH_PATH_PREFIX" not in data


@pytest.mark.parametrize("name", ["KEYGATE_FORWARD_AUTH_ADDR", "KEYGATE_FORWARD_AUTH_PATH_PREFIX",
                                  "KEYGATE_HTTP_ADDR", "KEYGATE_AUTHZ_CLIENT_CA"])
def test_extra_settings_cannot_override_the_listeners_or_the_check_client_ca(name: str) -> None:
    values = merged(REQUIRED, {"config": {"extraEnv": {name: "/x"}}})
    assert f"cannot set {name}" in render_error(values)


LISTENER_CLASHES = {
    "forward-auth on the REST default": {"forwardAuth": {"containerPort": 8080}},
    "forward-auth on metrics": {"forwardAuth": {"enabled": True, "containerPort": 9090}},
    "REST on forward-auth": {"rest": {"enabled": True, "containerPort": 8081}},
}


@pytest.mark.parametrize("values", LISTENER_CLASHES.values(), ids=LISTENER_CLASHES.keys())
def test_rendering_fails_when_two_listeners_share_a_port(values: dict[str, Any]) -> None:
    assert "each listener needs its own port" in render_error(merged(REQUIRED, values))


def test_rendering_fails_when_two_service_ports_are_the_same() -> None:
    values = merged(REQUIRED, {"forwardAuth": {"enabled": True, "servicePort": 50051}})
    assert "forwardAuth.servicePort and service.ports.authz are both Service port 50051" in render_error(values)


def test_extra_settings_cannot_smuggle_the_database_url_into_the_config_map() -> None:
    values = merged(REQUIRED, {"config": {"extraEnv": {"KEYGATE_DATABASE_URL": DATABASE_URL}}})
    assert "cannot set KEYGATE_DATABASE_URL" in render_error(values)


def test_deployment_reads_the_config_map(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    assert {"configMapRef": {"name": FULLNAME}} in container["envFrom"]


# --- secrets ----------------------------------------------------------------------


def test_secrets_reach_keygate_as_files_never_as_env_values(
    default_docs: list[dict[str, Any]], deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    env = env_of(container)
    assert env["KEYGATE_DATABASE_URL_FILE"] == "/etc/keygate/secrets/database-url"
    assert env["KEYGATE_ADMIN_TOKENS_FILE"] == "/etc/keygate/secrets/admin-tokens"
    for doc in default_docs:
        if doc["kind"] != "Secret":
            assert DATABASE_URL not in json.dumps(doc)
            assert "a" * 64 not in json.dumps(doc)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/keygate/secrets")
    assert mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == FULLNAME
    assert the(default_docs, "Secret", FULLNAME)["data"]["database-url"] == _b64(DATABASE_URL)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_an_existing_secret_is_mounted_under_the_file_names_keygate_reads() -> None:
    values = {"secrets": {"existingSecret": "creds", "databaseUrlKey": "url", "adminTokensKey": "tokens"}}
    docs = manifests(values)
    assert [d for d in docs if d["kind"] == "Secret"] == []
    volume = next(
        v for v in the(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"
    )
    assert volume["secret"]["secretName"] == "creds"
    assert volume["secret"]["items"] == [
        {"key": "url", "path": "database-url"},
        {"key": "tokens", "path": "admin-tokens"},
    ]


REDIS_URL = "redis://:hunter2@redis.cache.svc:6379/0"


def test_rate_limits_point_at_an_existing_redis_whose_url_stays_in_a_secret() -> None:
    docs = manifests(merged(REQUIRED, {"rateLimits": {"redis": {"enabled": True, "url": REDIS_URL}}}))
    (c,) = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    store = next(e for e in c["env"] if e["name"] == "KEYGATE_RATE_LIMIT_STORE")
    assert store == {
        "name": "KEYGATE_RATE_LIMIT_STORE",
        "valueFrom": {"secretKeyRef": {"name": f"{FULLNAME}-redis", "key": "redis-url"}},
    }
    assert the(docs, "Secret", f"{FULLNAME}-redis")["data"]["redis-url"] == _b64(REDIS_URL)
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "hunter2" not in json.dumps(doc)
    job = the(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert "KEYGATE_RATE_LIMIT_STORE" not in env_of(job)
    moved = manifests(merged(REQUIRED, {"rateLimits": {"redis": {"enabled": True, "url": REDIS_URL + "1"}}}))
    annotations = lambda d: the(d, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations(moved)["checksum/redis"] != annotations(docs)["checksum/redis"]


def test_an_existing_redis_secret_is_read_and_none_is_created() -> None:
    redis = {"enabled": True, "existingSecret": "cache-creds", "urlKey": "url"}
    docs = manifests(merged(REQUIRED, {"rateLimits": {"redis": redis}}))
    (c,) = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    store = next(e for e in c["env"] if e["name"] == "KEYGATE_RATE_LIMIT_STORE")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "cache-creds", "key": "url"}
    secrets = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Secret")
    assert secrets == [FULLNAME, f"{FULLNAME}-migrate"]


def test_without_redis_each_replica_limits_locally(container: dict[str, Any]) -> None:
    env = env_of(container)
    assert "KEYGATE_RATE_LIMIT_STORE" not in env
    config = the(manifests(REQUIRED), "ConfigMap", FULLNAME)["data"]
    assert config["KEYGATE_RATE_LIMIT_TIMEOUT"] == "5ms"
    assert config["KEYGATE_CREDIT_LEASE"] == "100"


def test_redis_without_a_url_or_a_secret_fails_to_render() -> None:
    values = merged(REQUIRED, {"rateLimits": {"redis": {"enabled": True}}})
    assert "rateLimits.redis.enabled needs rateLimits.redis.url" in render_error(values)


def test_admin_tokens_may_be_given_as_a_list() -> None:
    tokens = ADMIN_TOKENS.split(",")
    values = merged(REQUIRED, {"secrets": {"adminTokens": tokens}})
    secret = the(manifests(values), "Secret", FULLNAME)
    assert secret["data"]["admin-tokens"] == _b64(ADMIN_TOKENS)


MISSING_SECRETS = {
    "no database URL": ({"secrets": {"adminTokens": ADMIN_TOKENS}}, ["/secrets/databaseUrl"]),
    "no admin tokens": ({"secrets": {"databaseUrl": DATABASE_URL}}, ["/secrets/adminTokens"]),
    "an empty token list": ({"secrets": {"databaseUrl": DATABASE_URL, "adminTokens": []}}, ["/secrets/adminTokens"]),
    "neither": ({}, ["/secrets/databaseUrl", "/secrets/adminTokens"]),
}


@pytest.mark.parametrize("values, paths", MISSING_SECRETS.values(), ids=MISSING_SECRETS.keys())
def test_lint_and_template_both_fail_early_without_the_database_url_or_admin_tokens(
    values: dict[str, Any], paths: list[str]
) -> None:
    """The schema requires them unless secrets.existingSecret names a Secret,
    so `helm lint` fails as `helm template` does, with the same message."""
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    rendered = str(caught.value)
    linted = lint_errors(values)
    for path in paths:
        assert f"at '{path}'" in rendered
        assert any(f"at '{path}'" in e for e in linted), linted
    schema_lines = sorted(line for line in rendered.splitlines() if line.startswith("- at "))
    assert any(sorted(l for l in e.splitlines() if l.startswith("- at ")) == schema_lines for e in linted)


def test_an_existing_secret_needs_neither_value_in_the_chart() -> None:
    assert lint_errors({"secrets": {"existingSecret": "creds"}}) == []


def test_rendering_fails_when_tls_has_no_certificate_secret() -> None:
    message = render_error(merged(REQUIRED, {"tls": {"enabled": True}}))
    assert "tls.secretName" in message


def test_tls_certificates_are_mounted_and_announced_to_keygate(ha_docs: list[dict[str, Any]]) -> None:
    pod = the(ha_docs, "Deployment")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["KEYGATE_TLS_CERT"] == "/etc/keygate/tls/tls.crt"
    assert env["KEYGATE_TLS_KEY"] == "/etc/keygate/tls/tls.key"
    assert env["KEYGATE_ADMIN_CLIENT_CA"] == "/etc/keygate/client-ca/ca.crt"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"secrets": "keygate-credentials", "tls": "keygate-tls", "client-ca": "keygate-admin-ca"}
    mounts = {m["mountPath"]: m.get("readOnly") for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/keygate/tls"] is True and mounts["/etc/keygate/client-ca"] is True


CHECK_MTLS = {"tls": {"enabled": True, "secretName": "keygate-tls", "authzClientCaSecretName": "proxy-ca",
                       "authzClientCaKey": "bundle.pem"}}


def test_the_check_client_ca_is_mounted_and_announced_to_keygate() -> None:
    pod = the(manifests(merged(REQUIRED, CHECK_MTLS)), "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["KEYGATE_AUTHZ_CLIENT_CA"] == "/etc/keygate/authz-client-ca/ca.crt"
    assert "KEYGATE_ADMIN_CLIENT_CA" not in env
    volume = next(v for v in pod["volumes"] if v["name"] == "authz-client-ca")
    assert volume["secret"] == {"secretName": "proxy-ca", "defaultMode": 0o440,
                                "items": [{"key": "bundle.pem", "path": "ca.crt"}]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "authz-client-ca")
    assert mount == {"name": "authz-client-ca", "mountPath": "/etc/keygate/authz-client-ca", "readOnly": True}


def test_the_check_and_admin_client_cas_are_separate_mounts() -> None:
    values = merged(REQUIRED, CHECK_MTLS, {"tls": {"clientCaSecretName": "admin-ca"}})
    pod = the(manifests(values), "Deployment")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["KEYGATE_ADMIN_CLIENT_CA"] == "/etc/keygate/client-ca/ca.crt"
    assert env["KEYGATE_AUTHZ_CLIENT_CA"] == "/etc/keygate/authz-client-ca/ca.crt"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets["client-ca"] == "admin-ca" and secrets["authz-client-ca"] == "proxy-ca"


def test_no_check_client_ca_is_mounted_by_default(ha_docs: list[dict[str, Any]]) -> None:
    pod = the(ha_docs, "Deployment")["spec"]["template"]["spec"]
    assert "KEYGATE_AUTHZ_CLIENT_CA" not in env_of(pod["containers"][0])
    assert all(v["name"] != "authz-client-ca" for v in pod["volumes"])


GITHUB_SCANNING = {"rest": {"enabled": True},
                   "config": {"githubScanningKeysConfigMap": "github-keys", "githubScanningKeysKey": "meta.json"}}


# A file from a ConfigMap you keep: the values that name it, the variable
# that points keygate at it, the volume, the ConfigMap's key, and where it
# is mounted.
CONFIG_MAP_FILES = {
    "GitHub's scanning keys": (GITHUB_SCANNING, "KEYGATE_GITHUB_SCANNING_KEYS", "github-scanning",
                               "github-keys", "meta.json", "/etc/keygate/github-scanning", "keys.json"),
    "a webhook CA": ({"config": {"webhookCaConfigMap": "partner-ca", "webhookCaKey": "bundle.pem"}},
                     "KEYGATE_WEBHOOK_CA_FILE", "webhook-ca", "partner-ca", "bundle.pem",
                     "/etc/keygate/webhook-ca", "ca.crt"),
}


@pytest.mark.parametrize("case", CONFIG_MAP_FILES.values(), ids=CONFIG_MAP_FILES.keys())
def test_a_file_from_a_config_map_is_mounted_and_named(case: tuple[Any, ...]) -> None:
    values, env, volume_name, config_map, key, directory, path = case
    pod = the(manifests(merged(REQUIRED, values)), "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert env_of(c)[env] == f"{directory}/{path}"
    volume = next(v for v in pod["volumes"] if v["name"] == volume_name)
    assert volume["configMap"] == {"name": config_map, "items": [{"key": key, "path": path}]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume_name)
    assert mount == {"name": volume_name, "mountPath": directory, "readOnly": True}


@pytest.mark.parametrize("case", CONFIG_MAP_FILES.values(), ids=CONFIG_MAP_FILES.keys())
def test_no_file_from_a_config_map_is_mounted_by_default(
        default_docs: list[dict[str, Any]], case: tuple[Any, ...]) -> None:
    _, env, volume_name, *_ = case
    pod = the(default_docs, "Deployment")["spec"]["template"]["spec"]
    assert env not in env_of(pod["containers"][0])
    assert all(v["name"] != volume_name for v in pod["volumes"])


def test_scanning_keys_without_the_rest_listener_fail_to_render() -> None:
    values = merged(REQUIRED, {"config": {"githubScanningKeysConfigMap": "github-keys"}})
    assert "config.githubScanningKeysConfigMap needs rest.enabled" in render_error(values)


@pytest.mark.parametrize("key", ["clientCaSecretName", "authzClientCaSecretName"])
def test_a_client_ca_without_tls_is_refused_by_the_schema_for_lint_and_template(key: str) -> None:
    values = merged(REQUIRED, {"tls": {key: "some-ca"}})
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    assert SCHEMA_FAILURE in str(caught.value)
    assert "/tls/enabled" in str(caught.value)
    assert any(SCHEMA_FAILURE in e for e in lint_errors(values))


# --- migration Job ------------------------------------------------------------------


def hooks(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})}


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(default_docs: list[dict[str, Any]]) -> None:
    job = the(default_docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    assert int(annotations["helm.sh/hook-weight"]) == 0
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["keygate", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("value_set", ["default", "ha"])
def test_migration_job_mounts_the_secret_like_the_deployment(value_set: str) -> None:
    docs = manifests(REQUIRED if value_set == "default" else HA_VALUES)
    job_pod = the(docs, "Job")["spec"]["template"]["spec"]
    deploy_pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    (job_c,) = job_pod["containers"]
    env = env_of(job_c)
    assert env["KEYGATE_DATABASE_URL_FILE"] == env_of(deploy_pod["containers"][0])["KEYGATE_DATABASE_URL_FILE"]
    assert env["KEYGATE_ADMIN_TOKENS_FILE"] == env_of(deploy_pod["containers"][0])["KEYGATE_ADMIN_TOKENS_FILE"]
    mount = next(m for m in job_c["volumeMounts"] if m["mountPath"] == "/etc/keygate/secrets")
    assert mount["readOnly"] is True
    job_volume = next(v for v in job_pod["volumes"] if v["name"] == mount["name"])
    deploy_volume = next(v for v in deploy_pod["volumes"] if v["name"] == "secrets")
    assert job_volume["secret"]["items"] == deploy_volume["secret"]["items"]
    assert job_c["securityContext"] == deploy_pod["containers"][0]["securityContext"]
    assert job_pod["securityContext"] == deploy_pod["securityContext"]


def test_migration_job_reads_a_secret_that_exists_before_it_runs(default_docs: list[dict[str, Any]]) -> None:
    # Pre-install hooks run before the release's regular objects, so the Job
    # must read a Secret that is itself a hook with a lower weight.
    job = the(default_docs, "Job")
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets")
    secret = the(default_docs, "Secret", volume["secret"]["secretName"])
    annotations = secret["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert secret["data"] == the(default_docs, "Secret", FULLNAME)["data"]


def test_migration_job_uses_an_existing_secret_directly(ha_docs: list[dict[str, Any]]) -> None:
    assert [d for d in ha_docs if d["kind"] == "Secret"] == []
    volume = next(v for v in the(ha_docs, "Job")["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == "keygate-credentials"


def test_migration_job_runs_with_the_servers_settings(default_docs: list[dict[str, Any]]) -> None:
    (c,) = the(default_docs, "Job")["spec"]["template"]["spec"]["containers"]
    assert the(default_docs, "ConfigMap")["data"].items() <= env_of(c).items()


def test_migration_pod_is_not_behind_the_service(default_docs: list[dict[str, Any]]) -> None:
    pod_labels = the(default_docs, "Job")["spec"]["template"]["metadata"]["labels"]
    selector = the(default_docs, "Service", FULLNAME)["spec"]["selector"]
    assert not selector.items() <= pod_labels.items()
    deployment_labels = the(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= deployment_labels.items()


# --- Services and optional objects ------------------------------------------------------


def test_services_declare_grpc_app_protocol(ha_docs: list[dict[str, Any]]) -> None:
    services = [d for d in ha_docs if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {FULLNAME, f"{FULLNAME}-headless"}
    main = the(ha_docs, "Service", FULLNAME)
    protocols = {p["port"]: p["appProtocol"] for p in main["spec"]["ports"]}
    assert protocols == {50051: "grpc", 50052: "grpc", 9090: "http"}
    headless = the(ha_docs, "Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["appProtocol"] for p in headless["spec"]["ports"]] == ["grpc"]


def test_default_install_has_a_disruption_budget_and_no_optional_extras(default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Secret", "Service",
         "ServiceAccount"]
    )
    assert the(default_docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert the(default_docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_autoscaling_takes_over_the_replica_count(ha_docs: list[dict[str, Any]]) -> None:
    assert "replicas" not in the(ha_docs, "Deployment")["spec"]
    hpa = the(ha_docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)


def test_network_policy_opens_each_port_only_to_its_peers(ha_docs: list[dict[str, Any]]) -> None:
    policy = the(ha_docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {50051, 50052, 9090}
    assert by_port[50052] == HA_VALUES["networkPolicy"]["admin"]["from"]
    assert by_port[9090][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_network_policy_closes_a_port_with_no_peers() -> None:
    values = merged(REQUIRED, {"networkPolicy": {"admin": {"from": []}}})
    policy = the(manifests(values), "NetworkPolicy")
    assert 50052 not in {rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]}


def test_default_network_policy_admits_only_labelled_proxies_to_check(default_docs: list[dict[str, Any]]) -> None:
    policy = the(default_docs, "NetworkPolicy")
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert by_port[50051] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"keygate.io/ext-authz-client": "true"}}}
    ], "Check is not open to every pod"
    assert by_port[50052] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"keygate.io/admin-client": "true"}}}
    ]
    for peers in by_port.values():
        assert {} not in peers and {"namespaceSelector": {}} not in peers, "a port admits every pod"


def test_network_policy_has_no_rule_for_disabled_http_listeners(default_docs: list[dict[str, Any]]) -> None:
    ports = {rule["ports"][0]["port"] for rule in the(default_docs, "NetworkPolicy")["spec"]["ingress"]}
    assert ports == {50051, 50052, 9090}


def test_network_policy_admits_proxies_to_forward_auth_and_admin_clients_to_rest() -> None:
    values = merged(REQUIRED, FORWARD_AUTH, {"rest": {"enabled": True, "containerPort": 8088}})
    policy = the(manifests(values), "NetworkPolicy")
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {50051, 50052, 9090, 8088, 8181}
    assert by_port[8181] == by_port[50051] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"keygate.io/ext-authz-client": "true"}}}
    ]
    assert by_port[8088] == by_port[50052] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"keygate.io/admin-client": "true"}}}
    ]
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"][0]["protocol"] == "TCP"


def test_network_policy_peers_of_the_http_listeners_are_configurable() -> None:
    nginx = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    values = merged(REQUIRED, FORWARD_AUTH, {"rest": {"enabled": True}},
                    {"networkPolicy": {"forwardAuth": {"from": nginx}, "rest": {"from": []}}})
    policy = the(manifests(values), "NetworkPolicy")
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert by_port[8181] == nginx
    assert 8080 not in by_port, "an empty peer list closes the REST port"


# --- values.schema.json --------------------------------------------------------------------

BAD_VALUES = {
    "replicaCount=0": {"replicaCount": 0},
    "config.foreignBearer=maybe": {"config": {"foreignBearer": "maybe"}},
    "config.cacheTtl=10 minutes": {"config": {"cacheTtl": "10 minutes"}},
    "config.logFormat=xml": {"config": {"logFormat": "xml"}},
    "service.ports.authz=70000": {"service": {"ports": {"authz": 70000}}},
    "an unknown top-level key": {"replicas": 3},
    "an unknown config key": {"config": {"cacheTTL": "60s"}},
    "a malformed admin token": {"secrets": {"adminTokens": "ops:root:abc"}},
    "forwardAuth.containerPort=0": {"forwardAuth": {"containerPort": 0}},
    "forwardAuth.enabled=yes": {"forwardAuth": {"enabled": "yes"}},
    "an unknown forwardAuth key": {"forwardAuth": {"port": 8081}},
    "forwardAuth.pathPrefix without a leading slash": {"forwardAuth": {"pathPrefix": "ext-authz"}},
    "forwardAuth.pathPrefix with a trailing slash": {"forwardAuth": {"pathPrefix": "/ext-authz/"}},
    "forwardAuth.pathPrefix=/": {"forwardAuth": {"pathPrefix": "/"}},
    "forwardAuth.pathPrefix with a query": {"forwardAuth": {"pathPrefix": "/a?b"}},
    "forwardAuth.pathPrefix with a space": {"forwardAuth": {"pathPrefix": "/a b"}},
    "an unknown networkPolicy.forwardAuth key": {"networkPolicy": {"forwardAuth": {"peers": []}}},
    "tls.authzClientCaSecretName without tls.enabled": {"tls": {"authzClientCaSecretName": "proxy-ca"}},
    "an empty tls.authzClientCaKey": {"tls": {"enabled": True, "secretName": "t", "authzClientCaSecretName": "c",
                                               "authzClientCaKey": ""}},
}


@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_helm_template_rejects_values_the_schema_forbids(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(merged(REQUIRED, bad))
    assert SCHEMA_FAILURE in str(caught.value)


@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_helm_lint_rejects_values_the_schema_forbids(bad: dict[str, Any]) -> None:
    errors = lint_errors(merged(REQUIRED, bad))
    assert any(SCHEMA_FAILURE in e for e in errors), errors


def test_schema_is_valid_draft_07() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("value_set", ["default", "ha"])
def test_schema_accepts_the_shipped_values(value_set: str) -> None:
    values = merged(DEFAULT_VALUES, REQUIRED if value_set == "default" else HA_VALUES)
    jsonschema.Draft7Validator(SCHEMA).validate(values)


def test_schema_rejects_the_shipped_defaults_alone() -> None:
    """values.yaml leaves the database URL and admin tokens to the installer."""
    errors = {".".join(map(str, e.path)) for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(DEFAULT_VALUES)}
    assert errors == {"secrets.databaseUrl", "secrets.adminTokens"}


def _paths(values: Any, prefix: str = "") -> list[str]:
    if not isinstance(values, dict) or not values:
        return [prefix]
    out = []
    for key, value in values.items():
        out.extend(_paths(value, f"{prefix}.{key}" if prefix else key))
    return out


def _described(schema: dict[str, Any], path: list[str]) -> bool:
    node = schema
    for key in path:
        while "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def test_schema_describes_every_default_value() -> None:
    missing = [p for p in _paths(DEFAULT_VALUES) if not _described(SCHEMA, p.split("."))]
    assert missing == []


def test_schema_closes_the_top_level_and_the_main_objects() -> None:
    assert SCHEMA["additionalProperties"] is False
    for key in ("image", "config", "secrets", "tls", "rest", "forwardAuth", "service", "probes", "migration",
                "autoscaling", "podDisruptionBudget", "serviceMonitor", "networkPolicy", "serviceAccount"):
        assert SCHEMA["properties"][key]["additionalProperties"] is False, key


# --- NOTES -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes() -> str:
    return render(REQUIRED)["keygate/templates/NOTES.txt"]


def _yaml_blocks(text: str) -> list[Any]:
    """The NOTES' example snippets, parsed: blocks separated by prose lines."""
    blocks, current = [], []
    for line in text.splitlines():
        if line and not line.startswith((" ", "-", "#")) and ":" not in line.split(" ")[0]:
            if current:
                blocks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    blocks.append("\n".join(current))
    parsed = []
    for block in blocks:
        try:
            doc = yaml.safe_load(block)
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict):
            parsed.append(doc)
    return parsed


def test_notes_give_an_envoy_ext_authz_filter_for_this_release(notes: str) -> None:
    docs = _yaml_blocks(notes)
    filters = next(d["http_filters"] for d in docs if "http_filters" in d)
    ext_authz = filters[0]["typed_config"]
    assert ext_authz["@type"] == "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
    assert ext_authz["transport_api_version"] == "V3"
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "keygate"
    assert ext_authz["grpc_service"]["timeout"] == "0.2s"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert ext_authz["validate_mutations"] is True
    assert ext_authz["allowed_headers"]["patterns"] == [
        {"exact": "authorization"},
        {"exact": "x-api-key"},
        {"exact": "x-forwarded-for"},
    ]
    cluster = next(d["clusters"] for d in docs if "clusters" in d)[0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": f"{FULLNAME}.{NAMESPACE}.svc.cluster.local", "port_value": 50051}
    assert f"target_uri: {FULLNAME}.{NAMESPACE}.svc.cluster.local:50051" in notes


def test_notes_show_per_route_requirements(notes: str) -> None:
    routes = next(d["routes"] for d in _yaml_blocks(notes) if "routes" in d)
    per_route = routes[0]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_route["check_settings"]["context_extensions"] == {
        "keygate.abilities": "read:orders",
        "keygate.environment": "live",
    }


def test_notes_normalise_paths_for_envoy_and_istio(notes: str) -> None:
    docs = _yaml_blocks(notes)
    hcm = next(d for d in docs if "normalize_path" in d)
    assert hcm == {"normalize_path": True, "merge_slashes": True,
                   "path_with_escaped_slashes_action": "REJECT_REQUEST"}
    mesh = next(d["meshConfig"] for d in docs if "meshConfig" in d)
    assert mesh["pathNormalization"] == {"normalization": "MERGE_SLASHES"}


def test_notes_give_an_istio_provider_and_custom_policy_for_this_release(notes: str) -> None:
    docs = _yaml_blocks(notes)
    mesh = next(d["meshConfig"] for d in docs if "meshConfig" in d)
    (provider,) = mesh["extensionProviders"]
    assert provider["envoyExtAuthzGrpc"] == {
        "service": f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
        "port": 50051,
        "timeout": "0.2s",
        "failOpen": False,
        "statusOnError": "503",
    }
    policy = next(d for d in docs if d.get("kind") == "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]


def test_default_image_is_the_one_build_image_sh_tags() -> None:
    """The README's build instructions and the chart name the same image."""
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    repository = re.search(r"^REPOSITORY=(\S+)$", script, flags=re.M).group(1)
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "Cargo.toml").read_text(), flags=re.M).group(1)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert DEFAULT_VALUES["image"]["repository"] == repository
    assert chart["appVersion"] == version
    readme = (ROOT / "README.md").read_text()
    assert f"buildah push {repository}:{version}" in readme


def test_notes_omit_the_forward_auth_snippets_while_it_is_off(notes: str) -> None:
    assert "keygate-http" not in notes and "pathPrefix" not in notes
    assert "auth_request" not in notes
    assert "Forward-auth" not in notes


@pytest.fixture(scope="module")
def forward_auth_notes() -> str:
    return render(merged(REQUIRED, FORWARD_AUTH))["keygate/templates/NOTES.txt"]


def test_notes_give_an_istio_http_provider_for_the_forward_auth_listener(forward_auth_notes: str) -> None:
    meshes = [d["meshConfig"] for d in _yaml_blocks(forward_auth_notes) if "meshConfig" in d]
    providers = {p["name"]: p for mesh in meshes for p in mesh["extensionProviders"]}
    assert set(providers) == {"keygate", "keygate-http"}, "the gRPC provider is kept"
    assert providers["keygate"]["envoyExtAuthzGrpc"]["port"] == 50051
    http = providers["keygate-http"]["envoyExtAuthzHttp"]
    assert http == {
        "service": f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
        "port": 80,
        "pathPrefix": "/ext-authz",
        "timeout": "0.2s",
        "failOpen": False,
        "statusOnError": "503",
        "includeRequestHeadersInCheck": ["authorization", "x-api-key", "x-forwarded-for"],
        "headersToUpstreamOnAllow": ["x-keygate-*"],
        "headersToDownstreamOnAllow": ["x-ratelimit-*", "deprecation", "sunset"],
        "headersToDownstreamOnDeny": ["www-authenticate", "retry-after", "content-type"],
    }
    assert "keygate-http instead of keygate in the AuthorizationPolicy" in forward_auth_notes


def test_notes_give_an_nginx_auth_request_location_for_this_release(forward_auth_notes: str) -> None:
    assert "== NGINX (auth_request) ==" in forward_auth_notes
    assert f"proxy_pass http://{FULLNAME}.{NAMESPACE}.svc.cluster.local:80;" in forward_auth_notes
    assert "proxy_set_header X-Original-Method $request_method;" in forward_auth_notes
    assert "proxy_set_header X-Original-URI $request_uri;" in forward_auth_notes
    assert "auth_request /_keygate;" in forward_auth_notes


def test_notes_leave_out_the_istio_path_prefix_when_keygate_has_none() -> None:
    notes = render(merged(REQUIRED, {"forwardAuth": {"enabled": True}}))["keygate/templates/NOTES.txt"]
    meshes = [d["meshConfig"] for d in _yaml_blocks(notes) if "meshConfig" in d]
    http = next(p["envoyExtAuthzHttp"] for m in meshes for p in m["extensionProviders"] if "envoyExtAuthzHttp" in p)
    assert "pathPrefix" not in http
    assert http["port"] == 8081


def test_notes_warn_that_forward_auth_bypasses_the_check_client_certificate() -> None:
    values = merged(REQUIRED, FORWARD_AUTH, {"tls": {"enabled": True, "secretName": "keygate-tls",
                                                      "authzClientCaSecretName": "proxy-ca"}})
    notes = render(values)["keygate/templates/NOTES.txt"]
    assert "WARNING: Check requires client certificates" in notes
    assert "add common_tls_context.tls_certificates" in notes
    assert "WARNING: Check requires" not in render(merged(REQUIRED, CHECK_MTLS))["keygate/templates/NOTES.txt"]
