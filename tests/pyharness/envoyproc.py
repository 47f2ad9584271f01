"""Rendering tests/e2e/envoy.yaml.tmpl and running the real Envoy binary.

    python tests/pyharness/envoyproc.py --write-example   # regenerate examples/envoy/envoy.yaml
"""
from __future__ import annotations

import random
import string
import subprocess
import sys
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "pyharness"

from .paths import (ENVOY_EXAMPLE, ENVOY_HTTP_EXAMPLE, ENVOY_HTTP_TEMPLATE,  # noqa: E402
                    ENVOY_TEMPLATE, envoy_bin)
from .procs import ManagedProcess, env_with, free_ports, wait_until  # noqa: E402

EXAMPLE_VALUES = dict(
    LISTEN_ADDRESS="0.0.0.0", LISTEN_PORT=8080,
    ADMIN_ADDRESS="127.0.0.1", ADMIN_PORT=9901,
    KEYGATE_HOST="127.0.0.1", KEYGATE_PORT=50051,
    UPSTREAM_HOST="127.0.0.1", UPSTREAM_PORT=8000,
)

EXAMPLE_HEADER = """\
# Example Envoy configuration for keygate (checked with Envoy 1.40).
#
# Run keygate (`keygate serve`: Check on 0.0.0.0:50051), your API on
# 127.0.0.1:8000, then `envoy -c examples/envoy/envoy.yaml` and call
#   curl -H "Authorization: Bearer sk_live_…" http://127.0.0.1:8080/orders
# In Kubernetes, point the `keygate` cluster at the keygate Service instead.
#
# This file is rendered from tests/e2e/envoy.yaml.tmpl, which the end-to-end
# tests run with the real Envoy; keep them in sync with
#   .venv-stubs/bin/python tests/pyharness/envoyproc.py --write-example
"""


def render(template: str | None = None, **values) -> str:
    """Fill in the template; drop the template-only `#!` comment lines."""
    text = template if template is not None else ENVOY_TEMPLATE.read_text()
    lines = [ln for ln in text.splitlines(keepends=True) if not ln.startswith("#!")]
    return string.Template("".join(lines)).substitute(**values)


def render_example(template: Path = ENVOY_TEMPLATE) -> str:
    header = EXAMPLE_HEADER
    if template == ENVOY_HTTP_TEMPLATE:
        header = (header.replace("(ext_authz", "(HTTP ext_authz")
                  .replace("Check on 0.0.0.0:50051", "forward-auth on 0.0.0.0:8081 with\n# KEYGATE_FORWARD_AUTH_PATH_PREFIX=/ext-authz")
                  .replace("envoy.yaml.tmpl", "envoy-http.yaml.tmpl")
                  .replace("examples/envoy/envoy.yaml", "examples/envoy/envoy-http.yaml"))
    values = dict(EXAMPLE_VALUES)
    if template == ENVOY_HTTP_TEMPLATE:
        values["KEYGATE_PORT"] = 8081
    return header + render(template.read_text(), **values)


def validate(config_path: Path, binary: Path | None = None) -> subprocess.CompletedProcess:
    """`envoy --mode validate`: parses the config and instantiates everything
    without opening listeners or connecting anywhere."""
    binary = binary or envoy_bin()
    return subprocess.run([str(binary), "--mode", "validate", "-c", str(config_path),
                           "-l", "warning"],
                          capture_output=True, text=True, timeout=60)


class EnvoyServer:
    """Envoy on loopback: listener -> ext_authz(keygate_port) -> upstream_port."""

    def __init__(self, workdir: Path, *, keygate_port: int, upstream_port: int,
                 binary: Path | None = None, name: str = "envoy",
                 startup_timeout: float = 30.0, template: Path = ENVOY_TEMPLATE,
                 extra_env: dict[str, str] | None = None,
                 extra_values: dict[str, object] | None = None):
        """extra_env: added to Envoy's environment; extra_values: more
        template placeholders (templates other than the default one)."""
        self.binary = binary or envoy_bin()
        workdir.mkdir(parents=True, exist_ok=True)
        self.listen_port, self.admin_port = free_ports(2)
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(render(
            template.read_text(),
            LISTEN_ADDRESS="127.0.0.1", LISTEN_PORT=self.listen_port,
            ADMIN_ADDRESS="127.0.0.1", ADMIN_PORT=self.admin_port,
            KEYGATE_HOST="127.0.0.1", KEYGATE_PORT=keygate_port,
            UPSTREAM_HOST="127.0.0.1", UPSTREAM_PORT=upstream_port,
            **(extra_values or {})))
        # A random --base-id keeps concurrent Envoys (other test runs, a
        # developer's own) from colliding on hot-restart shared memory.
        self.base_id = random.randint(1, 2 ** 28)
        argv = [str(self.binary), "-c", str(self.config_path),
                "--base-id", str(self.base_id),
                "-l", "warning", "--concurrency", "1"]
        self.process = ManagedProcess(name, argv,
                                      env=env_with(extra_env) if extra_env else None,
                                      log_path=workdir / "envoy.log", cwd=workdir)
        try:
            wait_until(self._ready, timeout=startup_timeout, proc=self.process,
                       what=f"{name} /ready on admin port {self.admin_port}")
        except BaseException:
            self.process.stop()
            raise

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready",
                                    timeout=1) as r:
            return r.status == 200

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def stats(self, prefix: str = "") -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter={prefix}",
                                    timeout=2) as r:
            out = {}
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(": ")
                if v.strip().isdigit():
                    out[k] = int(v)
            return out

    def stop(self, timeout: float = 10.0) -> int | None:
        try:
            return self.process.stop(timeout)
        finally:
            # Envoy leaves its hot-restart segment (/dev/shm/envoy_shared_memory_
            # <base_id * 10 + epoch>) behind on exit.
            shm = Path(f"/dev/shm/envoy_shared_memory_{self.base_id * 10}")
            shm.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-example"]:
        ENVOY_EXAMPLE.parent.mkdir(parents=True, exist_ok=True)
        ENVOY_EXAMPLE.write_text(render_example())
        ENVOY_HTTP_EXAMPLE.write_text(render_example(ENVOY_HTTP_TEMPLATE))
        print(f"wrote {ENVOY_EXAMPLE} and {ENVOY_HTTP_EXAMPLE}")
    else:
        sys.exit(__doc__)
