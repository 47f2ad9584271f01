"""Ports, subprocesses and waiting."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

# Every process started through ManagedProcess, so that a failing test can
# show their logs (see fixtures.pytest_runtest_makereport).
RUNNING: list["ManagedProcess"] = []


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports (all sockets held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def eventually(fn: Callable[[], T], *, timeout: float = 3.0, interval: float = 0.05,
               desc: str = "condition") -> T:
    """Call fn until it returns without AssertionError; re-raise the last one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


class ManagedProcess:
    """A child process whose stdout+stderr go to a log file."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None,
                 log_path: Path, cwd: Path | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, env=dict(env) if env is not None else None, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.exit_code: int | None = None
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, max_bytes: int = 8000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as e:
            return f"<no log: {e}>"
        if not data:
            return "<log empty>"
        if len(data) > max_bytes:
            data = b"...\n" + data[-max_bytes:]
        return data.decode("utf-8", "replace")

    def describe_exit(self) -> str:
        return (f"{self.name} (pid {self.pid}) exited with {self.proc.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code,
        or None if it had to be killed."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                    self.exit_code = None
                    return None
            self.exit_code = self.proc.returncode
            return self.exit_code
        finally:
            self._log.close()
            if self in RUNNING:
                RUNNING.remove(self)


def wait_until(pred: Callable[[], bool], *, timeout: float, what: str,
               proc: ManagedProcess | None = None, interval: float = 0.05) -> None:
    """Poll pred until true; fail with the process log if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: process died before it was ready.\n"
                               + proc.describe_exit())
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if time.monotonic() >= deadline:
            tail = ("\n" + proc.describe_exit()) if proc is not None else ""
            raise TimeoutError(f"{what}: not ready after {timeout}s{tail}")
        time.sleep(interval)


def env_with(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
