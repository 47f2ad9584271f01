# Helpers shared by scripts/bench*.sh (sourced, not run).
#
# Every process started here is recorded and stopped by its own pid on exit.

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BENCH_BIN:-$BENCH_ROOT/target/release}"
# Two cores: the server(s) under test on one, the load generator on the other.
SERVER_CPU="${BENCH_SERVER_CPU:-0}"
CLIENT_CPU="${BENCH_CLIENT_CPU:-1}"
PG_BASE="${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"

BENCH_PIDS=()
bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# Removes $BENCH_WORK, or keeps it and says where when BENCH_KEEP_WORK is
# set (its logs and callgrind dumps, to read afterwards).
bench_remove_work() {
  if [[ -n "${BENCH_KEEP_WORK:-}" ]]; then log "kept $BENCH_WORK"; else rm -rf "$BENCH_WORK"; fi
}

# Records the machine's load before a measurement; warns when a compiler or
# another heavy process is running (the figure would be noisy).
note_load() {
  local label="$1" file="$2"
  {
    echo "== $label: $(date -Is)"
    uptime
    top -bn1 | head -15
  } >>"$file"
  if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then
    log "WARNING: cargo/rustc is running during '$label': the figure will be noisy"
    echo "WARNING: cargo/rustc running" >>"$file"
  fi
}

# wait_port PORT [TRIES]: TRIES x 50 ms (default 200: 10 s; a server under
# valgrind needs longer).
wait_port() {
  local port="$1" tries="${2:-200}" i
  for i in $(seq 1 "$tries"); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  log "nothing listens on port $port"; return 1
}

# start_keygate NAME AUTHZ_PORT ADMIN_PORT METRICS_PORT [VAR=value...]
# Starts `keygate serve` on SERVER_CPU with a fresh SQLite database unless
# KEYGATE_DATABASE_URL is among the extra variables; sets KG_PID. The words
# of BENCH_WRAP (e.g. `valgrind --tool=callgrind`) come before the binary;
# they exec it, so KG_PID is keygate's pid still.
start_keygate() {
  local name="$1" authz="$2" admin="$3" metrics="$4"; shift 4
  local db="$BENCH_WORK/$name.db"
  rm -f "$db" "$db-wal" "$db-shm"
  env KEYGATE_DATABASE_URL="sqlite://$db" \
      KEYGATE_AUTHZ_ADDR="127.0.0.1:$authz" \
      KEYGATE_ADMIN_ADDR="127.0.0.1:$admin" \
      KEYGATE_METRICS_ADDR="127.0.0.1:$metrics" \
      KEYGATE_FORWARD_AUTH_ADDR="127.0.0.1:0" \
      RUST_LOG="${BENCH_RUST_LOG:-warn}" \
      "$@" \
      taskset -c "$SERVER_CPU" ${BENCH_WRAP:-} "$BIN/keygate" serve >"$BENCH_WORK/$name.log" 2>&1 &
  KG_PID=$!
  BENCH_PIDS+=("$KG_PID")
  local tries=200
  [[ -z "${BENCH_WRAP:-}" ]] || tries=2400
  wait_port "$authz" "$tries" && wait_port "$admin" "$tries"
}

