#!/usr/bin/env bash
# Forward-auth throughput with h2load, the generator of record: h2load runs
# alone on BENCH_CLIENT_CPU, everything it measures on BENCH_SERVER_CPU, and
# the scenarios alternate round by round in one run, so a slow spell of the
# machine falls on all of them.
#
#   direct        h2load (h2c, -c 4 -m 25) against
#                   forward-auth  keygate's forward-auth listener, a valid key
#                                 on every request (cache hits, usage on)
#                   noop-http     an empty 200 on the same stack
#                                 (keygate-bench noop-http-server)
#                   noop-http-identity  the same server answering with the
#                                 headers keygate's allowance carries, fixed
#                                 (--with-identity-headers): what sending
#                                 them costs, before any decision
#   nginx         h2load (HTTP/1.1, -c 32) through NGINX (examples/nginx/
#                 nginx.conf, one worker) to the no-op HTTP upstream
#                   nginx+keygate  the shipped file: auth_request to keygate
#                   nginx          the same file with `auth_request off`
#                   nginx+noop-auth  the shipped file with the no-op HTTP
#                                  server in keygate's place: the subrequest's
#                                  own cost to NGINX
#   instructions  instructions per request under callgrind (the figure of
#                 record: the machine's speed does not move it), forward-auth
#                 (usage on, as in `direct`) against the no-op HTTP server,
#                 each warmed up, zeroed, then counted over BENCH_REQUESTS
#                 (default 20000) requests, h2c (-c 4 -m 25) then HTTP/1.1
#                 (-c 32), and the identity no-op the same; callgrind's
#                 dumps count from the last zeroing
#
# Prints one line per round and scenario, then the median ratios; writes
# nothing else. NGINX and keygate share the server core in `nginx`, as the
# no-op upstream does in both NGINX scenarios.
#
# Usage: scripts/bench-forward-auth-h2load.sh [direct] [nginx] [instructions]
# Env:   BENCH_H2LOAD_DURATION (seconds per round, default 10),
#        BENCH_H2LOAD_ROUNDS (default 3), BENCH_REQUESTS, BENCH_NO_BUILD, BENCH_BIN,
#        BENCH_KEEP_WORK=1 (keep the work directory: logs, callgrind dumps),
#        BENCH_SERVER_CPU / BENCH_CLIENT_CPU as for bench.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

