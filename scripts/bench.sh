#!/usr/bin/env bash
# The measurements behind BENCHMARKS.md, re-runnable.
#
# Usage: scripts/bench.sh [SECTION...]
#   instructions instructions per cache-hit Check under callgrind, and h2load
#                throughput: no-op, usage off, usage on (SQLite, PostgreSQL)
#                (scripts/bench-instructions.sh)
#   check_cost   heap allocations per cache-hit Check and the decision path
#                with 100k keys (Zipf) and 1M keys (uniform) cached
#   check        keygate vs the no-op baseline, full speed and at half of it,
#                valid=100 and the 90/5/5 mix
#   usage        full speed with KEYGATE_USAGE_ENABLED=false vs =true (SQLite)
#   usage_pg     the same on a fresh PostgreSQL database per run
#   latency      fixed rate at half of usage=false's maximum (from `usage`,
#                in 1 ms bursts)
#                and at 1,000 req/s, usage off and on, each against the
#                no-op baseline too
#   admin        KeyAdmin (gRPC) against the REST API: create and get,
#                full speed, on SQLite and on a fresh PostgreSQL database
#   criterion    the in-process decision path (cargo bench)
#   flush        usage events/s into PostgreSQL (database keygate_bench_usage)
#   propagation  revoke on one replica → denied on another (Postgres)
#   envoy        1,000 req/s through a real Envoy: alone / + keygate / + no-op
#   limits       Check at full speed, valid=100, every key limited: no limit vs
#                local limits vs Redis limits (127.0.0.1:6379) with the default
#                5 ms timeout vs Redis with a 1 s timeout (every decision made
#                by Redis), two rounds alternating (not in the default set:
#                it needs Redis)
# Default: all of them, in that order.
#
# Env: BENCH_DURATION (measured seconds per run, default 10s),
#      BENCH_OUT (results folder, default target/bench-results/<time>),
#      BENCH_NO_BUILD=1 (use the binaries already in target/release),
#      BENCH_SERVER_CPU / BENCH_CLIENT_CPU (default 0 / 1),
#      BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432).
#
# Servers run pinned to BENCH_SERVER_CPU, the load generator to
# BENCH_CLIENT_CPU. Each run's load average and top are appended to
# $BENCH_OUT/load.txt; a warning is printed when cargo/rustc is running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

DURATION="${BENCH_DURATION:-10s}"
BENCH_OUT="${BENCH_OUT:-$BENCH_ROOT/target/bench-results/$(date +%Y%m%d-%H%M%S)}"
BENCH_WORK="$(mktemp -d)"
mkdir -p "$BENCH_OUT"
export BENCH_OUT BENCH_WORK
trap 'bench_cleanup; rm -rf "$BENCH_WORK"' EXIT

AUTHZ=51051 ADMIN=51052 METRICS=51090 HTTP=51080
SECTIONS=("$@")
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(instructions check_cost check usage usage_pg latency admin criterion flush propagation envoy)

if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
  log "building release binaries"
  cargo build --release --bins
fi
{
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  echo "kernel: $(uname -r)"
  free -h | head -2
} >"$BENCH_OUT/machine.txt"

