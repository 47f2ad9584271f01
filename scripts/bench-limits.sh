#!/usr/bin/env bash
# Check's cost with no limit, a local limit and a Redis limit, measured the
# two ways of record (BENCHMARKS.md, "Limits across replicas"):
#
#   instructions  instructions per Check in keygate's process under
#                 callgrind, per mode (warmed up, zeroed, BENCH_CHECKS
#                 counted), and the CPU time the Redis server spent per Check
#                 in Redis mode (from /proc: it runs outside keygate)
#   h2load        h2load (-c 4 -m 25) on BENCH_CLIENT_CPU against three
#                 keygate processes on BENCH_SERVER_CPU, one per mode (each
#                 on its own copy of the database, holding the one key), the
#                 modes alternating round by round; then the same Redis
#                 rounds again with the Redis server pinned to the client's
#                 CPU (as a Redis on its own host would leave keygate's core
#                 alone; it then competes with the generator instead)
#
# Modes: none (no limit), local (KEYGATE_DEFAULT_RATE_LIMIT far above what is
# reached, so every Check is counted and allowed), redis (the same limit in
# the local Redis, 127.0.0.1:6379, with a 1 s timeout so that every decision
# is Redis's; the run is void if any fell back to the local limiter). With
# BENCH_REDIS_TIMEOUT (e.g. 5ms, the default of KEYGATE_RATE_LIMIT_TIMEOUT)
# the fallbacks are counted and reported instead.
#
# The Redis server measured and pinned is the machine's running
# redis-server; BENCH_REDIS_URL must point at it.
#
# Usage: scripts/bench-limits.sh [instructions] [h2load]
# Env:   BENCH_H2LOAD_DURATION (seconds, default 5), BENCH_H2LOAD_ROUNDS
#        (default 3), BENCH_CHECKS (default 3000), BENCH_REDIS_URL,
#        BENCH_REDIS_TIMEOUT (default 1s),
#        BENCH_NO_BUILD, BENCH_BIN, BENCH_SERVER_CPU / BENCH_CLIENT_CPU,
#        BENCH_KEEP_WORK=1 (keep the work directory: logs, callgrind dumps).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

DURATION="${BENCH_H2LOAD_DURATION:-5}"
ROUNDS="${BENCH_H2LOAD_ROUNDS:-3}"
CHECKS="${BENCH_CHECKS:-3000}"
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
REDIS_TIMEOUT="${BENCH_REDIS_TIMEOUT:-1s}"
PARTS=("$@")
[[ ${#PARTS[@]} -gt 0 ]] || PARTS=(instructions h2load)
BENCH_WORK="$(mktemp -d)"
export BENCH_WORK
REDIS_PID="$(pgrep -x redis-server | head -1 || true)"
[[ -n "$REDIS_PID" ]] || { log "no redis-server is running"; exit 1; }
REDIS_AFFINITY="$(taskset -pc "$REDIS_PID" | sed 's/.*: //')"
trap 'taskset -a -pc "$REDIS_AFFINITY" "$REDIS_PID" >/dev/null 2>&1 || true; bench_cleanup; bench_remove_work' EXIT

ensure_h2load
[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

MODES=(none local redis)
eval "$("$BIN/keygate" admin-token --name bench --role admin --format env)"
LIMIT=KEYGATE_DEFAULT_RATE_LIMIT=1000000000/1
COMMON=(KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS")

# db MODE: each mode's keygate has its own copy of the database (a SQLite
# file serves one keygate process), made once the key is in it.
db() { echo "$BENCH_WORK/keys-$1.db"; }

# port MODE OFFSET: each mode's keygate has its own ports.
port() {
  local base
  case "$1" in none) base=59100 ;; local) base=59200 ;; redis) base=59300 ;; esac
  echo $((base + $2))
}

# settings MODE: the mode's variables besides COMMON.
settings() {
  case "$1" in
    none) ;;
    local) echo "$LIMIT" ;;
    # A prefix of its own: the state of other runs does not matter.
    redis) echo "$LIMIT KEYGATE_RATE_LIMIT_STORE=$REDIS_URL KEYGATE_RATE_LIMIT_TIMEOUT=$REDIS_TIMEOUT KEYGATE_RATE_LIMIT_PREFIX=keygate-bench-$$:" ;;
  esac
}

