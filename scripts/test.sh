#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests against SQLite and a
# real PostgreSQL, the Python suites that drive the keygate binary through
# Envoy's generated stubs and a real Envoy, the container image (built with
# buildah and run from its own files), and the Helm chart tests.
#
# PostgreSQL: KEYGATE_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# If it is not reachable the script tries to start the local cluster, and
# fails loudly if that does not work: the Postgres tests are never skipped.
# Redis (127.0.0.1:6379) likewise: started with redis-server if not running.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

export KEYGATE_TEST_POSTGRES_URL="${KEYGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
if ! pg_ready; then
  echo "test.sh: PostgreSQL is not reachable on 127.0.0.1:5432; starting the local cluster" >&2
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  if ! pg_ready; then
    echo "test.sh: FATAL: PostgreSQL is still not reachable on 127.0.0.1:5432." >&2
    echo "test.sh: start it (pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start) or set KEYGATE_TEST_POSTGRES_URL." >&2
    exit 1
  fi
fi

# Redis: the shared rate-limit tests (tests/it/limits.rs) use the real one on
# 127.0.0.1:6379 and are never skipped either.
redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_ready; then
  echo "test.sh: Redis is not reachable on 127.0.0.1:6379; starting redis-server" >&2
  if ! command -v redis-server >/dev/null; then
    apt-get install -y redis-server >/dev/null 2>&1 || true
  fi
  if command -v redis-server >/dev/null; then
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes || true
  fi
  for _ in $(seq 1 30); do redis_ready && break; sleep 1; done
  if ! redis_ready; then
    echo "test.sh: FATAL: Redis is still not reachable on 127.0.0.1:6379." >&2
    echo "test.sh: install redis-server (apt-get install -y redis-server) and start it, or free port 6379." >&2
    exit 1
  fi
fi

# The virtualenvs and Debian packages the later suites need are fetched
# while cargo compiles: downloads and unpacking, not the cores cargo uses
# (on a fresh machine this took about a minute of the run).
setup_log="$(mktemp)"
{ scripts/setup-test-env.sh && scripts/test-chart.sh --setup; } >"$setup_log" 2>&1 &
setup_pid=$!
trap 'kill "$setup_pid" 2>/dev/null || true' EXIT

echo "== cargo test (SQLite and PostgreSQL)"
# --tests: unit tests of every library and binary that has any (test = true
# in its manifest), and the integration tests.
cargo test --locked --tests

if ! wait "$setup_pid"; then
  cat "$setup_log" >&2
  echo "test.sh: FATAL: preparing the Python, Envoy, NGINX and buildah test tools failed (above)." >&2
  exit 1
fi
trap - EXIT

echo "== Python suites: Envoy stubs and a real Envoy"
# cargo test above built target/debug/keygate (a separate `cargo build` would
# rebuild half the dependency tree: dev-dependencies change tokio's features),
# and the keygate-envoy module, which its integration tests leave in deps/.
test -x "$TARGET/debug/keygate" || { echo "test.sh: $TARGET/debug/keygate was not built" >&2; exit 1; }
test -f "$TARGET/debug/deps/libkeygate_envoy.so" \
  || { echo "test.sh: $TARGET/debug/deps/libkeygate_envoy.so was not built" >&2; exit 1; }
KEYGATE_BIN="$TARGET/debug/keygate" KEYGATE_ENVOY_MODULE_DIR="$TARGET/debug/deps" \
  scripts/test-py.sh

echo "== OCI image (FROM scratch, via buildah) and the keygate in it"
KEYGATE_BIN="$TARGET/debug/keygate" scripts/test-image.sh

echo "== Helm chart"
scripts/test-chart.sh
