#!/usr/bin/env bash
# Revoke propagation between two replicas: two `keygate serve` processes on
# one fresh Postgres database (keygate_bench), keys created and revoked on A,
# polled on B every 1 ms until denied. Prints keygate-bench's JSON on stdout.
#
# Usage: scripts/bench-propagation.sh [extra keygate-bench propagation flags]
# Env:   BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432),
#        BENCH_NO_BUILD, BENCH_SERVER_CPU, BENCH_CLIENT_CPU as for bench.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

DB=keygate_bench
BENCH_WORK="${BENCH_WORK:-}"
OWN_WORK=""
if [[ -z "$BENCH_WORK" ]]; then BENCH_WORK="$(mktemp -d)"; OWN_WORK="$BENCH_WORK"; fi
trap 'bench_cleanup; psql_admin "DROP DATABASE IF EXISTS $DB" || true; [[ -n "$OWN_WORK" ]] && rm -rf "$OWN_WORK"' EXIT

[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

psql_admin "DROP DATABASE IF EXISTS $DB"
psql_admin "CREATE DATABASE $DB"
URL="$PG_BASE/$DB"

log "replica A"
start_keygate prop-a 52051 52052 52090 KEYGATE_DATABASE_URL="$URL"
A_PID=$KG_PID
log "replica B"
start_keygate prop-b 53051 53052 53090 KEYGATE_DATABASE_URL="$URL"

log "propagation: 200 keys, revoke on A, poll Check on B every 1 ms"
taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" propagation \
  --a-admin 127.0.0.1:52052 --b-authz 127.0.0.1:53051 --keys 200 --poll 1ms --json "$@"
stop_pid "$KG_PID"
stop_pid "$A_PID"
