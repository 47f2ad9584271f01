"""examples/local/run.sh, as the README tells a new user to run it: keygate,
the example Envoy configuration and the tiny upstream (with --smoke on free
ports, written into a copy of the Envoy file); a fresh key gets 200 through
Envoy and 401 once revoked."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pyharness import grpcurl
from pyharness.paths import envoy_bin

ROOT = Path(__file__).resolve().parents[2]


def test_the_local_example_lets_a_key_through_envoy_until_it_is_revoked(keygate_bin) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update(KEYGATE_BIN=str(keygate_bin), ENVOY_BIN=str(envoy_bin()), GRPCURL=grpcurl.grpcurl_bin())
    run = subprocess.run([str(ROOT / "examples/local/run.sh"), "--smoke"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "200 with the key, 401 once revoked" in run.stdout
