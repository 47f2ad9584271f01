"""Running `keygate serve` as a child process on loopback ports."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from .health import is_serving
from .procs import ManagedProcess, free_ports, wait_until


class KeygateServer:
    """`keygate serve` with SQLite in `workdir`, JSON logs, no admin tokens
    (so the loopback admin listener is unauthenticated)."""

    def __init__(self, binary: Path, workdir: Path, *, extra_env: Mapping[str, str] | None = None,
                 name: str = "keygate", startup_timeout: float = 60.0,
                 command: Sequence[str] | None = None):
        """`command` replaces `[binary, "serve"]`, e.g. to run the binary
        inside a container image's root filesystem."""
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (self.authz_port, self.admin_port, self.metrics_port,
         self.forward_auth_port, self.http_port) = free_ports(5)
        self.authz_addr = f"127.0.0.1:{self.authz_port}"
        self.admin_addr = f"127.0.0.1:{self.admin_port}"
        self.metrics_addr = f"127.0.0.1:{self.metrics_port}"
        self.forward_auth_addr = f"127.0.0.1:{self.forward_auth_port}"
        self.http_addr = f"127.0.0.1:{self.http_port}"
        self.db_path = workdir / "kg.db"
        # A developer's own KEYGATE_* settings must not leak into the tests.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
        env.update({
            "KEYGATE_DATABASE_URL": f"sqlite://{self.db_path}",
            "KEYGATE_AUTHZ_ADDR": self.authz_addr,
            "KEYGATE_ADMIN_ADDR": self.admin_addr,
            "KEYGATE_METRICS_ADDR": self.metrics_addr,
            "KEYGATE_FORWARD_AUTH_ADDR": self.forward_auth_addr,
            "KEYGATE_HTTP_ADDR": self.http_addr,
            "KEYGATE_LOG_FORMAT": "json",
            # The suites test decisions, not the 100 ms miss bound: a loaded
            # CI machine must not turn a slow first read into UNAVAILABLE.
            "KEYGATE_CHECK_TIMEOUT": "5s",
        })
        env.update(extra_env or {})
        self.env = env
        # extra_env may name the addresses (a keygate started again where
        # an earlier one listened): wait on, and report, those.
        self.authz_addr, self.admin_addr = env["KEYGATE_AUTHZ_ADDR"], env["KEYGATE_ADMIN_ADDR"]
        self.metrics_addr, self.http_addr = env["KEYGATE_METRICS_ADDR"], env["KEYGATE_HTTP_ADDR"]
        self.forward_auth_addr = env["KEYGATE_FORWARD_AUTH_ADDR"]
        self.process = ManagedProcess(name, list(command or [str(binary), "serve"]), env=env,
                                      log_path=workdir / "keygate.log", cwd=workdir)
        try:
            wait_until(lambda: is_serving(self.authz_addr) and is_serving(self.admin_addr),
                       timeout=startup_timeout, proc=self.process,
                       what=f"{name} health SERVING on {self.authz_addr} and {self.admin_addr}")
        except BaseException:
            self.process.stop()
            raise

    def stop(self, timeout: float = 15.0) -> int | None:
        return self.process.stop(timeout)

    def log_tail(self) -> str:
        return self.process.log_tail()
