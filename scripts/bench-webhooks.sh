#!/usr/bin/env bash
# Webhook delivery: how fast the dispatcher empties the outbox, and what
# delivering costs the Check path.
#
#   deliveries   N `api_key.created` events are put in the outbox with the
#                dispatcher off (KEYGATE_WEBHOOKS_ENABLED=false; the outbox
#                is written either way), then keygate restarts with it on,
#                and the time until keygate_webhook_deliveries_total
#                {outcome="delivered"} reaches N gives deliveries per second
#                to a local receiver (keygate-bench noop-http-server: 200 to
#                every POST).
#   backlog      `deliveries` again, with BENCH_BLOCKED_BACKLOG (default
#                100000) deliveries of a disabled endpoint due before all of
#                them: the outbox's due head held by an endpoint nothing can
#                be sent to (a round used to step over every one of them).
#   check        Check throughput (h2load, gRPC, -c 4 -m 25, cache hits) on
#                a keygate whose dispatcher is off, against the same keygate
#                delivering BENCH_WEBHOOK_RATE events/s (default 1000) during
#                the run, rounds interleaved. The rate comes from the outbox
#                itself: before each delivering round the events of the
#                first section are made pending again, each due 1/RATE s
#                after the one before (keygate stopped, sqlite3), so that
#                the dispatcher finds them due at that rate.
#                BENCH_WEBHOOK_BUILDS="name=DIR ..." runs a delivering
#                round of each build (DIR/keygate, e.g. a wrapper that sets
#                an environment variable) after each no-delivery round, in
#                one run, each on its own copy of the outbox (a build may
#                migrate it; BENCH_BIN, which fills the outbox and runs the
#                no-delivery rounds, must be the oldest of them, since a
#                build refuses a database a newer one migrated); BENCH_PERF_STAT=1 attaches `perf stat
#                --per-thread` (CPU time, thread switches) to keygate for
#                3 s in the middle of every round, one file a round in
#                target/bench-results/.
#   windows      Check throughput on ONE keygate, its dispatcher on, under
#                one h2load run of BENCH_WINDOW_RUN seconds (default 300),
#                with events due at BENCH_WEBHOOK_RATE/s in every other
#                window of BENCH_WINDOW_SECONDS (default 0.5) and none in the
#                windows between. keygate's own count of answered Checks
#                (keygate_check_decisions_total{code="allowed"}) is read
#                every 0.25 s from the client's core; each window's rate
#                (its first quarter-second left out: the dispatcher's next poll,
#                a round's tail) is compared with the mean of the two
#                windows beside it; the median of all, and of the steady
#                ones (the two off-windows within 3 % of each other). The
#                samples are kept in target/bench-results/windows-*.txt.
#                The machine's speed moves by a third
#                within seconds; rounds of `check` (separate processes,
#                ~20 s apart) moved with it, where windows half a second
#                apart of one process mostly move together
#                (BENCHMARKS.md, session 19). The outbox needs RATE x
#                WINDOW x windows/2 events: those the API made, copied
#                under fresh ids as needed. BENCH_WEBHOOK_BUILDS as for
#                `check`, one run per build.
#   cpu          keygate's CPU time per delivery, kernel included (what
#                callgrind does not count: the system calls of the
#                loopback's TCP and of SQLite's writes), with no Check
#                load: the time keygate's threads spent on a CPU
#                (/proc/PID/task/*/schedstat, exact) over BENCH_CPU_SPAN
#                seconds (default 10) while delivering BENCH_WEBHOOK_RATE
#                events/s, less their time over as long idle (dispatcher
#                on, nothing due), divided by the deliveries made.
#                BENCH_CPU_ROUNDS (default 3) rounds, each an idle span and
#                a delivering span of every build of BENCH_WEBHOOK_BUILDS,
#                interleaved. At RATE/s, a delivery of X µs takes X x RATE
#                / 10,000 % of the core: what Check loses, before its
#                caches' share. (The core's own busy time, /proc/stat, was
#                tried: other processes on the core moved the idle span by
#                more than the deliveries cost.)
#   instructions instructions keygate's process spends per delivery and per
#                Check (callgrind): BENCH_CALLGRIND_EVENTS (default 2000)
#                events made due at once 60 s after keygate starts, its
#                counters zeroed half a second before (so the idle polls of
#                the wait are not counted) and read once the database shows
#                them all delivered (not /metrics, whose rendering would be
#                counted), with no Check load; then as many cache-hit
#                Checks with the dispatcher off. Immune to load: their
#                ratio predicts what delivering costs Check.
#
# keygate (SQLite) runs on BENCH_SERVER_CPU; h2load and the receiver on
# BENCH_CLIENT_CPU.
#
# Usage: scripts/bench-webhooks.sh [PART...]   (default: deliveries,
#        instructions and windows; parts run in the order deliveries,
#        backlog, instructions, cpu, check, windows; e.g. `instructions` alone fills only
#        the events it needs and skips the others)
# Env:   BENCH_WEBHOOK_EVENTS (default 20000), BENCH_WEBHOOK_RATE (events/s
#        delivered during a Check round, default 1000), BENCH_WEBHOOK_POLL
#        (KEYGATE_WEBHOOK_POLL_INTERVAL, default 100ms, as in every earlier
#        figure; keygate's own default is 1s), BENCH_CALLGRIND=0 (skip
#        the instructions), BENCH_CALLGRIND_EVENTS, BENCH_H2LOAD_DURATION (seconds
#        per Check round, default 5), BENCH_H2LOAD_ROUNDS (default 3),
#        BENCH_WINDOW_SECONDS, BENCH_WINDOW_RUN (`windows`), BENCH_NO_BUILD,
#        BENCH_BIN, BENCH_SERVER_CPU / BENCH_CLIENT_CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

