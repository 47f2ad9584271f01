#!/usr/bin/env bash
# keygate inside Envoy against Envoy alone, with h2load, in one run:
#
#   envoy-alone    a listener whose route answers with `direct_response`
#   envoy+module   the same route behind the keygate-envoy dynamic module
#                  (release build), a valid key on every request, deciding
#                  from a snapshot of BENCH_MODULE_KEYS keys
#   envoy+apikey   the same route behind Envoy's own api_key_auth filter
#                  (one static plaintext key), the in-proxy baseline
#   envoy+fed      the module fed by a real keygate (release, SQLite) over
#                  KeyFeed instead of a file, reporting usage back; keygate
#                  runs on BENCH_CLIENT_CPU beside h2load
#
# One Envoy (--concurrency 1) serves the three listeners on BENCH_SERVER_CPU;
# h2load (h2c, -c 4 -m 25) runs alone on BENCH_CLIENT_CPU; the scenarios
# alternate round by round, so a slow spell of the machine falls on all.
# Then the memory of the key table: the idle RSS of that Envoy against the
# same Envoy with an empty snapshot. Last, through the fed listener, how
# long keygate's changes take to reach the filter: BENCH_FEED_CHANGES keys
# (default 200) each created over keygate's REST API and polled through
# Envoy until allowed, then revoked and polled until denied, on one
# keep-alive connection; the delays from the REST answer to the first
# changed decision, as percentiles.
#
# With `instructions`, instead: the same Envoy under callgrind, and the
# instructions it spends per request on each listener, steady state
# (callgrind_per_request in bench-lib.sh; BENCH_REQUESTS, default 20000, h2c
# -c 4 -m 25): the figure noise cannot move. The snapshot then holds
# BENCH_MODULE_KEYS keys too (default 1000: Envoy parses it under valgrind).
#
# Usage: scripts/bench-envoy-module.sh [instructions]
# Env:   BENCH_H2LOAD_DURATION (seconds per round, default 10),
#        BENCH_H2LOAD_ROUNDS (default 3), BENCH_MODULE_KEYS (default 100000),
#        BENCH_NO_BUILD, BENCH_MODULE_DIR (where libkeygate_envoy.so is,
#        default target/release), BENCH_SERVER_CPU / BENCH_CLIENT_CPU as for
#        bench.sh.
# Needs .venv-envoy (scripts/setup-test-env.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

ENVOY="${ENVOY_BIN:-$BENCH_ROOT/.venv-envoy/bin/envoy-bin}"
[[ -x "$ENVOY" ]] || ENVOY="$(scripts/setup-test-env.sh --print-envoy)"
MODE="${1:-h2load}"
case "$MODE" in
  h2load) NKEYS="${BENCH_MODULE_KEYS:-100000}" ;;
  instructions)
    command -v callgrind_control >/dev/null || apt-get install -y -qq valgrind >/dev/null
    NKEYS="${BENCH_MODULE_KEYS:-1000}" ;;
  *) echo "usage: $0 [instructions]" >&2; exit 2 ;;
esac
DURATION="${BENCH_H2LOAD_DURATION:-10}"
ROUNDS="${BENCH_H2LOAD_ROUNDS:-3}"
BENCH_WORK="$(mktemp -d)"
export BENCH_WORK
trap 'bench_cleanup; bench_remove_work' EXIT
ENVOY_WRAP=()
[[ "$MODE" == h2load ]] \
  || ENVOY_WRAP=(valgrind --tool=callgrind --callgrind-out-file="$BENCH_WORK/envoy.callgrind")

ensure_h2load
[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release -p keygate-envoy >&2
MODULE_DIR="${BENCH_MODULE_DIR:-$BENCH_ROOT/target/release}"
[[ -f "$MODULE_DIR/libkeygate_envoy.so" ]] || { log "no $MODULE_DIR/libkeygate_envoy.so"; exit 1; }

ALONE=57080 MODULE=57081 APIKEY=57082 FED=57083 ENVOY_ADMIN=57901
KG_AUTHZ=57180 KG_ADMIN=57181 KG_METRICS=57182 KG_HTTP=57183
CHANGES="${BENCH_FEED_CHANGES:-200}"

# write_snapshot FILE N: N keys in keygate's format, the first one's
# plaintext in FILE.key. Only hashes go into the snapshot.
write_snapshot() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, secrets, sys, uuid, zlib
path, n = sys.argv[1], int(sys.argv[2])
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
def checksum(r):
    v = zlib.crc32(r.encode()) & 0xFFFFFFFF
    out = []
    for _ in range(6):
        v, d = divmod(v, 58)
        out.append(B58[d])
    return "".join(reversed(out))
keys = []
first = None
for i in range(n):
    r = "".join(secrets.choice(B58) for _ in range(32))
    token = r + checksum(r)
    if first is None:
        first = f"sk_live_{token}"
    keys.append({"hash": hashlib.sha256(token.encode()).hexdigest(), "id": str(uuid.uuid4()),
                 "owner_id": f"owner-{i % 1000}", "environment": "live",
                 "key_prefix": f"sk_live_{token[:8]}", "abilities": ["read:orders"]})
with open(path, "w") as f:
    json.dump({"complete": True, "keys": keys}, f)
with open(path + ".key", "w") as f:
    f.write(first or "")
PY
}