# serve MODE [WRAP...]: keygate for MODE on the shared database; sets
# PID_<mode> (KG_PID too).
serve() {
  local mode="$1"; shift
  # shellcheck disable=SC2046 # settings are words by design
  BENCH_WRAP="$*" start_keygate "$mode" "$(port "$mode" 51)" "$(port "$mode" 52)" "$(port "$mode" 90)" \
    "${COMMON[@]}" KEYGATE_DATABASE_URL="sqlite://$(db "$mode")" \
    KEYGATE_HTTP_ADDR="127.0.0.1:$(port "$mode" 80)" $(settings "$mode")
  wait_port "$(port "$mode" 80)" 2400
  printf -v "PID_${mode}" '%s' "$KG_PID"
}

# One key, created over REST by the first keygate, whose database is then
# copied for the others (a keygate on SQLite learns of issued keys when it
# starts); its plaintext stays in files.
key_ready() {
  [[ ! -f "$BENCH_WORK/check.body" ]] || return 0
  env "${COMMON[@]}" KEYGATE_DATABASE_URL="sqlite://$(db none)" "$BIN/keygate" migrate \
    >"$BENCH_WORK/migrate.log" 2>&1
  serve none
  curl -sf -X POST "http://127.0.0.1:$(port none 80)/v1/api-keys" -H "authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' -d '{"owner_id":"bench","name":"limits","abilities":["read:orders"]}' \
    >"$BENCH_WORK/key.json" || { log "cannot create the benchmark key"; exit 1; }
  json "$BENCH_WORK/key.json" 'd["data"]["key"]' >"$BENCH_WORK/check.key"
  "$BIN/keygate-bench" grpc-body --token-file "$BENCH_WORK/check.key" --out "$BENCH_WORK/check.body"
  stop_pid "$KG_PID"
  local mode
  for mode in local redis; do
    python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))' \
      "$(db none)" "$(db "$mode")"
  done
}

# checks MODE OUT [h2load options...]: Checks to MODE's keygate.
checks() {
  local mode="$1" out="$2"; shift 2
  taskset -c "$CLIENT_CPU" h2load "$@" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$BENCH_WORK/check.body" \
    "http://127.0.0.1:$(port "$mode" 51)/envoy.service.auth.v3.Authorization/Check" >"$out" 2>&1 \
    || { cat "$out" >&2; log "h2load failed against $mode"; exit 1; }
}

# decided_as_counted MODE: the figures are void if a Check was denied or, in
# Redis mode, if a decision fell back to the local limiter.
decided_as_counted() {
  local mode="$1" metrics allowed all fallbacks
  metrics="$(port "$mode" 90)"
  allowed="$(metric "$metrics" 'keygate_check_decisions_total{code="allowed"}')"
  all="$(metric "$metrics" keygate_check_decisions_total)"
  fallbacks="$(metric "$metrics" keygate_rate_limit_fallbacks_total)"
  echo "$mode: decisions $all, allowed $allowed, fallbacks to the local limiter $fallbacks"
  [[ "$allowed" == "$all" && "$all" -gt 0 ]] || { log "$mode: some Checks were denied: the figures are void"; exit 1; }
  [[ "$fallbacks" == 0 || "$fallbacks" == n/a || -n "${BENCH_REDIS_TIMEOUT:-}" ]] \
    || { log "$mode: Redis did not decide every Check: the figures are void"; exit 1; }
}

# Script calls Redis has served (INFO commandstats): with the Checks
# decided, how many decisions one call carried.
evalsha_calls() {
  redis-cli -u "$REDIS_URL" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0
}

# decisions_per_call CALLS_BEFORE CALLS_AFTER DECISIONS
decisions_per_call() {
  python3 -c "calls = $2 - $1; print(f'Redis script calls: {calls}, decisions per call: {$3 / max(calls, 1):.1f}')"
}

# CPU seconds (user + system) the Redis server has used.
redis_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$REDIS_PID/stat"
}

