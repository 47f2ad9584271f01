"""How long RevokeKey takes on a keygate while something else loads it.

Creates N superkeys through KeyAdmin, waits DELAY seconds (time for the
other load to start), then revokes them one by one, 50 ms apart, and prints
the RevokeKey round-trip percentiles. Used in BENCHMARKS.md to measure what
the SQLite writer's lower priority costs KeyAdmin writes under Check load.

    .venv-stubs/bin/python scripts/bench-revoke-latency.py 127.0.0.1:50052 100 6

(`.venv-stubs` is made by scripts/test-py.sh; it has grpcio and grpcio-tools.)
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pyharness.admin import generate_admin_stubs  # noqa: E402

import grpc  # noqa: E402


def main(admin_addr: str, keys: int, delay: float) -> None:
    stubs = generate_admin_stubs(Path(tempfile.mkdtemp(prefix="keygate-stubs-")))
    admin = stubs.grpc.KeyAdminStub(grpc.insecure_channel(admin_addr))
    created = []
    for i in range(keys):
        response = admin.CreateKey(stubs.pb2.CreateKeyRequest(
            owner_id=f"revoke-bench-{i % 10}", name=f"k{i}", environment="live", superkey=True))
        created.append((response.api_key.owner_id, response.api_key.id))
    time.sleep(delay)
    latencies = []
    for owner_id, key_id in created:
        started = time.perf_counter()
        admin.RevokeKey(stubs.pb2.RevokeKeyRequest(owner_id=owner_id, id=key_id, reason="bench"))
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    latencies.sort()
    print(f"revokes {len(latencies)} p50 {statistics.median(latencies):.1f} ms "
          f"p90 {latencies[int(len(latencies) * 0.9) - 1]:.1f} ms max {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100,
         float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