bench() { taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" "$@"; }

section_instructions() {
  BENCH_NO_BUILD=1 "$BENCH_ROOT/scripts/bench-instructions.sh" instructions throughput
}

section_check_cost() {
  note_load "check_cost" "$BENCH_OUT/load.txt"
  log "check_cost: allocations per Check, decision path (Zipf 100k, uniform 1M)"
  taskset -c "$SERVER_CPU" "$BIN/keygate-check-cost" | tee "$BENCH_OUT/check-cost.txt"
}

section_check() {
  start_keygate check "$AUTHZ" "$ADMIN" "$METRICS"
  local mix name out rate
  for mix in valid=100 valid=90,unknown=5,malformed=5; do
    name="check-${mix//[=,]/-}"
    note_load "$name full speed" "$BENCH_OUT/load.txt"
    log "$name: full speed, baseline then keygate"
    bench check --target "127.0.0.1:$AUTHZ" --admin "127.0.0.1:$ADMIN" \
      --mix "$mix" --baseline --baseline-cpu "$SERVER_CPU" --server-pid "$KG_PID" \
      --duration "$DURATION" --json >"$BENCH_OUT/$name-full.json"
    rate="$(json "$BENCH_OUT/$name-full.json" 'round(d["target"]["rps"] / 2)')"
    note_load "$name at $rate req/s" "$BENCH_OUT/load.txt"
    log "$name: open loop at $rate req/s (half of keygate's maximum)"
    bench check --target "127.0.0.1:$AUTHZ" --admin "127.0.0.1:$ADMIN" \
      --mix "$mix" --rate "$rate" --pacer burst --baseline --baseline-cpu "$SERVER_CPU" \
      --server-pid "$KG_PID" --duration "$DURATION" --json >"$BENCH_OUT/$name-half.json"
  done
  echo "usage dropped: $(metric "$METRICS" keygate_usage_dropped_total), flushed: $(metric "$METRICS" keygate_usage_flushed_total)" \
    >"$BENCH_OUT/check-usage-metrics.txt"
  echo "check keygate_check_duration_seconds $(check_duration_buckets "$METRICS")" \
    >"$BENCH_OUT/check-server-side.txt"
  stop_pid "$KG_PID"
}

# usage_rounds PREFIX STORE: full speed with usage off and on, two rounds,
# alternating, so that drift in the machine's state does not land on one
# side only. STORE is sqlite (the embedded default) or postgres (a fresh
# database per run, Postgres itself unpinned).
usage_rounds() {
  local prefix="$1" store="$2" round usage name extra db=keygate_bench_check
  for round in 1 2; do
    for usage in false true; do
      name="$prefix-$usage-$round"
      extra=()
      if [[ "$store" == postgres ]]; then
        psql_admin "DROP DATABASE IF EXISTS $db"
        psql_admin "CREATE DATABASE $db"
        extra=(KEYGATE_DATABASE_URL="$PG_BASE/$db")
      fi
      start_keygate "$name" "$AUTHZ" "$ADMIN" "$METRICS" KEYGATE_USAGE_ENABLED="$usage" "${extra[@]}"
      note_load "$name" "$BENCH_OUT/load.txt"
      log "$name: full speed, valid=100, $store"
      # The first usage-off run also measures the no-op baseline, for
      # keygate's own ratio without usage.
      extra=()
      [[ "$name" == "$prefix-false-1" ]] && extra=(--baseline --baseline-cpu "$SERVER_CPU")
      bench check --target "127.0.0.1:$AUTHZ" --admin "127.0.0.1:$ADMIN" \
        --mix valid=100 --server-pid "$KG_PID" --name "usage=$usage" "${extra[@]}" \
        --duration "$DURATION" --json >"$BENCH_OUT/$name.json"
      echo "$name dropped: $(metric "$METRICS" keygate_usage_dropped_total), flushed: $(metric "$METRICS" keygate_usage_flushed_total)" \
        >>"$BENCH_OUT/usage-metrics.txt"
      stop_pid "$KG_PID"
    done
  done
  [[ "$store" != postgres ]] || psql_admin "DROP DATABASE IF EXISTS $db"
}

section_usage() { usage_rounds usage sqlite; }
section_usage_pg() { usage_rounds usage-pg postgres; }

section_latency() {
  local usage name rate pacer half=6000
  if [[ -f "$BENCH_OUT/usage-false-1.json" ]]; then
    half="$(json "$BENCH_OUT/usage-false-1.json" 'round(d["target"]["rps"] / 2)')"
  fi
  for usage in false true; do
    start_keygate "latency-$usage" "$AUTHZ" "$ADMIN" "$METRICS" KEYGATE_USAGE_ENABLED="$usage"
    for rate in "$half" 1000; do
      name="latency-usage-$usage-$rate"
      # Half the maximum is beyond what one core can pace request by
      # request; it arrives in 1 ms bursts instead (load.rs, Pacer::Burst).
      pacer=thread
      [[ "$rate" == 1000 ]] || pacer=burst
      note_load "$name" "$BENCH_OUT/load.txt"
      log "$name: open loop at $rate req/s ($pacer pacer), 90/5/5 mix, baseline then keygate"
      bench check --target "127.0.0.1:$AUTHZ" --admin "127.0.0.1:$ADMIN" \
        --rate "$rate" --pacer "$pacer" --baseline --baseline-cpu "$SERVER_CPU" --server-pid "$KG_PID" \
        --name "usage=$usage" --duration "$DURATION" --json >"$BENCH_OUT/$name.json"
    done
    echo "latency-usage-$usage keygate_check_duration_seconds $(check_duration_buckets "$METRICS")" \
      >>"$BENCH_OUT/latency-server-side.txt"
    stop_pid "$KG_PID"
  done
}

section_admin() {
  local store db=keygate_bench_admin extra
  # Both transports authenticate with the same admin token.
  local ADMIN_TOKEN KEYGATE_ADMIN_TOKENS
  eval "$("$BIN/keygate" admin-token --name bench --role admin --format env)"
  for store in sqlite postgres; do
    extra=()
    if [[ "$store" == postgres ]]; then
      psql_admin "DROP DATABASE IF EXISTS $db"
      psql_admin "CREATE DATABASE $db"
      extra=(KEYGATE_DATABASE_URL="$PG_BASE/$db")
    fi
    start_keygate "admin-$store" "$AUTHZ" "$ADMIN" "$METRICS" \
      KEYGATE_HTTP_ADDR="127.0.0.1:$HTTP" KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS" "${extra[@]}"
    wait_port "$HTTP"
    note_load "admin-$store" "$BENCH_OUT/load.txt"
    log "admin-$store: CreateKey / GetKey over gRPC and REST, full speed, $store"
    KEYGATE_BENCH_ADMIN_TOKEN="$ADMIN_TOKEN" bench admin --grpc "127.0.0.1:$ADMIN" \
      --rest "127.0.0.1:$HTTP" --server-pid "$KG_PID" --duration "$DURATION" --json \
      >"$BENCH_OUT/admin-$store.json"
    stop_pid "$KG_PID"
  done
  psql_admin "DROP DATABASE IF EXISTS $db"
}

section_criterion() {
  note_load "criterion" "$BENCH_OUT/load.txt"
  log "criterion: decision path with 1,000,000 cached keys"
  taskset -c "$SERVER_CPU" cargo bench -p keygate-bench --bench decision_path -- --noplot \
    2>&1 | tee "$BENCH_OUT/criterion.txt"
  local d
  for d in allowed_cache_hit denied_revoked_cache_hit denied_malformed; do
    echo "$d median_ns $(json "target/criterion/decide/$d/new/estimates.json" 'round(d["median"]["point_estimate"], 1)')"
  done | tee "$BENCH_OUT/criterion-medians.txt"
}

section_flush() {
  # Two shapes of traffic: every event a different (key, endpoint) among
  # 1000 keys x 10 endpoints (the daily-count upsert touches 5000 rows per
  # batch: worst case), and 100 active keys x 3 endpoints (300 rows).
  local db=keygate_bench_usage shape keys endpoints
  for shape in 1000x10 100x3; do
    keys="${shape%x*}" endpoints="${shape#*x}"
    psql_admin "DROP DATABASE IF EXISTS $db"
    psql_admin "CREATE DATABASE $db"
    note_load "usage-flush $shape" "$BENCH_OUT/load.txt"
    log "usage-flush into Postgres ($db), $keys keys x $endpoints endpoints, batches of 5000, log on"
    bench usage-flush --database-url "$PG_BASE/$db" --keys "$keys" --endpoints "$endpoints" \
      --duration 20s --json >"$BENCH_OUT/usage-flush-$shape.json" \
      || { psql_admin "DROP DATABASE IF EXISTS $db"; return 1; }
    psql "$PG_BASE/$db" -qAtc "SELECT 'usage_log rows: ' || count(*) FROM usage_log" \
      >"$BENCH_OUT/usage-flush-$shape.rows.txt"
  done
  psql_admin "DROP DATABASE IF EXISTS $db"
}

section_propagation() {
  note_load "propagation" "$BENCH_OUT/load.txt"
  "$BENCH_ROOT/scripts/bench-propagation.sh" >"$BENCH_OUT/propagation.json"
}

# Every key gets the default limit, far above what is reached, so every Check
# is counted and allowed: the difference is the limiter's own cost (and, with
# Redis, one round-trip per Check).
section_limits() {
  local round mode name extra
  for round in 1 2; do
    for mode in none local redis redis-1s; do
      name="limits-$mode-$round"
      extra=()
      case "$mode" in
        local) extra=(KEYGATE_DEFAULT_RATE_LIMIT=1000000000/1) ;;
        redis*) extra=(KEYGATE_DEFAULT_RATE_LIMIT=1000000000/1
                       KEYGATE_RATE_LIMIT_STORE=redis://127.0.0.1:6379
                       KEYGATE_RATE_LIMIT_PREFIX="keygate-bench:$name:") ;;
      esac
      case "$mode" in
        redis-1s) extra+=(KEYGATE_RATE_LIMIT_TIMEOUT=1s) ;;
      esac
      start_keygate "$name" "$AUTHZ" "$ADMIN" "$METRICS" "${extra[@]}"
      note_load "$name" "$BENCH_OUT/load.txt"
      log "$name: full speed, valid=100"
      bench check --target "127.0.0.1:$AUTHZ" --admin "127.0.0.1:$ADMIN" \
        --mix valid=100 --server-pid "$KG_PID" --duration "$DURATION" --json >"$BENCH_OUT/$name.json"
      echo "$name fallbacks: $(metric "$METRICS" keygate_rate_limit_fallbacks_total)" >>"$BENCH_OUT/limits-metrics.txt"
      stop_pid "$KG_PID"
    done
  done
}

section_envoy() {
  note_load "envoy" "$BENCH_OUT/load.txt"
  "$BENCH_ROOT/scripts/bench-envoy.sh" >"$BENCH_OUT/envoy.json"
}

for s in "${SECTIONS[@]}"; do
  case "$s" in
    instructions|check_cost|check|usage|usage_pg|latency|admin|criterion|flush|propagation|envoy|limits) "section_$s" ;;
    *) echo "unknown section $s" >&2; exit 2 ;;
  esac
done
log "results in $BENCH_OUT"