section_instructions() {
  command -v callgrind_control >/dev/null || apt-get install -y -qq valgrind >/dev/null
  key_ready
  local mode out ir before after pid calls calls_after
  for mode in "${MODES[@]}"; do
    out="$BENCH_WORK/$mode.callgrind"
    serve "$mode" valgrind --tool=callgrind --callgrind-out-file="$out"
    pid="$KG_PID"
    checks "$mode" "$BENCH_WORK/$mode-warmup.txt" -n 500 -c 2 -m 10
    sleep 1
    callgrind_control -z "$pid" >/dev/null 2>&1
    before="$(redis_cpu)"
    calls="$(evalsha_calls)"
    checks "$mode" "$BENCH_WORK/$mode-counted.txt" -n "$CHECKS" -c 2 -m 10
    after="$(redis_cpu)"
    calls_after="$(evalsha_calls)"
    [[ "$(h2load_2xx "$BENCH_WORK/$mode-counted.txt")" == "$CHECKS" ]] \
      || { log "$mode: not every Check was answered"; exit 1; }
    ir="$(callgrind_ir "$pid" "$out")"
    decided_as_counted "$mode"
    echo "instructions $mode $((ir / CHECKS))" | tee -a "$BENCH_WORK/instructions.txt"
    if [[ "$mode" == redis ]]; then
      python3 -c "print(f'redis-server CPU per Check (redis mode): {($after - $before) / $CHECKS * 1e6:.1f} µs')"
      decisions_per_call "$calls" "$calls_after" "$CHECKS"
    fi
    stop_pid "$pid"
  done
  python3 - "$BENCH_WORK/instructions.txt" <<'PY'
import sys
per = {mode: int(n) for _, mode, n in (l.split() for l in open(sys.argv[1]))}
for mode in ("local", "redis"):
    print(f"instructions per Check: {mode} {per[mode]:,}, none {per['none']:,}: {per[mode] / per['none']:.3f}x")
print(f"redis/local: {per['redis'] / per['local']:.3f}x "
      f"(local/redis {per['local'] / per['redis']:.3f}: the throughput ratio a saturated core allows, Redis's own CPU aside)")
PY
}

# h2load_round NAME MODE RESULTS: one measured run; appends "NAME req/s"
# to RESULTS and prints it with the p50 and p99 of the requests' times
# (h2load's --log-file holds each one's, in microseconds).
h2load_round() {
  local name="$1" mode="$2" results="$3" out="$BENCH_WORK/$1-round.txt" times="$BENCH_WORK/$1-times.log"
  note_load "$name" "$BENCH_WORK/load.txt"
  rm -f "$times"
  checks "$mode" "$out" -D "$DURATION" --warm-up-time 1 -c 4 -m 25 --log-file="$times"
  echo "$name $(h2load_rps "$out")" >>"$results"
  echo "$name $(h2load_rps "$out") req/s $(python3 - "$times" <<'PY'
import sys
times = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
at = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000
print(f"p50 {at(0.50):.2f} ms p99 {at(0.99):.2f} ms")
PY
)"
}

section_h2load() {
  key_ready
  local results="$BENCH_WORK/results.txt" round mode calls decisions
  : >"$results"
  for mode in "${MODES[@]}"; do serve "$mode"; done
  calls="$(evalsha_calls)"
  log "h2load: ${DURATION}s rounds, ${MODES[*]} interleaved, Redis where the machine runs it (affinity $REDIS_AFFINITY)"
  for round in $(seq 1 "$ROUNDS"); do
    for mode in "${MODES[@]}"; do h2load_round "$mode" "$mode" "$results"; done
  done
  log "h2load: the same with redis-server pinned to CPU $CLIENT_CPU"
  taskset -a -pc "$CLIENT_CPU" "$REDIS_PID" >/dev/null
  for round in $(seq 1 "$ROUNDS"); do
    h2load_round local-again local "$results"
    h2load_round redis-pinned redis "$results"
  done
  taskset -a -pc "$REDIS_AFFINITY" "$REDIS_PID" >/dev/null
  decisions="$(metric "$(port redis 90)" keygate_check_decisions_total)"
  decisions_per_call "$calls" "$(evalsha_calls)" "$decisions"
  for mode in "${MODES[@]}"; do decided_as_counted "$mode"; done
  round_ratios "$results" local redis none
  round_ratios "$results" local-again redis-pinned
}

for part in "${PARTS[@]}"; do
  case "$part" in
    instructions|h2load) "section_$part" ;;
    *) echo "unknown part $part (instructions, h2load)" >&2; exit 2 ;;
  esac
done