# listener NAME PORT FILTER_YAML: a direct_response route behind FILTER_YAML.
listener() {
  local name="$1" port="$2" filter="$3"
  cat <<YAML
  - name: $name
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $name
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: / }
                direct_response: { status: 200, body: { inline_string: "ok" } }
          http_filters:
$filter
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
YAML
}
# module_filter JSON: the keygate-envoy filter with JSON as its config.
module_filter() {
  cat <<YAML
          - name: keygate
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: keygate_envoy }
              filter_name: keygate
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '$1'
YAML
}
apikey_filter() {
  cat <<YAML
          - name: envoy.filters.http.api_key_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials:
              - { key: "$1", client: bench }
              key_sources:
              - header: authorization
YAML
}

# start_envoy CONFIG: sets ENVOY_PID once /ready answers.
start_envoy() {
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$MODULE_DIR" taskset -c "$SERVER_CPU" \
    "${ENVOY_WRAP[@]}" "$ENVOY" -c "$1" \
    --concurrency 1 --base-id "$((RANDOM * 7 + 1000))" -l warning \
    >>"$BENCH_WORK/envoy.log" 2>&1 &
  ENVOY_PID=$!
  BENCH_PIDS+=("$ENVOY_PID")
  for _ in $(seq 1 6000); do
    curl -fs "http://127.0.0.1:$ENVOY_ADMIN/ready" >/dev/null 2>&1 && return 0
    kill -0 "$ENVOY_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$BENCH_WORK/envoy.log" >&2; log "Envoy did not start"; exit 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# The feeding keygate: no admin tokens, so its loopback listeners take the
# REST calls below and the feed without one.
SERVER_CPU="$CLIENT_CPU" start_keygate feed "$KG_AUTHZ" "$KG_ADMIN" "$KG_METRICS" \
  KEYGATE_HTTP_ADDR="127.0.0.1:$KG_HTTP"
wait_port "$KG_HTTP"
FED_KEY="$(curl -sf -X POST "http://127.0.0.1:$KG_HTTP/v1/api-keys" -H 'content-type: application/json' \
  -d '{"owner_id":"bench","name":"h2load"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')"

log "writing a snapshot of $NKEYS keys"
write_snapshot "$BENCH_WORK/keys.json" "$NKEYS"
KEY="$(cat "$BENCH_WORK/keys.json.key")"
write_snapshot "$BENCH_WORK/empty.json" 0
{
  echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN } } }"
  echo "static_resources:"
  echo "  listeners:"
  listener alone "$ALONE" ""
  listener module "$MODULE" "$(module_filter "{\"snapshot_path\": \"$BENCH_WORK/keys.json\"}")"
  listener apikey "$APIKEY" "$(apikey_filter "$KEY")"
  listener fed "$FED" "$(module_filter "{\"feed\": {\"address\": \"http://127.0.0.1:$KG_ADMIN\"}}")"
} >"$BENCH_WORK/envoy.yaml"

start_envoy "$BENCH_WORK/envoy.yaml"
for port in "$MODULE" "$APIKEY"; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/orders")"
  [[ "$code" == 401 ]] || { log "port $port answered $code without a key (want 401)"; exit 1; }
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $KEY" \
    "http://127.0.0.1:$port/orders")"
  [[ "$code" == 200 ]] || { log "port $port answered $code to the key (want 200)"; exit 1; }
done
for _ in $(seq 1 100); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $FED_KEY" \
    "http://127.0.0.1:$FED/orders")"
  [[ "$code" == 200 ]] && break
  sleep 0.1
done
[[ "$code" == 200 ]] || { log "the fed listener answered $code to keygate's key (want 200)"; exit 1; }
# Before any load, so that both RSS figures are of an idle Envoy (the fed
# listener's table holds one key).
FULL_RSS="$(rss_kib "$ENVOY_PID")"

if [[ "$MODE" == instructions ]]; then
  counts="$BENCH_WORK/instructions.txt"
  for listener in "alone $ALONE $KEY" "module $MODULE $KEY" "apikey $APIKEY $KEY" "fed $FED $FED_KEY"; do
    read -r name port key <<<"$listener"
    # Named envoy/…: the dumps are $BENCH_WORK/envoy.callgrind.N.
    callgrind_per_request "envoy/$name" "$ENVOY_PID" "http://127.0.0.1:$port/v1/orders/42" \
      "$counts" "$key" -c 4 -m 25
  done
  python3 - "$counts" <<'PY'
