"""pytest fixtures shared by tests/py and tests/e2e (each conftest does
`from pyharness.fixtures import *`)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from . import procs
from .admin import AdminClient, generate_admin_stubs
from .authz import AuthzClient
from .keygateproc import KeygateServer
from .paths import keygate_bin as _keygate_bin_path

__all__ = ["keygate_bin", "admin_stubs", "keygate", "keygate_factory", "admin", "authz",
           "create_key", "check", "owner", "pytest_runtest_makereport"]


@pytest.fixture(scope="session")
def keygate_bin() -> Path:
    p = _keygate_bin_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(
            f"keygate binary not found at {p}: build it (cargo build) or set KEYGATE_BIN "
            f"to its path. These tests need a real keygate.", pytrace=False)
    return p


@pytest.fixture(scope="session")
def admin_stubs(tmp_path_factory):
    return generate_admin_stubs(tmp_path_factory.mktemp("admin-stubs"))


def _stop_checked(server: KeygateServer) -> None:
    code = server.stop()
    if code is None:
        pytest.fail(f"{server.process.name} did not exit within 15 s of SIGTERM.\n"
                    f"{server.log_tail()}", pytrace=False)
    if code != 0:
        pytest.fail(f"{server.process.name} exited with {code} after SIGTERM "
                    f"(want a graceful 0).\n{server.log_tail()}", pytrace=False)


@pytest.fixture(scope="session")
def keygate_factory(keygate_bin, tmp_path_factory):
    """Start extra keygate instances: keygate_factory(extra_env={...})."""
    started: list[KeygateServer] = []

    def start(extra_env=None, name="keygate-extra") -> KeygateServer:
        srv, err = None, None
        try:
            srv = KeygateServer(keygate_bin, tmp_path_factory.mktemp(name),
                                extra_env=extra_env, name=name)
        except (RuntimeError, TimeoutError) as e:
            err = str(e)
        if srv is None:
            pytest.fail(err, pytrace=False)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        _stop_checked(srv)


@pytest.fixture(scope="session")
def keygate(keygate_bin, tmp_path_factory):
    """One `keygate serve` for the session (SQLite in a temp dir)."""
    srv, err = None, None
    try:
        # Exports the `tier` and `plan` metadata as x-keygate-meta-* headers.
        srv = KeygateServer(keygate_bin, tmp_path_factory.mktemp("keygate"),
                            extra_env={"KEYGATE_METADATA_HEADERS": "tier,plan"})
    except (RuntimeError, TimeoutError) as e:
        err = str(e)
    if srv is None:
        pytest.fail(err, pytrace=False)
    yield srv
    _stop_checked(srv)


@pytest.fixture(scope="session")
def admin(keygate, admin_stubs):
    client = AdminClient(keygate.admin_addr, admin_stubs)
    yield client
    client.close()


@pytest.fixture(scope="session")
def authz(keygate):
    client = AuthzClient(keygate.authz_addr)
    yield client
    client.close()


@pytest.fixture(scope="session")
def create_key(admin):
    """create_key(owner_id, **fields) -> CreateKeyResponse (.key, .api_key)."""
    return admin.create_key


@pytest.fixture(scope="session")
def check(authz):
    """check(headers, path="/v1/orders", method="GET", context_extensions=None,
    header_map=False) -> CheckResult."""
    return authz.check


@pytest.fixture
def owner() -> str:
    """A fresh owner id per test, so tests never share keys or suspensions."""
    return f"owner-{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in list(procs.RUNNING):
            rep.sections.append((f"{p.name} log (tail)", p.log_tail(6000)))
