#!/usr/bin/env bash
# What one cache-hit Check costs keygate, against the built-in no-op
# ext_authz server, in two measures (BENCHMARKS.md leads with both):
#
#   instructions  instructions per Check, counted by callgrind in the
#                 server's process over the steady state of N Checks: the
#                 server runs under `valgrind --tool=callgrind`, is warmed
#                 up, its counters are zeroed (`callgrind_control -z`), N
#                 Checks are sent with h2load, the usage flusher is let
#                 write them, and the counters are dumped (`-d`): Ir / N.
#                 Immune to machine load.
#   throughput    h2load at full speed (`-c 4 -m 25`) pinned to its own
#                 core, the server pinned to the other, rounds interleaved
#                 (no-op, usage off, usage on, no-op, ...), keygate/no-op
#                 ratios. Moves with machine load: each round's load is
#                 recorded in $BENCH_OUT/load.txt.
#
# Servers: the no-op (`keygate-bench noop-server`), the same on keygate's
# own connection handling (`--keygate-transport`: coalesced writes, TCP
# keep-alive; the difference to keygate is then keygate's own work only),
# keygate with usage off,
# usage on with SQLite (the default), usage on with PostgreSQL (a fresh
# database; only keygate's process is counted, not Postgres's).
# Every server gets the same request, the gRPC frame of a CheckRequest for
# `GET /v1/orders/42` with a key issued on that server (`keygate-bench
# grpc-body`): same bytes but for the key.
#
# Usage: scripts/bench-instructions.sh [instructions|throughput]...  (default both)
# Env: BENCH_CHECKS (Checks counted, default 3000), BENCH_WARMUP_CHECKS (500),
#      BENCH_ROUNDS (throughput rounds, default 3), BENCH_DURATION (seconds
#      per throughput run, default 10), BENCH_OUT, BENCH_NO_BUILD=1,
#      BENCH_SERVER_CPU / BENCH_CLIENT_CPU, BENCH_POSTGRES (see bench.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

CHECKS="${BENCH_CHECKS:-3000}"
WARMUP_CHECKS="${BENCH_WARMUP_CHECKS:-500}"
ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-10}"
DURATION="${DURATION%s}"
BENCH_OUT="${BENCH_OUT:-$BENCH_ROOT/target/bench-results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$BENCH_OUT"
if [[ -z "${BENCH_WORK:-}" ]]; then
  BENCH_WORK="$(mktemp -d)"
  trap 'bench_cleanup; rm -rf "$BENCH_WORK"' EXIT
else
  trap 'bench_cleanup' EXIT
fi
export BENCH_OUT BENCH_WORK

AUTHZ=51151 ADMIN=51152 METRICS=51190 NOOP=51153
PG_DB=keygate_bench_instructions
CHECK_URL_PATH=/envoy.service.auth.v3.Authorization/Check

ensure_h2load
command -v callgrind_control >/dev/null || {
  log "installing valgrind"
  apt-get install -y valgrind >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y valgrind >/dev/null; }
}
if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
  log "building release binaries"
  cargo build --release --bins
fi

# h2load_checks PORT BODY N CLIENTS STREAMS [h2load options...]: N Checks
# (or a duration, with -D among the options) with BODY; prints h2load's report.
h2load_checks() {
  local port="$1" body="$2" n="$3" clients="$4" streams="$5"; shift 5
  local count=(-n "$n")
  [[ "$n" != 0 ]] || count=()
  h2load "${count[@]}" -c "$clients" -m "$streams" "$@" \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$body" \
    "http://127.0.0.1:$port$CHECK_URL_PATH"
}

# Fails unless h2load's report says every request succeeded.
all_succeeded() {
  local report="$1" n="$2"
  grep -q "requests: $n total, $n started, $n done, $n succeeded" "$report" \
    || { log "not every Check succeeded:"; grep '^requests:' "$report" >&2; return 1; }
}