DURATION="${BENCH_H2LOAD_DURATION:-10}"
ROUNDS="${BENCH_H2LOAD_ROUNDS:-3}"
PARTS=("$@")
[[ ${#PARTS[@]} -gt 0 ]] || PARTS=(direct nginx)
BENCH_WORK="$(mktemp -d)"
export BENCH_WORK
trap 'bench_cleanup; bench_remove_work' EXIT

ensure_h2load
[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

KG_AUTHZ=56051 KG_ADMIN=56052 KG_METRICS=56090 KG_FA=56081 KG_HTTP=56080 NOOP=56082 NGINX=56083
NOOP_IDENTITY=56086

eval "$("$BIN/keygate" admin-token --name bench --role admin --format env)"
start_keygate forward-auth-h2load "$KG_AUTHZ" "$KG_ADMIN" "$KG_METRICS" \
  KEYGATE_FORWARD_AUTH_ADDR="127.0.0.1:$KG_FA" KEYGATE_HTTP_ADDR="127.0.0.1:$KG_HTTP" \
  KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS" ${BENCH_KEYGATE_ENV:-}
wait_port "$KG_FA"
wait_port "$KG_HTTP"
taskset -c "$SERVER_CPU" "$BIN/keygate-bench" noop-http-server --listen "127.0.0.1:$NOOP" \
  >"$BENCH_WORK/noop-http.log" 2>&1 &
BENCH_PIDS+=("$!")
wait_port "$NOOP"
taskset -c "$SERVER_CPU" "$BIN/keygate-bench" noop-http-server --with-identity-headers \
  --listen "127.0.0.1:$NOOP_IDENTITY" >"$BENCH_WORK/noop-http-identity.log" 2>&1 &
BENCH_PIDS+=("$!")
wait_port "$NOOP_IDENTITY"

# One key, created over the REST API; its plaintext stays in this shell.
KEY="$(curl -sf -X POST "http://127.0.0.1:$KG_HTTP/v1/api-keys" \
  -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
  -d '{"owner_id":"bench","name":"h2load","abilities":["read:orders"]}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')"
code="$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $KEY" \
  "http://127.0.0.1:$KG_FA/v1/orders/42")"
[[ "$code" == 200 ]] || { log "forward-auth answered $code to the bench key"; exit 1; }

# run_round NAME URL [h2load flags...]: one measured run; prints "NAME RPS".
run_round() {
  local name="$1" url="$2"; shift 2
  local out="$BENCH_WORK/$name.txt" rps ok
  note_load "$name" "$BENCH_WORK/load.txt"
  taskset -c "$CLIENT_CPU" h2load -D "$DURATION" --warm-up-time 1 \
    -H "authorization: Bearer $KEY" "$@" "$url" >"$out" 2>&1 \
    || { cat "$out" >&2; log "h2load failed for $name"; exit 1; }
  rps="$(h2load_rps "$out")"
  ok="$(h2load_2xx "$out")"
  [[ "$ok" -gt 0 ]] || { cat "$out" >&2; log "$name: no 2xx answers"; exit 1; }
  echo "$name $rps"
}

# ratio_summary TARGET BASELINE FILE: median of the per-round ratios.
ratio_summary() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, statistics
target, baseline, path = sys.argv[1:]
rows = [l.split() for l in open(path)]
t = [float(r[1]) for r in rows if r[0] == target]
b = [float(r[1]) for r in rows if r[0] == baseline]
ratios = [x / y for x, y in zip(t, b)]
print(f"{target}/{baseline}: median {statistics.median(ratios):.3f} "
      f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; "
      f"{target} median {statistics.median(t):.0f} req/s, {baseline} {statistics.median(b):.0f} req/s)")
PY
}

RESULTS="$BENCH_WORK/results.txt"
: >"$RESULTS"

for part in "${PARTS[@]}"; do
  case "$part" in
    direct)
      log "direct: h2load h2c -c 4 -m 25, ${DURATION}s x $ROUNDS rounds"
      for round in $(seq 1 "$ROUNDS"); do
        run_round forward-auth "http://127.0.0.1:$KG_FA/v1/orders/42" -c 4 -m 25 | tee -a "$RESULTS"
        run_round noop-http "http://127.0.0.1:$NOOP/v1/orders/42" -c 4 -m 25 | tee -a "$RESULTS"
        run_round noop-http-identity "http://127.0.0.1:$NOOP_IDENTITY/v1/orders/42" -c 4 -m 25 \
          | tee -a "$RESULTS"
      done
      ratio_summary forward-auth noop-http "$RESULTS"
      ratio_summary noop-http-identity noop-http "$RESULTS"
      ratio_summary forward-auth noop-http-identity "$RESULTS"
      ;;
    nginx)
      NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
      [[ -x "$NGINX_BIN" ]] || { log "nginx is missing: run scripts/setup-test-env.sh"; exit 1; }
      # with: the shipped file; without: `auth_request off`; noop-auth: the
      # shipped file asking the no-op server instead of keygate (what the
      # subrequest alone costs NGINX).
      for variant in with without noop-auth; do
        dir="$BENCH_WORK/nginx-$variant"
        mkdir -p "$dir/tmp"
        case "$variant" in
          with) port=$NGINX auth=$KG_FA ;;
          without) port=$((NGINX + 1)) auth=$KG_FA ;;
          noop-auth) port=$((NGINX + 2)) auth=$NOOP ;;
        esac
        sed -e "s/127.0.0.1:8081/127.0.0.1:$auth/" -e "s/127.0.0.1:8000/127.0.0.1:$NOOP/" \
            -e "s/listen 127.0.0.1:8080/listen 127.0.0.1:$port/" \
            examples/nginx/nginx.conf >"$dir/nginx.conf"
        if [[ "$variant" == without ]]; then
          sed -i 's|auth_request /_keygate;|auth_request off;|' "$dir/nginx.conf"
        fi
        grep -q "listen 127.0.0.1:$port" "$dir/nginx.conf" || { log "examples/nginx/nginx.conf changed: update this script"; exit 1; }
        cp examples/nginx/keygate_upstream_headers "$dir/"
        taskset -c "$SERVER_CPU" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -e stderr \
          -g 'daemon off; master_process off;' >"$dir/nginx.log" 2>&1 &
        BENCH_PIDS+=("$!")
        wait_port "$port"
      done
      code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX/v1/orders/42")"
      [[ "$code" == 401 ]] || { log "NGINX with auth_request let a request without a key through ($code)"; exit 1; }
      log "nginx: h2load HTTP/1.1 -c 32, ${DURATION}s x $ROUNDS rounds"
      for round in $(seq 1 "$ROUNDS"); do
        run_round nginx+keygate "http://127.0.0.1:$NGINX/v1/orders/42" --h1 -c 32 | tee -a "$RESULTS"
        run_round nginx "http://127.0.0.1:$((NGINX + 1))/v1/orders/42" --h1 -c 32 | tee -a "$RESULTS"
        run_round nginx+noop-auth "http://127.0.0.1:$((NGINX + 2))/v1/orders/42" --h1 -c 32 | tee -a "$RESULTS"
      done
      ratio_summary nginx+keygate nginx "$RESULTS"
      ratio_summary nginx+noop-auth nginx "$RESULTS"
      ratio_summary nginx+keygate nginx+noop-auth "$RESULTS"
      ;;
    instructions)
      command -v callgrind_control >/dev/null || apt-get install -y -qq valgrind >/dev/null
      counts="$BENCH_WORK/instructions.txt"
      # A copy of the running keygate's database, with the key in it: a
      # SQLite file serves one keygate process.
      python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))' \
        "$BENCH_WORK/forward-auth-h2load.db" "$BENCH_WORK/forward-auth-callgrind-copy.db"
      BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$BENCH_WORK/forward-auth.callgrind" \
        start_keygate forward-auth-callgrind $((KG_AUTHZ + 100)) $((KG_ADMIN + 100)) $((KG_METRICS + 100)) \
        KEYGATE_FORWARD_AUTH_ADDR="127.0.0.1:$((KG_FA + 100))" KEYGATE_HTTP_ADDR="127.0.0.1:$((KG_HTTP + 100))" \
        KEYGATE_DATABASE_URL="sqlite://$BENCH_WORK/forward-auth-callgrind-copy.db" \
        KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS" ${BENCH_KEYGATE_ENV:-}
      wait_port $((KG_FA + 100)) 2400
      fa_url="http://127.0.0.1:$((KG_FA + 100))/v1/orders/42"
      callgrind_per_request forward-auth/h2c "$KG_PID" "$fa_url" "$counts" "$KEY" -c 4 -m 25
      callgrind_per_request forward-auth/http1 "$KG_PID" "$fa_url" "$counts" "$KEY" --h1 -c 32
      taskset -c "$SERVER_CPU" valgrind --tool=callgrind --callgrind-out-file="$BENCH_WORK/noop-http.callgrind" \
        "$BIN/keygate-bench" noop-http-server --listen "127.0.0.1:$((NOOP + 100))" \
        >"$BENCH_WORK/noop-http-callgrind.log" 2>&1 &
      noop_pid=$!
      BENCH_PIDS+=("$noop_pid")
      wait_port $((NOOP + 100)) 2400
      noop_url="http://127.0.0.1:$((NOOP + 100))/v1/orders/42"
      callgrind_per_request noop-http/h2c "$noop_pid" "$noop_url" "$counts" "$KEY" -c 4 -m 25
      callgrind_per_request noop-http/http1 "$noop_pid" "$noop_url" "$counts" "$KEY" --h1 -c 32
      taskset -c "$SERVER_CPU" valgrind --tool=callgrind \
        --callgrind-out-file="$BENCH_WORK/noop-http-identity.callgrind" \
        "$BIN/keygate-bench" noop-http-server --with-identity-headers \
        --listen "127.0.0.1:$((NOOP_IDENTITY + 100))" >"$BENCH_WORK/noop-http-identity-callgrind.log" 2>&1 &
      identity_pid=$!
      BENCH_PIDS+=("$identity_pid")
      wait_port $((NOOP_IDENTITY + 100)) 2400
      callgrind_per_request noop-http-identity/h2c "$identity_pid" \
        "http://127.0.0.1:$((NOOP_IDENTITY + 100))/v1/orders/42" "$counts" "$KEY" -c 4 -m 25
      callgrind_per_request noop-http-identity/http1 "$identity_pid" \
        "http://127.0.0.1:$((NOOP_IDENTITY + 100))/v1/orders/42" "$counts" "$KEY" --h1 -c 32
      python3 - "$counts" <<'PY'
import sys
per = dict((name, int(n)) for name, n in (l.split() for l in open(sys.argv[1])))
for proto in ("h2c", "http1"):
    fa, noop = per[f"forward-auth/{proto}"], per[f"noop-http/{proto}"]
    print(f"instructions per request ({proto}): forward-auth {fa:,}, no-op {noop:,}: "
          f"no-op/forward-auth {noop / fa:.3f} (the throughput ratio a saturated core allows)")
for proto in ("h2c", "http1"):
    fa, noop, identity = (per[f"{name}/{proto}"]
                          for name in ("forward-auth", "noop-http", "noop-http-identity"))
    print(f"instructions per request ({proto}): no-op answering with keygate's headers "
          f"{identity:,}: no-op/that {noop / identity:.3f} (the best ratio any server giving "
          f"that answer can have), that/forward-auth {identity / fa:.3f}")
PY
      ;;
    *) echo "unknown part $part (direct, nginx, instructions)" >&2; exit 2 ;;
  esac
done