EVENTS="${BENCH_WEBHOOK_EVENTS:-20000}"
RATE="${BENCH_WEBHOOK_RATE:-1000}"
POLL="${BENCH_WEBHOOK_POLL:-100ms}"
DURATION="${BENCH_H2LOAD_DURATION:-5}"
ROUNDS="${BENCH_H2LOAD_ROUNDS:-3}"
PARTS=" ${*:-deliveries instructions windows} "
for part in $PARTS; do
  [[ " deliveries backlog instructions cpu check windows " == *" $part "* ]] || { echo "unknown part: $part" >&2; exit 2; }
done
want() { [[ "$PARTS" == *" $1 "* ]]; }
want instructions && [[ "${BENCH_CALLGRIND:-1}" != 0 ]] || PARTS="${PARTS/ instructions / }"
[[ -n "${PARTS// /}" ]] || { echo "no part left to run" >&2; exit 0; }
BENCH_WORK="$(mktemp -d)"
export BENCH_WORK
trap 'bench_cleanup; rm -rf "$BENCH_WORK"' EXIT

ensure_h2load
[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

AUTHZ=58051 ADMIN=58052 METRICS=58090 HTTP=58080 RECEIVER=58082
eval "$("$BIN/keygate" admin-token --name bench --role admin --format env)"

taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" noop-http-server --listen "127.0.0.1:$RECEIVER" \
  >"$BENCH_WORK/receiver.log" 2>&1 &
BENCH_PIDS+=("$!")
wait_port "$RECEIVER"

# serve ENABLED: keygate on the one database, the dispatcher on or off
# (BENCH_WRAP, e.g. valgrind, before the binary).
serve() {
  start_keygate "webhooks-$1" "$AUTHZ" "$ADMIN" "$METRICS" \
    KEYGATE_DATABASE_URL="sqlite://${OUTBOX:-$BENCH_WORK/webhooks.db}" KEYGATE_HTTP_ADDR="127.0.0.1:$HTTP" \
    KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS" KEYGATE_MAX_KEYS_PER_OWNER=10000000 \
    KEYGATE_WEBHOOKS_ENABLED="$1" KEYGATE_WEBHOOK_ALLOW_PRIVATE=true \
    KEYGATE_WEBHOOK_ALLOW_HTTP=true KEYGATE_WEBHOOK_POLL_INTERVAL="$POLL"
  wait_port "$HTTP" 2400
}

delivered() { metric "$METRICS" 'keygate_webhook_deliveries_total{outcome="delivered"}'; }
# The events not yet delivered, read from the database (WAL: a reader does
# not disturb keygate's writer).
pending_count() {
  python3 -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'\").fetchone()[0])" \
    "$BENCH_WORK/webhooks.db"
}

# fill N: N key creations for the owner `hooked` (one event each), sent
# over the REST API with h2load.
fill() {
  echo '{"owner_id":"hooked","name":"bench","abilities":["read:orders"]}' >"$BENCH_WORK/create.json"
  taskset -c "$CLIENT_CPU" h2load --h1 -n "$1" -c 8 -d "$BENCH_WORK/create.json" \
    -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    "http://127.0.0.1:$HTTP/v1/api-keys" >"$BENCH_WORK/fill.txt" 2>&1
  [[ "$(h2load_2xx "$BENCH_WORK/fill.txt")" == "$1" ]] \
    || { cat "$BENCH_WORK/fill.txt" >&2; log "not every key was created"; exit 1; }
}

serve false
curl -sf -X POST "http://127.0.0.1:$HTTP/v1/webhooks" -H "authorization: Bearer $ADMIN_TOKEN" \
  -H 'content-type: application/json' \
  -d "{\"owner_id\":\"hooked\",\"url\":\"http://127.0.0.1:$RECEIVER/hook\"}" >/dev/null \
  || { log "cannot register the webhook endpoint"; exit 1; }
"$BIN/keygate-bench" grpc-body --admin "127.0.0.1:$ADMIN" --admin-token "$ADMIN_TOKEN" \
  --out "$BENCH_WORK/check.body" >/dev/null

# check_load H2LOAD_ARGS...: cache-hit gRPC Checks from the client's core,
# h2load's report on standard output.
check_load() {
  taskset -c "$CLIENT_CPU" h2load "$@" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$BENCH_WORK/check.body" "http://127.0.0.1:$AUTHZ/envoy.service.auth.v3.Authorization/Check"
}

# outbox_for NAME: sets OUTBOX to build NAME's own copy of the outbox,
# made from the filled one on first use (a build may migrate it).
outbox_for() {
  OUTBOX="$BENCH_WORK/webhooks-$1.db"
  [[ -f "$OUTBOX" ]] || python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
    "$BENCH_WORK/webhooks.db" "$OUTBOX"
}

# The outbox holds what the parts asked for need: EVENTS for the
# deliveries, else what the others reschedule.
fill_count=0
want deliveries && fill_count="$EVENTS"
want backlog && fill_count="$EVENTS"
want instructions && (( fill_count < ${BENCH_CALLGRIND_EVENTS:-2000} )) && fill_count="${BENCH_CALLGRIND_EVENTS:-2000}"
want check && (( fill_count < RATE * (DURATION + 3) )) && fill_count=$(( RATE * (DURATION + 3) ))
CPU_SPAN="${BENCH_CPU_SPAN:-10}"
want cpu && (( fill_count < RATE * (CPU_SPAN + 4) )) && fill_count=$(( RATE * (CPU_SPAN + 4) ))
WINDOW="${BENCH_WINDOW_SECONDS:-0.5}"
WINDOW_RUN="${BENCH_WINDOW_RUN:-300}"
# The windowed run's events beyond these are copies (copy_events).
want windows && (( fill_count < RATE * 10 )) && fill_count=$(( RATE * 10 ))
log "$fill_count events into the outbox, dispatcher off"
fill "$fill_count"
stop_pid "$KG_PID"

# time_deliveries NAME: keygate started with its dispatcher on, and the
# time until it has delivered EVENTS, as deliveries per second.
time_deliveries() {
  serve true
  note_load "$1" "$BENCH_WORK/load.txt"
  local start end
  start=$(date +%s.%N)
  while (( $(delivered) < EVENTS )); do sleep 0.1; done
  end=$(date +%s.%N)
  python3 -c "import sys; n, s = int(sys.argv[2]), float(sys.argv[3]); print(f'{sys.argv[1]}: {n} in {s:.2f} s = {n / s:.0f}/s')" \
    "$1" "$EVENTS" "$(python3 -c "print($end - $start)")"
  stop_pid "$KG_PID"
}

want deliveries && time_deliveries deliveries


# check_round NAME: one h2load Check run on the running keygate.
check_round() {
  local out="$BENCH_WORK/$1.txt"
  note_load "$1" "$BENCH_WORK/load.txt"
  if [[ "${BENCH_PERF_STAT:-}" == 1 ]]; then
    local stat="$PERF_DIR/$1-$(date +%H%M%S).txt"
    ( sleep "$(( DURATION / 2 ))"; perf stat --per-thread -e task-clock,context-switches \
        -p "$KG_PID" -o "$stat" -- sleep 3 >/dev/null 2>&1 ) &
  fi
  check_load -D "$DURATION" --warm-up-time 1 -c 4 -m 25 >"$out" 2>&1
  echo "$1 $(h2load_rps "$out")"
}

# reschedule [RATE COUNT AFTER WINDOW]: the first COUNT events (default
# RATE x (DURATION + 3)) pending again, due one after the other at RATE per
# second from AFTER seconds from now (default 1: the Check round's
# warm-up; @T: from the Unix time T), or, given WINDOW seconds, at RATE per second in every other
# window from AFTER (none in the first, RATE x WINDOW in the second, none
# in the third...); any other event still pending is marked delivered, so
# that only those COUNT are delivered; keygate must be stopped.
reschedule() {
  local rate="${1:-$RATE}" count="${2:-$(( RATE * (DURATION + 3) ))}" after="${3:-1}" window="${4:-0}"
  python3 - "${OUTBOX:-$BENCH_WORK/webhooks.db}" "$rate" "$count" "$after" "$window" <<'PY'
import sqlite3, sys
from datetime import datetime, timedelta, timezone
db, rate, count, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[5])
after = sys.argv[4]
conn = sqlite3.connect(db)
rows = [r[0] for r in conn.execute("SELECT rowid FROM webhook_deliveries ORDER BY rowid LIMIT ?", (count,))]
if len(rows) < count:
    sys.exit(f"the outbox holds {len(rows)} events, {count} needed: raise BENCH_WEBHOOK_EVENTS")
start = (datetime.fromtimestamp(float(after[1:]), timezone.utc) if after.startswith("@")
         else datetime.now(timezone.utc) + timedelta(seconds=float(after)))
# keygate's own encoding of a time (RFC 3339, +00:00), so that the
# dispatcher's text comparison of due times holds.
def offset(i):
    if not window:
        return i / rate
    per_window = int(rate * window)
    return (2 * (i // per_window) + 1) * window + (i % per_window) / rate
due = lambda i: (start + timedelta(seconds=offset(i))).isoformat(timespec="microseconds")
conn.execute(
    "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = ?, claim_id = NULL, "
    "claimed_until = NULL WHERE status = 'pending' AND rowid > ?",
    (due(0), rows[-1] if rows else 0))
# Fresh events, as a replica's new ones are: no attempt made yet (an event
# delivered in an earlier round would otherwise be sent as a retry, its
# earlier attempt moved to the log).
conn.executemany(
    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, delivered_at = NULL, "
    "claim_id = NULL, claimed_until = NULL, attempts = 0 WHERE rowid = ?",
    [(due(i), rowid) for i, rowid in enumerate(rows)])
conn.execute("DELETE FROM webhook_attempts")
# Builds from before the latest attempt moved into the delivery's row
# (BENCH_BIN) lack these columns.
if any(column[1] == "last_attempt" for column in conn.execute("PRAGMA table_info(webhook_deliveries)")):
    conn.execute("UPDATE webhook_deliveries SET last_attempt = NULL, last_attempt_at = NULL, "
                 "last_latency_ms = NULL, last_status_code = NULL, last_error = NULL")
conn.commit()
PY
}

if want backlog; then
  BLOCKED="${BENCH_BLOCKED_BACKLOG:-100000}"
  # The delivered events pending again for a second run, and a disabled
  # endpoint's deliveries, all due a day ago, ahead of them.
  want deliveries && reschedule 1000000 "$EVENTS" -1
  python3 - "$BENCH_WORK/webhooks.db" "$BLOCKED" <<'PY'
import sqlite3, sys, uuid
from datetime import datetime, timedelta, timezone
conn = sqlite3.connect(sys.argv[1])
blocked = int(sys.argv[2])
endpoint = uuid.uuid4().bytes
conn.execute(
    "INSERT INTO webhook_endpoints (id, owner_id, url, events, enabled, sealed_secret, created_at, updated_at) "
    "SELECT ?, owner_id, url, events, 0, sealed_secret, created_at, updated_at FROM webhook_endpoints LIMIT 1",
    (endpoint,))
start = datetime.now(timezone.utc) - timedelta(days=1)
payload = conn.execute("SELECT payload FROM webhook_deliveries LIMIT 1").fetchone()[0]
due = lambda i: (start + timedelta(microseconds=i)).isoformat(timespec="microseconds")
conn.executemany(
    "INSERT INTO webhook_deliveries (event_id, endpoint_id, owner_id, event_type, payload, status, attempts, "
    "next_attempt_at, retry_from, created_at) VALUES (?, ?, 'hooked', 'api_key.created', ?, 'pending', 0, ?, ?, ?)",
    ((uuid.uuid4().bytes, endpoint, payload, due(i), due(i), due(i)) for i in range(blocked)))
conn.commit()
PY
  log "backlog: $EVENTS deliveries behind $BLOCKED of a disabled endpoint"
  time_deliveries "deliveries behind $BLOCKED blocked"
  # The parts after this one copy and reschedule the outbox's rows: not
  # the disabled endpoint's.
  python3 -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA foreign_keys = ON'); c.execute('DELETE FROM webhook_endpoints WHERE NOT enabled'); c.commit()" \
    "$BENCH_WORK/webhooks.db"
fi

if want instructions; then
  command -v callgrind_control >/dev/null || apt-get install -y -qq valgrind >/dev/null
  CG_EVENTS="${BENCH_CALLGRIND_EVENTS:-2000}"
  cg_out="$BENCH_WORK/webhooks.callgrind"
  # Due in 60 s, once keygate has started under valgrind; its counters are
  # zeroed half a second before, so that the idle polls of the wait are
  # not counted (a handful are, at the 100 ms poll interval).
  due_at=$(( $(date +%s) + 60 ))
  reschedule 1000000 "$CG_EVENTS" 60
  log "instructions: $CG_EVENTS deliveries under callgrind"
  BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cg_out" serve true
  wait_s=$(python3 -c "import time; print(max(0.0, $due_at - 0.5 - time.time()))")
  [[ "$wait_s" != 0.0 ]] || log "WARNING: keygate took 60 s to start: some deliveries may precede the count"
  sleep "$wait_s"
  callgrind_control -z "$KG_PID" >/dev/null 2>&1
  # The database is read, not keygate's /metrics: rendering them would be
  # counted in keygate's instructions (about 347,000 a render).
  while (( $(pending_count) > 0 )); do sleep 0.5; done
  ir="$(callgrind_ir "$KG_PID" "$cg_out")"
  echo "instructions per delivery: $((ir / CG_EVENTS)) ($CG_EVENTS deliveries from a due outbox)"
  # Where they go, kept for reading (callgrind_annotate).
  profile_dir="$BENCH_ROOT/target/bench-results/webhooks-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$profile_dir"
  callgrind_annotate --inclusive=yes "$(ls -t "$cg_out".* | head -1)" 2>/dev/null \
    | head -120 >"$profile_dir/delivery-inclusive.txt" || true
  # The dump itself, for callers and callees (callgrind_annotate --tree).
  cp "$(ls -t "$cg_out".* | head -1)" "$profile_dir/delivery.callgrind"
  log "delivery profile: $profile_dir/delivery-inclusive.txt"
  stop_pid "$KG_PID"
  rm -f "$cg_out" "$cg_out".*
  BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cg_out" serve false
  check_load -n 500 -c 2 -m 10 >/dev/null 2>&1
  sleep 1
  callgrind_control -z "$KG_PID" >/dev/null 2>&1
  check_load -n "$CG_EVENTS" -c 2 -m 10 >"$BENCH_WORK/cg-check.txt" 2>&1
  ir="$(callgrind_ir "$KG_PID" "$cg_out")"
  echo "instructions per cache-hit Check (usage on): $((ir / CG_EVENTS)) ($(h2load_2xx "$BENCH_WORK/cg-check.txt") of $CG_EVENTS answered 2xx)"
  stop_pid "$KG_PID"
fi

# cpu_time: keygate's threads' time on a CPU so far, in ns.
cpu_time() {
  cat /proc/"$KG_PID"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%.0f", t }'
}

# cpu_span NAME: keygate's CPU time over the next CPU_SPAN seconds, with
# what it delivered meanwhile.
cpu_span() {
  local before after delivered_before
  delivered_before="$(delivered)"
  before="$(cpu_time)"
  sleep "$CPU_SPAN"
  after="$(cpu_time)"
  echo "$1 $(( $(delivered) - delivered_before )) $before $after" >>"$CPU_RESULTS"
}

if want cpu; then
  CPU_RESULTS="$BENCH_WORK/cpu.txt"
  : >"$CPU_RESULTS"
  log "cpu: ${CPU_SPAN}s spans, keygate idle vs delivering $RATE events/s, no Check load"
  for round in $(seq 1 "${BENCH_CPU_ROUNDS:-3}"); do
    for build in ${BENCH_WEBHOOK_BUILDS:-delivering=$BIN}; do
      name="${build%%=*}"
      # Its own copy: the windowed run's needs more events.
      outbox_for "cpu-$name"
      # Nothing due until the idle span has been measured; then due
      # over CPU_SPAN + 4 s, the delivering span 2 s in from either end.
      due_start=$(( $(date +%s) + CPU_SPAN + 8 ))
      reschedule "$RATE" "$(( RATE * (CPU_SPAN + 4) ))" "@$due_start"
      BIN="${build#*=}" serve true
      note_load "cpu-$name" "$BENCH_WORK/load.txt"
      sleep 1
      cpu_span "idle-$name"
      (( $(date +%s) < due_start )) || log "WARNING: the idle span of $name ran into the deliveries"
      sleep "$(python3 -c "import time; print(max(0.0, $due_start + 2 - time.time()))")"
      cpu_span "$name"
      stop_pid "$KG_PID"
      unset OUTBOX
    done
  done
  python3 - "$CPU_RESULTS" "$CPU_SPAN" <<'PY'
import collections, statistics, sys
path, span = sys.argv[1], float(sys.argv[2])
idle, busy = collections.defaultdict(list), collections.defaultdict(list)
for line in open(path):
    name, n, t0, t1 = line.split()
    seconds = (int(t1) - int(t0)) / 1e9
    if name.startswith("idle-"):
        idle[name[5:]].append(seconds)
    else:
        busy[name].append((int(n), seconds))
for name in busy:
    per = [(s - i) / n * 1e6 for (n, s), i in zip(busy[name], idle[name])]
    rate = statistics.mean(n for n, _ in busy[name]) / span
    print(f"{name}: {rate:.0f} deliveries/s; keygate's CPU {' '.join(f'{x:.1f}' for x in per)} us a delivery "
          f"(median {statistics.median(per):.1f}; idle {statistics.mean(idle[name]) / span * 100:.2f} % of a core)")
PY
fi

if want check; then
  RESULTS="$BENCH_WORK/results.txt"
  : >"$RESULTS"
  BUILDS="${BENCH_WEBHOOK_BUILDS:-delivering=$BIN}"
  if [[ "${BENCH_PERF_STAT:-}" == 1 ]]; then
    command -v perf >/dev/null || apt-get install -y -qq linux-perf >/dev/null
    PERF_DIR="$BENCH_ROOT/target/bench-results/webhooks-check-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$PERF_DIR"
  fi
  log "check: ${DURATION}s rounds, dispatcher off vs delivering $RATE events/s (poll $POLL)"
  for round in $(seq 1 "$ROUNDS"); do
    serve false
    check_round no-delivery | tee -a "$RESULTS"
    stop_pid "$KG_PID"
    for build in $BUILDS; do
      name="${build%%=*}"
      outbox_for "$name"
      reschedule
      BIN="${build#*=}" serve true
      before="$(delivered)"
      check_round "$name" | tee -a "$RESULTS"
      after="$(delivered)"
      echo "  delivered during the run: $((after - before)) ($RATE/s offered over ${DURATION}s + 1s warm-up)"
      stop_pid "$KG_PID"
      unset OUTBOX
    done
  done
  # shellcheck disable=SC2046
  round_ratios "$RESULTS" no-delivery $(for build in $BUILDS; do echo "${build%%=*}"; done)
  [[ "${BENCH_PERF_STAT:-}" != 1 ]] || log "per-thread CPU of each round: $PERF_DIR"
fi

# copy_events N: the outbox's events copied under fresh ids until it holds
# N (the API's creation of a key slows as its owner's keys grow: making
# 60,000 with it took over ten minutes); keygate must be stopped.
copy_events() {
  python3 - "$BENCH_WORK/webhooks.db" "$1" <<'PY'
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
need = int(sys.argv[2])
while (have := conn.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0]) < need:
    conn.execute(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, owner_id, event_type, payload, status, "
        "attempts, next_attempt_at, retry_from, created_at) SELECT randomblob(16), endpoint_id, owner_id, "
        "event_type, payload, status, attempts, next_attempt_at, retry_from, created_at "
        "FROM webhook_deliveries ORDER BY rowid LIMIT ?", (need - have,))
    conn.commit()
PY
}

# window_run NAME: the windowed run (`windows` above) on the stopped
# keygate BIN; prints the median on/off ratio of all delivering windows and
# of the steady ones, with their quartiles.
window_run() {
  local name="$1" start events=$(( RATE * WINDOW_RUN / 2 ))
  start=$(( $(date +%s) + 10 ))
  reschedule "$RATE" "$events" "@$start" "$WINDOW"
  serve true
  note_load "windows-$name" "$BENCH_WORK/load.txt"
  local before after
  before="$(delivered)"
  check_load -D "$(( start + WINDOW_RUN + 2 - $(date +%s) ))" -c 4 -m 25 \
    >"$BENCH_WORK/windows-$name-h2load.txt" 2>&1 &
  local load=$!
  BENCH_PIDS+=("$load")
  taskset -c "$CLIENT_CPU" python3 - "$METRICS" "$start" "$WINDOW_RUN" "$BENCH_WORK/windows-$name.txt" <<'PY'
import sys, time, urllib.request
port, start, run, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
name = 'keygate_check_decisions_total{code="allowed"}'
def answered():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return next(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))
with open(out, "w") as f:
    for k in range(int(run / 0.25) + 1):
        time.sleep(max(0.0, start + k * 0.25 - time.time()))
        f.write(f"{time.time():.4f} {answered():.0f}\n")
PY
  wait "$load" || true
  after="$(delivered)"
  stop_pid "$KG_PID"
  mkdir -p "$BENCH_ROOT/target/bench-results"
  cp "$BENCH_WORK/windows-$name.txt" "$BENCH_ROOT/target/bench-results/windows-$name-$(date +%Y%m%d-%H%M%S).txt"
  echo "$name: delivered $((after - before)) of $events ($RATE/s in every other ${WINDOW}s window)"
  python3 - "$name" "$BENCH_WORK/windows-$name.txt" "$start" "$WINDOW" <<'PY'
import statistics, sys
name, path, start, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
samples = [tuple(map(float, line.split())) for line in open(path)]
per_window = {}
for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
    w, offset = divmod((t0 + t1) / 2 - start, window)
    if offset >= 0.25:
        per_window.setdefault(int(w), []).append((c1 - c0) / (t1 - t0))
rate = {w: statistics.mean(r) for w, r in per_window.items()}
rates = list(rate.values())
# Window 0 is off, 1 on, 2 off...
triples = [(rate[w - 1], rate[w], rate[w + 1]) for w in sorted(rate)
           if w % 2 == 1 and w - 1 in rate and w + 1 in rate]
ratios = [on / ((before + after) / 2) for before, on, after in triples]
# Steady: the two off-windows within 3 % of each other, the machine's speed
# unchanged across the three; chosen by the off-windows alone, so that the
# choice cannot favour an on-window's figure.
steady = [on / ((before + after) / 2) for before, on, after in triples
          if abs(before / after - 1) <= 0.03]
def summary(values):
    if len(values) < 2:
        return f"{len(values)} windows"
    q = statistics.quantiles(values, n=4)
    return f"median {statistics.median(values):.3f} over {len(values)} (quartiles {q[0]:.3f}-{q[2]:.3f})"
print(f"{name}: on/off, steady windows {summary(steady)}; all windows {summary(ratios)}; "
      f"Checks/s by window {min(rates):.0f}-{max(rates):.0f}, median {statistics.median(rates):.0f}")
PY
}

if want windows; then
  copy_events "$(( RATE * WINDOW_RUN / 2 ))"
  log "windows: ${WINDOW_RUN}s of ${WINDOW}s windows, delivering $RATE events/s in every other (poll $POLL)"
  for build in ${BENCH_WEBHOOK_BUILDS:-delivering=$BIN}; do
    name="${build%%=*}"
    outbox_for "$name"
    BIN="${build#*=}" window_run "$name"
    unset OUTBOX
  done
fi
