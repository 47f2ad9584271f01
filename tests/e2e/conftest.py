"""End-to-end through the real Envoy binary (ENVOY_BIN, default
.venv-envoy/bin/envoy-bin from scripts/setup-test-env.sh).

Shared keygate fixtures come from tests/pyharness/fixtures.py; this file adds
the echo upstream, the noop ext_authz baseline, and Envoy instances wired to
either of them or to keygate."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from pyharness.fixtures import *  # noqa: E402,F401,F403
from pyharness.envoyproc import EnvoyServer  # noqa: E402
from pyharness.httpc import http_request  # noqa: E402
from pyharness.paths import envoy_bin as _envoy_bin_path  # noqa: E402
from pyharness.procs import free_port  # noqa: E402

from echo_upstream import EchoUpstream  # noqa: E402
from noop_authz import NoopAuthzServer, allow  # noqa: E402


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    p = _envoy_bin_path()
    if not (p.exists() and os.access(p, os.X_OK)):
        pytest.fail(f"Envoy binary not found at {p}: run scripts/setup-test-env.sh or set "
                    f"ENVOY_BIN", pytrace=False)
    return p


@pytest.fixture(scope="session")
def echo_upstream():
    srv = EchoUpstream()
    yield srv
    srv.stop()


def _start_envoy(binary, workdir, keygate_port, upstream_port, name):
    srv, err = None, None
    try:
        srv = EnvoyServer(workdir, keygate_port=keygate_port, upstream_port=upstream_port,
                          binary=binary, name=name)
    except (RuntimeError, TimeoutError) as e:
        err = str(e)
    if srv is None:
        pytest.fail(err, pytrace=False)
    return srv


@pytest.fixture(scope="session")
def noop_authz():
    srv = NoopAuthzServer()
    yield srv
    srv.stop()


@pytest.fixture
def noop(noop_authz):
    """The session's noop authz, cleared, with its default responder restored after."""
    noop_authz.servicer.clear()
    noop_authz.servicer.responder = allow
    yield noop_authz
    noop_authz.servicer.responder = allow


@pytest.fixture(scope="session")
def envoy_noop(envoy_binary, noop_authz, echo_upstream, tmp_path_factory):
    """Envoy -> noop ext_authz -> echo upstream (no keygate needed)."""
    env = _start_envoy(envoy_binary, tmp_path_factory.mktemp("envoy-noop"), noop_authz.port,
                       echo_upstream.port, "envoy-noop")
    yield env
    env.stop()


@pytest.fixture(scope="session")
def envoy_keygate(envoy_binary, keygate, echo_upstream, tmp_path_factory):
    """Envoy -> keygate -> echo upstream."""
    env = _start_envoy(envoy_binary, tmp_path_factory.mktemp("envoy-keygate"),
                       keygate.authz_port, echo_upstream.port, "envoy-keygate")
    yield env
    env.stop()


@pytest.fixture(scope="session")
def envoy_factory(envoy_binary, echo_upstream, tmp_path_factory):
    """Start an Envoy in front of another keygate: envoy_factory(keygate_server, name)."""
    started = []

    def start(keygate_server, name="envoy-extra"):
        env = _start_envoy(envoy_binary, tmp_path_factory.mktemp(name), keygate_server.authz_port,
                           echo_upstream.port, name)
        started.append(env)
        return env

    yield start
    for env in started:
        env.stop()


@pytest.fixture
def get(envoy_keygate):
    """get(path, headers=None, method="GET") through Envoy -> keygate."""
    def _get(path, headers=None, method="GET"):
        return http_request(envoy_keygate.base_url, path, headers, method=method)
    return _get


@pytest.fixture
def envoy_dead_authz(envoy_binary, echo_upstream, tmp_path_factory):
    """Envoy whose ext_authz cluster points at a port nobody listens on."""
    env = _start_envoy(envoy_binary, tmp_path_factory.mktemp("envoy-dead"), free_port(),
                       echo_upstream.port, "envoy-dead-authz")
    yield env
    env.stop()