# start_server KIND NAME [WRAP...]: KIND is noop, noop-kt (the no-op on
# keygate's own connection handling), off, sqlite or postgres.
# Sets SRV_PID and SRV_PORT, and writes the request body to $BENCH_WORK/NAME.body.
start_server() {
  local kind="$1" name="$2"; shift 2
  local extra=()
  case "$kind" in
    noop|noop-kt)
      # The no-op reads no key; any server's body does (the first one's).
      local transport=()
      [[ "$kind" == noop ]] || transport=(--keygate-transport)
      taskset -c "$SERVER_CPU" "$@" "$BIN/keygate-bench" noop-server --listen "127.0.0.1:$NOOP" \
        "${transport[@]}" >"$BENCH_WORK/$name.log" 2>&1 &
      SRV_PID=$! SRV_PORT=$NOOP
      BENCH_PIDS+=("$SRV_PID")
      local tries=200
      [[ $# -eq 0 ]] || tries=2400
      wait_port "$NOOP" "$tries"
      cp "$BENCH_WORK/request.body" "$BENCH_WORK/$name.body"
      return
      ;;
    off) extra=(KEYGATE_USAGE_ENABLED=false) ;;
    sqlite) extra=(KEYGATE_USAGE_ENABLED=true) ;;
    postgres)
      psql_admin "DROP DATABASE IF EXISTS $PG_DB"
      psql_admin "CREATE DATABASE $PG_DB"
      extra=(KEYGATE_USAGE_ENABLED=true KEYGATE_DATABASE_URL="$PG_BASE/$PG_DB")
      ;;
  esac
  BENCH_WRAP="$*" start_keygate "$name" "$AUTHZ" "$ADMIN" "$METRICS" "${extra[@]}"
  SRV_PID=$KG_PID SRV_PORT=$AUTHZ
  taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" grpc-body --admin "127.0.0.1:$ADMIN" \
    --out "$BENCH_WORK/$name.body"
  [[ -f "$BENCH_WORK/request.body" ]] || cp "$BENCH_WORK/$name.body" "$BENCH_WORK/request.body"
}

# Waits until keygate has written `want` usage events (usage on), so the
# flusher's work for the counted Checks falls inside the counted window.
wait_flushed() {
  local want="$1" i flushed
  for i in $(seq 1 600); do
    flushed="$(metric "$METRICS" keygate_usage_flushed_total)"
    [[ "$flushed" == n/a || "$flushed" -lt "$want" ]] || return 0
    sleep 0.1
  done
  log "only $flushed of $want usage events were flushed"; return 1
}

section_instructions() {
  local kind name out ir per warm_n results="$BENCH_OUT/instructions.tsv"
  : >"$results"
  # keygate first: its body serves the no-op too.
  for kind in off noop noop-kt sqlite postgres; do
    name="callgrind-$kind"
    out="$BENCH_OUT/$name.callgrind"
    rm -f "$out" "$out".*
    note_load "$name" "$BENCH_OUT/load.txt"
    log "$name: starting under callgrind"
    start_server "$kind" "$name" valgrind --tool=callgrind --callgrind-out-file="$out"
    # Warm-up: connections, the cache entry, the allocator, the first flush.
    h2load_checks "$SRV_PORT" "$BENCH_WORK/$name.body" "$WARMUP_CHECKS" 2 10 >"$BENCH_OUT/$name-warmup.txt"
    all_succeeded "$BENCH_OUT/$name-warmup.txt" "$WARMUP_CHECKS"
    warm_n="$WARMUP_CHECKS"
    if [[ "$kind" == sqlite || "$kind" == postgres ]]; then wait_flushed "$warm_n"; fi
    sleep 1
    callgrind_control -z "$SRV_PID" >/dev/null
    log "$name: $CHECKS Checks counted"
    h2load_checks "$SRV_PORT" "$BENCH_WORK/$name.body" "$CHECKS" 2 10 >"$BENCH_OUT/$name.txt"
    all_succeeded "$BENCH_OUT/$name.txt" "$CHECKS"
    if [[ "$kind" == sqlite || "$kind" == postgres ]]; then wait_flushed "$((warm_n + CHECKS))"; fi
    ir="$(callgrind_ir "$SRV_PID" "$out")"
    per=$((ir / CHECKS))
    printf '%s\t%s\t%s\n' "$kind" "$ir" "$per" >>"$results"
    log "$name: $ir instructions, $per per Check"
    callgrind_annotate --inclusive=yes "$(ls -t "$out".* | head -1)" 2>/dev/null \
      | head -60 >"$BENCH_OUT/$name-inclusive.txt" || true
    callgrind_annotate "$(ls -t "$out".* | head -1)" 2>/dev/null \
      | head -60 >"$BENCH_OUT/$name-self.txt" || true
    stop_pid "$SRV_PID"
  done
  psql_admin "DROP DATABASE IF EXISTS $PG_DB" || true
  python3 - "$results" "$CHECKS" <<'PY' | tee "$BENCH_OUT/instructions.md"
import sys
rows = dict((k, int(per)) for k, _, per in (l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l))
noop, off = rows["noop"], rows["off"]
print(f"instructions per cache-hit Check (callgrind, {sys.argv[2]} Checks, h2load -c 2 -m 10)\n")
print("| server | instructions per Check | ratio |")
print("|---|---:|---|")
kt = rows["noop-kt"]
print(f"| no-op ext_authz (keygate-bench noop-server) | {noop:,} | |")
print(f"| no-op on keygate's transport (noop-server --keygate-transport) | {kt:,} | {kt / noop:.2f}x of no-op |")
print(f"| keygate, usage off | {off:,} | {off / noop:.2f}x of no-op, {off / kt:.2f}x of no-op on keygate's transport |")
print(f"| keygate, usage on, SQLite (whole process) | {rows['sqlite']:,} | {rows['sqlite'] / off:.2f}x of usage off |")
print(f"| keygate, usage on, PostgreSQL (keygate's process) | {rows['postgres']:,} | {rows['postgres'] / off:.2f}x of usage off |")
PY
}