stop_pid() {
  local pid="$1" p keep=()
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${BENCH_PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

# The value of one counter on a Prometheus endpoint (0 when absent).
metric() {
  local port="$1" name="$2"
  python3 - "$port" "$name" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
except Exception:
    print("n/a"); sys.exit()
total = sum(float(l.split()[-1]) for l in text.splitlines()
            if l.startswith(name) and not l.startswith("#") and (l[len(name)] in " {"))
print(int(total))
PY
}

# json FILE EXPR: evaluates a Python expression over the JSON in FILE (as `d`).
json() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

psql_admin() { psql "$PG_BASE/postgres" -v ON_ERROR_STOP=1 -qAtc "$1"; }

# The bucket bounds holding quantiles of keygate's own Check histogram
# (`keygate_check_duration_seconds`: time inside the handler, transport
# excluded), cumulative since start: "p50<=X p99<=Y (n=N)".
check_duration_buckets() {
  local port="$1"
  python3 - "$port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
buckets = []
for line in text.splitlines():
    if line.startswith("keygate_check_duration_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
buckets.sort()
total = buckets[-1][1] if buckets else 0
def q(p):
    for le, n in buckets:
        if n >= p * total:
            return "inf" if le == float("inf") else f"{le * 1e6:g}us"
print(f"p50<={q(0.5)} p99<={q(0.99)} p99.9<={q(0.999)} (n={int(total)})")
PY
}

# h2load (Debian's nghttp2-client): the throughput generator of record,
# installed when missing.
ensure_h2load() {
  command -v h2load >/dev/null && return 0
  log "installing nghttp2-client (h2load)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq nghttp2-client >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; } \
    || { log "cannot install nghttp2-client (h2load)"; return 1; }
}

# Requests per second and 2xx answers from an h2load report.
h2load_rps() { sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$1"; }
h2load_2xx() { sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$1"; }

# round_ratios FILE BASE NAME...: FILE holds "scenario req/s" lines, the
# scenarios interleaved round by round; prints each NAME's median ratio to
# BASE, with the ratio of every round (the i-th NAME run to the i-th BASE).
round_ratios() {
  python3 - "$@" <<'PY'
import statistics, sys
path, base, names = sys.argv[1], sys.argv[2], sys.argv[3:]
by = {}
for name, rps in (line.split() for line in open(path) if line.strip()):
    by.setdefault(name, []).append(float(rps))
for name in names:
    ratios = [x / y for x, y in zip(by[name], by[base])]
    print(f"{name}/{base}: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; {name} median "
          f"{statistics.median(by[name]):.0f} req/s, {base} median {statistics.median(by[base]):.0f} req/s)")
PY
}

# callgrind_ir PID FILE: dumps the counters of the process PID runs under
# `valgrind --tool=callgrind --callgrind-out-file=FILE` (after a second for
# in-flight work to settle) and prints the instructions (Ir) the dump holds:
# those since the last `callgrind_control -z`.
callgrind_ir() {
  local pid="$1" file="$2" dump before after ir
  before="$(ls "$file".* 2>/dev/null | wc -l)"
  sleep 1
  callgrind_control -d "$pid" >/dev/null || { log "callgrind_control -d $pid failed"; return 1; }
  sleep 0.5
  # A new dump, not an older one of the same run.
  after="$(ls "$file".* 2>/dev/null | wc -l)"
  (( after > before )) || { log "no new callgrind dump next to $file"; return 1; }
  dump="$(ls -t "$file".* | head -1)"
  ir="$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")"
  [[ -n "$ir" ]] || { log "no instruction total in $dump"; return 1; }
  echo "$ir"
}

# callgrind_per_request NAME PID URL OUT KEY H2LOAD_FLAGS...: instructions
# PID (running under callgrind) spends per request to URL carrying KEY as a
# bearer token, steady state (BENCH_REQUESTS, default 20000, after 2000 not
# counted); appends "NAME N" to OUT.
callgrind_per_request() {
  local name="$1" pid="$2" url="$3" out="$4" key="$5" requests="${BENCH_REQUESTS:-20000}" ir
  shift 5
  local file="$BENCH_WORK/${name%%/*}.callgrind"
  taskset -c "$CLIENT_CPU" h2load -n 2000 "$@" -H "authorization: Bearer $key" "$url" \
    >"$BENCH_WORK/warmup.txt" 2>&1
  sleep 1
  callgrind_control -z "$pid" >/dev/null 2>&1
  taskset -c "$CLIENT_CPU" h2load -n "$requests" "$@" -H "authorization: Bearer $key" "$url" \
    >"$BENCH_WORK/counted.txt" 2>&1
  grep -q "status codes: $requests 2xx" "$BENCH_WORK/counted.txt" \
    || { cat "$BENCH_WORK/counted.txt" >&2; log "$name: not every request got a 2xx"; exit 1; }
  ir="$(callgrind_ir "$pid" "$file")"
  echo "$name $((ir / requests))" | tee -a "$out"
}
