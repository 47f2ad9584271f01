"""keygate inside Envoy: the real Envoy 1.40 loads libkeygate_envoy.so (the
keygate-envoy crate, built by `cargo test`) as a dynamic-module HTTP filter.

Nothing here skips: if Envoy cannot load the module, it refuses the config,
the Envoy fixture fails to start and every test fails with Envoy's log."""
from __future__ import annotations

import os
import subprocess

import pytest

from pyharness import envoyproc
from pyharness.envoyproc import EnvoyServer
from pyharness.httpc import http_request
from pyharness.paths import ENVOY_MODULE_TEMPLATE, envoy_module_dir

MODULE_FILE = "libkeygate_envoy.so"


@pytest.fixture(scope="module")
def module_dir():
    d = envoy_module_dir()
    if not (d / MODULE_FILE).is_file():
        pytest.fail(f"{d / MODULE_FILE} is missing: build the keygate-envoy crate "
                    f"(cargo build -p keygate-envoy) or set KEYGATE_ENVOY_MODULE_DIR",
                    pytrace=False)
    return d


def start_envoy(binary, workdir, upstream_port, module_dir, name="envoy-module"):
    try:
        return EnvoyServer(workdir, keygate_port=0, upstream_port=upstream_port,
                           binary=binary, name=name, template=ENVOY_MODULE_TEMPLATE,
                           extra_env={"ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module_dir)})
    except (RuntimeError, TimeoutError) as e:
        pytest.fail(f"Envoy did not start with the keygate module: {e}", pytrace=False)


@pytest.fixture(scope="module")
def envoy_module(envoy_binary, echo_upstream, module_dir, tmp_path_factory):
    env = start_envoy(envoy_binary, tmp_path_factory.mktemp("envoy-module"),
                      echo_upstream.port, module_dir)
    yield env
    env.stop()


def test_envoy_loads_the_module_and_denies_a_request_without_a_key(envoy_module):
    r = http_request(envoy_module.base_url, "/orders")
    assert r.status == 401, r
    assert r.headers["content-type"] == "application/json", r
    assert r.json()["error"]["code"] == "missing_credentials", r


def test_a_request_with_a_credential_reaches_the_upstream(envoy_module):
    r = http_request(envoy_module.base_url, "/orders",
                     {"authorization": "Bearer anything"})
    assert r.status == 200, r
    assert r.upstream["path"] == "/orders", r


def test_envoy_refuses_the_config_when_the_module_is_not_found(envoy_binary, echo_upstream,
                                                               tmp_path):
    """The failure mode the fixtures rely on: no module, no Envoy."""
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(envoyproc.render(
        ENVOY_MODULE_TEMPLATE.read_text(), LISTEN_ADDRESS="127.0.0.1", LISTEN_PORT=18081,
        ADMIN_ADDRESS="127.0.0.1", ADMIN_PORT=19902, UPSTREAM_HOST="127.0.0.1",
        UPSTREAM_PORT=echo_upstream.port))
    empty = tmp_path / "no-module-here"
    empty.mkdir()
    r = subprocess.run([str(envoy_binary), "--mode", "validate", "-c", str(cfg), "-l", "warning"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(empty)})
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Failed to load dynamic module" in r.stdout + r.stderr, r.stdout + r.stderr