import sys
per = dict((name, int(n)) for name, n in (l.split() for l in open(sys.argv[1])))
alone = per["envoy/alone"]
for name in ("envoy/module", "envoy/apikey", "envoy/fed"):
    print(f"{name}: {per[name]:,} instructions per request, {per[name] - alone:+,} over Envoy "
          f"alone ({alone:,}); alone/{name} {alone / per[name]:.3f} (the throughput ratio a "
          f"saturated core allows)")
PY
  exit 0
fi

# run_round NAME PORT [KEY]: one measured run; prints "NAME RPS".
run_round() {
  local name="$1" port="$2" key="${3:-$KEY}" out="$BENCH_WORK/$1.txt" rps ok
  note_load "$name" "$BENCH_WORK/load.txt"
  taskset -c "$CLIENT_CPU" h2load -D "$DURATION" --warm-up-time 1 -c 4 -m 25 \
    -H "authorization: Bearer $key" "http://127.0.0.1:$port/v1/orders/42" >"$out" 2>&1 \
    || { cat "$out" >&2; log "h2load failed for $name"; exit 1; }
  rps="$(h2load_rps "$out")"
  ok="$(h2load_2xx "$out")"
  [[ "$ok" -gt 0 ]] || { cat "$out" >&2; log "$name: no 2xx answers"; exit 1; }
  echo "$name $rps"
}

RESULTS="$BENCH_WORK/results.txt"
: >"$RESULTS"
log "h2load h2c -c 4 -m 25, ${DURATION}s x $ROUNDS rounds per scenario"
for round in $(seq 1 "$ROUNDS"); do
  run_round envoy-alone "$ALONE" | tee -a "$RESULTS"
  run_round envoy+module "$MODULE" | tee -a "$RESULTS"
  run_round envoy+apikey "$APIKEY" | tee -a "$RESULTS"
  run_round envoy+fed "$FED" "$FED_KEY" | tee -a "$RESULTS"
done
round_ratios "$RESULTS" envoy-alone envoy+module envoy+apikey envoy+fed
log "usage: $(curl -s "http://127.0.0.1:$ENVOY_ADMIN/stats?filter=usage_dropped" | tr '\n' ' ')"

log "feed: $CHANGES keys created, then revoked, through keygate's REST API"
python3 - "$CHANGES" "$KG_HTTP" "$FED" <<'PY'
import http.client, json, sys, time
n, rest_port, envoy_port = (int(x) for x in sys.argv[1:])
rest = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
envoy = http.client.HTTPConnection("127.0.0.1", envoy_port, timeout=10)

def call(method, path, body=None):
    rest.request(method, path, body=json.dumps(body) if body else None,
                 headers={"content-type": "application/json"})
    r = rest.getresponse()
    data = r.read()
    assert r.status in (200, 201), (r.status, data)
    return json.loads(data)["data"]

def status(key):
    envoy.request("GET", "/orders", headers={"authorization": f"Bearer {key}"})
    r = envoy.getresponse()
    r.read()
    return r.status

def until(key, want):
    start = time.monotonic()
    while (got := status(key)) != want:
        if time.monotonic() - start > 10:
            sys.exit(f"the filter still answers {got}, not {want}, after 10 s")
    return (time.monotonic() - start) * 1000

created, revoked = [], []
for i in range(n):
    data = call("POST", "/v1/api-keys", {"owner_id": "bench-feed", "name": f"k{i}"})
    created.append(until(data["key"], 200))
    call("POST", f"/v1/admin/api-keys/{data['api_key']['id']}/revoke", {"reason": "bench"})
    revoked.append(until(data["key"], 401))

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
for name, values in (("created -> allowed", created), ("revoked -> denied", revoked)):
    print(f"{name}: n={len(values)} p50 {pct(values, 50):.2f} ms, p90 {pct(values, 90):.2f} ms, "
          f"p99 {pct(values, 99):.2f} ms, max {max(values):.2f} ms")
PY
stop_pid "$ENVOY_PID"

# The same Envoy with an empty table: the difference is the key table.
sed "s|$BENCH_WORK/keys.json|$BENCH_WORK/empty.json|" "$BENCH_WORK/envoy.yaml" >"$BENCH_WORK/empty.yaml"
start_envoy "$BENCH_WORK/empty.yaml"
curl -s -o /dev/null -H "authorization: Bearer $KEY" "http://127.0.0.1:$MODULE/orders"
EMPTY_RSS="$(rss_kib "$ENVOY_PID")"
python3 - "$NKEYS" "$FULL_RSS" "$EMPTY_RSS" <<'PY'
import sys
n, full, empty = (int(x) for x in sys.argv[1:])
per_key = (full - empty) * 1024 / n if n else 0
print(f"key table: Envoy RSS {full} KiB with {n} keys, {empty} KiB with none: "
      f"{per_key:.0f} B per key, {per_key * 1e6 / 2**20:.0f} MiB per million keys "
      f"(idle RSS after start and one request; what the allocator kept from parsing "
      f"the snapshot counts too)")
PY