section_throughput() {
  local round kind name report results="$BENCH_OUT/throughput.tsv"
  : >"$results"
  # A body for the no-op before its first round.
  if [[ ! -f "$BENCH_WORK/request.body" ]]; then
    start_server off body-source
    stop_pid "$SRV_PID"
  fi
  for round in $(seq 1 "$ROUNDS"); do
    for kind in noop off sqlite; do
      name="h2load-$kind-$round"
      start_server "$kind" "$name" nice -n -5
      h2load_checks "$SRV_PORT" "$BENCH_WORK/$name.body" 2000 4 25 >/dev/null
      note_load "$name" "$BENCH_OUT/load.txt"
      log "$name: h2load -c 4 -m 25 for ${DURATION}s"
      report="$BENCH_OUT/$name.txt"
      # nice -n -5 where allowed (GNU nice runs the command either way).
      nice -n -5 taskset -c "$CLIENT_CPU" \
        h2load -c 4 -m 25 -D "$DURATION" --warm-up-time=1 \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$BENCH_WORK/$name.body" \
        "http://127.0.0.1:$SRV_PORT$CHECK_URL_PATH" >"$report"
      grep -q ' 0 failed, 0 errored' "$report" || { log "$name: failures:"; grep '^requests:' "$report" >&2; return 1; }
      printf '%s\t%s\t%s\n' "$kind" "$round" \
        "$(awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) { gsub(",", "", $i); print $i; exit } }' "$report")" \
        >>"$results"
      stop_pid "$SRV_PID"
    done
  done
  python3 - "$results" <<'PY' | tee "$BENCH_OUT/throughput.md"
import collections, sys
rps = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    kind, rnd, value = line.split()
    rps[int(rnd)][kind] = float(value)
print("throughput (h2load -c 4 -m 25, own core; server pinned to the other), req/s\n")
print("| round | no-op | usage off | usage on (SQLite) | off/no-op | on/no-op |")
print("|---|---:|---:|---:|---:|---:|")
for rnd in sorted(rps):
    r = rps[rnd]
    print(f"| {rnd} | {r['noop']:,.0f} | {r['off']:,.0f} | {r['sqlite']:,.0f} | {r['off'] / r['noop']:.2f} | {r['sqlite'] / r['noop']:.2f} |")
PY
}

SECTIONS=("$@")
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(instructions throughput)
for s in "${SECTIONS[@]}"; do
  case "$s" in
    instructions|throughput) "section_$s" ;;
    *) echo "unknown section $s" >&2; exit 2 ;;
  esac
done
log "results in $BENCH_OUT"
