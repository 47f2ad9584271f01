#!/usr/bin/env bash
# Forward-auth cache-hit throughput against a no-op HTTP server on the same
# stack (keygate-bench noop-http-server: hyper-util HTTP/1.1, same accept
# path), same load generator, same run, interleaved rounds:
#   forward-auth   keygate's forward-auth listener (SQLite, usage on), valid keys
#   noop-http      an empty 200 for every request
# Both servers share BENCH_SERVER_CPU; the load generator runs on
# BENCH_CLIENT_CPU. Set BENCH_RATE above what the servers sustain to
# measure throughput (achieved req/s). Prints keygate-bench's JSON on stdout.
#
# Usage: scripts/bench-forward-auth.sh [extra keygate-bench http flags]
# Env:   BENCH_RATE (default 20000), BENCH_FA_DURATION (per round, default
#        10s), BENCH_FA_ROUNDS (default 3), BENCH_NO_BUILD, BENCH_BIN,
#        BENCH_SERVER_CPU, BENCH_CLIENT_CPU as for bench.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

RATE="${BENCH_RATE:-20000}"
DURATION="${BENCH_FA_DURATION:-10s}"
ROUNDS="${BENCH_FA_ROUNDS:-3}"
BENCH_WORK="${BENCH_WORK:-}"
OWN_WORK=""
if [[ -z "$BENCH_WORK" ]]; then BENCH_WORK="$(mktemp -d)"; OWN_WORK="$BENCH_WORK"; fi
trap 'bench_cleanup; [[ -n "$OWN_WORK" ]] && rm -rf "$OWN_WORK"' EXIT

[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

KG_AUTHZ=55051 KG_ADMIN=55052 KG_METRICS=55090 KG_FA=55081 NOOP=55082

start_keygate forward-auth "$KG_AUTHZ" "$KG_ADMIN" "$KG_METRICS" \
  KEYGATE_FORWARD_AUTH_ADDR="127.0.0.1:$KG_FA"
wait_port "$KG_FA"
KG_SERVER_PID="$KG_PID"
taskset -c "$SERVER_CPU" "$BIN/keygate-bench" noop-http-server --listen "127.0.0.1:$NOOP" \
  >"$BENCH_WORK/noop-http.log" 2>&1 &
BENCH_PIDS+=("$!")
wait_port "$NOOP"
# Sanity: forward-auth must deny a request without a key.
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$KG_FA/v1/orders/42")"
[[ "$code" == 401 ]] || { log "expected 401 without a key from forward-auth, got $code"; exit 1; }

note_load forward-auth "$BENCH_WORK/load.txt"
log "forward-auth: $RATE req/s offered, $ROUNDS rounds of $DURATION per scenario"
taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" http \
  --admin "127.0.0.1:$KG_ADMIN" --rate "$RATE" --duration "$DURATION" --rounds "$ROUNDS" \
  --warmup 1s --server-pid "$KG_SERVER_PID" \
  --scenario "forward-auth=http://127.0.0.1:$KG_FA/v1/orders/42" \
  --scenario "noop-http=http://127.0.0.1:$NOOP/v1/orders/42" \
  --json "$@"
