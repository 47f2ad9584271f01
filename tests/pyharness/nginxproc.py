"""Running the shipped forward-auth proxy examples on loopback ports,
unprivileged, each in its own test directory: examples/nginx/nginx.conf with
Debian's NGINX (its own prefix for pid and temp dirs) and
examples/caddy/Caddyfile with Debian's Caddy."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

from .paths import REPO_ROOT
from .procs import ManagedProcess, env_with, free_port, wait_until

NGINX_EXAMPLE = REPO_ROOT / "examples" / "nginx"
CADDY_EXAMPLE = REPO_ROOT / "examples" / "caddy" / "Caddyfile"


def nginx_bin() -> Path:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return Path(found)


def caddy_bin() -> Path:
    return Path(shutil.which("caddy") or "/usr/bin/caddy")


def _example_with_ports(text: str, example: str, replacements) -> str:
    for shipped, ours in replacements:
        assert shipped in text, f"{example} no longer has {shipped}"
        text = text.replace(shipped, ours)
    return text


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


class _ProxyServer:
    """A proxy child process listening on `self.port`."""

    port: int

    def _start(self, name: str, argv: list[str], workdir: Path, env, timeout: float) -> None:
        self.process = ManagedProcess(name, argv, env=env, log_path=workdir / f"{name}.log",
                                      cwd=workdir)
        try:
            wait_until(lambda: _listening(self.port), timeout=timeout,
                       proc=self.process, what=f"{name} on port {self.port}")
        except BaseException:
            self.process.stop()
            raise

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        return self.process.stop()


class NginxServer(_ProxyServer):
    """The shipped example with its three addresses replaced."""

    def __init__(self, workdir: Path, *, keygate_port: int, upstream_port: int,
                 name: str = "nginx", startup_timeout: float = 20.0):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        text = _example_with_ports(
            (NGINX_EXAMPLE / "nginx.conf").read_text(), "examples/nginx/nginx.conf",
            (("127.0.0.1:8081", f"127.0.0.1:{keygate_port}"),
             ("127.0.0.1:8000", f"127.0.0.1:{upstream_port}"),
             ("listen 127.0.0.1:8080", f"listen 127.0.0.1:{self.port}")))
        (workdir / "nginx.conf").write_text(text)
        shutil.copy(NGINX_EXAMPLE / "keygate_upstream_headers", workdir)
        argv = [str(nginx_bin()), "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                "-e", "stderr", "-g", "daemon off; master_process off;"]
        self._start(name, argv, workdir, None, startup_timeout)


class CaddyServer(_ProxyServer):
    """examples/caddy/Caddyfile with its three addresses replaced."""

    def __init__(self, workdir: Path, *, keygate_port: int, upstream_port: int,
                 name: str = "caddy", startup_timeout: float = 20.0):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        text = _example_with_ports(
            CADDY_EXAMPLE.read_text(), "examples/caddy/Caddyfile",
            (("127.0.0.1:8081", f"127.0.0.1:{keygate_port}"),
             ("127.0.0.1:8000", f"127.0.0.1:{upstream_port}"),
             ("http://127.0.0.1:8080", f"http://127.0.0.1:{self.port}")))
        config = workdir / "Caddyfile"
        config.write_text(text)
        # Caddy keeps state under XDG directories: the test's own.
        env = env_with({"HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"),
                        "XDG_CONFIG_HOME": str(workdir / "config")})
        argv = [str(caddy_bin()), "run", "--config", str(config), "--adapter", "caddyfile"]
        self._start(name, argv, workdir, env, startup_timeout)
