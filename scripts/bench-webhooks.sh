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
#   check        Check throughput (h2load, gRPC, -c 4 -m 25, cache hits) on
#                a keygate whose dispatcher is off, against the same keygate
#                with the dispatcher on and an outbox that is not emptied
#                during the run: Checks while webhooks are delivered as fast
#                as the dispatcher can, rounds interleaved.
#
# keygate (SQLite) runs on BENCH_SERVER_CPU; h2load and the receiver on
# BENCH_CLIENT_CPU.
#
# Usage: scripts/bench-webhooks.sh
# Env:   BENCH_WEBHOOK_EVENTS (default 20000), BENCH_H2LOAD_DURATION (seconds
#        per Check round, default 5), BENCH_H2LOAD_ROUNDS (default 3),
#        BENCH_NO_BUILD, BENCH_BIN, BENCH_SERVER_CPU / BENCH_CLIENT_CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

EVENTS="${BENCH_WEBHOOK_EVENTS:-20000}"
DURATION="${BENCH_H2LOAD_DURATION:-5}"
ROUNDS="${BENCH_H2LOAD_ROUNDS:-3}"
BENCH_WORK="$(mktemp -d)"
export BENCH_WORK
trap 'bench_cleanup; rm -rf "$BENCH_WORK"' EXIT

ensure_h2load
[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

AUTHZ=58051 ADMIN=58052 METRICS=58090 HTTP=58080 RECEIVER=58082
DB="sqlite://$BENCH_WORK/webhooks.db"
eval "$("$BIN/keygate" admin-token --name bench --role admin --format env)"

taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" noop-http-server --listen "127.0.0.1:$RECEIVER" \
  >"$BENCH_WORK/receiver.log" 2>&1 &
BENCH_PIDS+=("$!")
wait_port "$RECEIVER"

# serve ENABLED: keygate on the one database, the dispatcher on or off.
serve() {
  start_keygate "webhooks-$1" "$AUTHZ" "$ADMIN" "$METRICS" \
    KEYGATE_DATABASE_URL="$DB" KEYGATE_HTTP_ADDR="127.0.0.1:$HTTP" \
    KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS" KEYGATE_MAX_KEYS_PER_OWNER=10000000 \
    KEYGATE_WEBHOOKS_ENABLED="$1" KEYGATE_WEBHOOK_ALLOW_PRIVATE=true \
    KEYGATE_WEBHOOK_ALLOW_HTTP=true KEYGATE_WEBHOOK_POLL_INTERVAL=100ms
  wait_port "$HTTP"
}

delivered() { metric "$METRICS" 'keygate_webhook_deliveries_total{outcome="delivered"}'; }

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

log "deliveries: $EVENTS events into the outbox, dispatcher off"
fill "$EVENTS"
stop_pid "$KG_PID"
serve true
note_load deliveries "$BENCH_WORK/load.txt"
start=$(date +%s.%N)
while (( $(delivered) < EVENTS )); do sleep 0.1; done
end=$(date +%s.%N)
python3 -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[2]); print(f'deliveries: {n} in {s:.2f} s = {n / s:.0f}/s')" \
  "$EVENTS" "$(python3 -c "print($end - $start)")"
stop_pid "$KG_PID"

# check_round NAME: one h2load Check run on the running keygate.
check_round() {
  local out="$BENCH_WORK/$1.txt"
  note_load "$1" "$BENCH_WORK/load.txt"
  taskset -c "$CLIENT_CPU" h2load -D "$DURATION" --warm-up-time 1 -c 4 -m 25 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$BENCH_WORK/check.body" \
    "http://127.0.0.1:$AUTHZ/envoy.service.auth.v3.Authorization/Check" >"$out" 2>&1
  echo "$1 $(h2load_rps "$out")"
}

RESULTS="$BENCH_WORK/results.txt"
: >"$RESULTS"
log "check: ${DURATION}s rounds, dispatcher off vs delivering"
for round in $(seq 1 "$ROUNDS"); do
  serve false
  check_round no-delivery | tee -a "$RESULTS"
  # Enough events that the dispatcher is still delivering when the run ends.
  fill "$EVENTS"
  stop_pid "$KG_PID"
  serve true
  before="$(delivered)"
  check_round delivering | tee -a "$RESULTS"
  after="$(delivered)"
  echo "  delivered during the run: $((after - before)) (the outbox held $EVENTS)"
  (( after - before < EVENTS )) || log "WARNING: the outbox emptied during the run; raise BENCH_WEBHOOK_EVENTS"
  stop_pid "$KG_PID"
done
python3 - "$RESULTS" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
on = [float(r[1]) for r in rows if r[0] == "delivering"]
off = [float(r[1]) for r in rows if r[0] == "no-delivery"]
ratios = [a / b for a, b in zip(on, off)]
print(f"delivering/no-delivery: median {statistics.median(ratios):.3f} "
      f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; "
      f"delivering median {statistics.median(on):.0f} req/s, no-delivery {statistics.median(off):.0f} req/s)")
PY
