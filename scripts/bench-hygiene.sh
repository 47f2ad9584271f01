#!/usr/bin/env bash
# Key hygiene (README "Key hygiene"): what an IP allow-list and an imported
# key cost the Check path, and how fast `keygate import` stores keys.
#
#   check    Check throughput (h2load, gRPC, -c 4 -m 25, cache hits) for
#            three keys on one keygate, rounds interleaved:
#              plain       a key issued by keygate, no allow-list;
#              allow-list  a key issued by keygate with 10 `allowed_cidrs`
#                          (IPv4 and IPv6), the client's network last, so
#                          that every entry is looked at;
#              imported    an `lk_` key imported by `keygate import` (found by
#                          the SHA-256 of the whole string, no checksum).
#            The client IP comes from `x-forwarded-for` with
#            KEYGATE_TRUSTED_PROXY_HOPS=1 for all three. Every answer must
#            be an allowance (keygate_check_decisions_total is read after
#            the rounds).
#   instructions
#            instructions per Check for each of the three keys, counted by
#            callgrind in keygate's process (usage off, so that only the
#            Check is counted): warmed up, counters zeroed, BENCH_CHECKS
#            Checks, counters dumped; one key after the other on one
#            server. Immune to machine load: the figure of record.
#   import   `keygate import` (release build) of BENCH_IMPORT_ROWS rows given
#            by SHA-256 into a fresh PostgreSQL database, then the same file
#            again (every row already present).
#
# keygate runs on BENCH_SERVER_CPU; h2load on BENCH_CLIENT_CPU.
#
# Usage: scripts/bench-hygiene.sh [check|instructions|import]...  (default all)
# Env:   BENCH_H2LOAD_DURATION (seconds per round, default 5),
#        BENCH_H2LOAD_ROUNDS (default 3), BENCH_CHECKS (counted by callgrind,
#        default 3000), BENCH_IMPORT_ROWS (default 100000),
#        BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432),
#        BENCH_NO_BUILD, BENCH_BIN, BENCH_SERVER_CPU / BENCH_CLIENT_CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

DURATION="${BENCH_H2LOAD_DURATION:-5}"
ROUNDS="${BENCH_H2LOAD_ROUNDS:-3}"
IMPORT_ROWS="${BENCH_IMPORT_ROWS:-100000}"
CHECKS="${BENCH_CHECKS:-3000}"
SECTIONS=("$@")
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(check instructions import)
BENCH_WORK="$(mktemp -d)"
export BENCH_WORK
IMPORT_DB="keygate_bench_import_$$"
trap 'bench_cleanup; rm -rf "$BENCH_WORK"; psql_admin "DROP DATABASE IF EXISTS $IMPORT_DB" 2>/dev/null || true' EXIT

ensure_h2load
[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2
KEYS=(plain allow-list imported)

AUTHZ=58151 ADMIN=58152 METRICS=58190 HTTP=58180
DB="sqlite://$BENCH_WORK/keys.db"
eval "$("$BIN/keygate" admin-token --name bench --role admin --format env)"
SETTINGS=(KEYGATE_DATABASE_URL="$DB" KEYGATE_HTTP_ADDR="127.0.0.1:$HTTP"
  KEYGATE_ADMIN_TOKENS="$KEYGATE_ADMIN_TOKENS" KEYGATE_IMPORTED_PREFIXES=lk_
  KEYGATE_TRUSTED_PROXY_HOPS=1)

# --- the three keys ----------------------------------------------------------

# The imported key: `lk_` and 40 characters, as the system keygate replaces
# issued them.
make_imported_key() {
  python3 - "$BENCH_WORK/imported.key" "$BENCH_WORK/import-one.jsonl" <<'PY'
import json, secrets, string, sys
alphabet = string.ascii_letters + string.digits
key = "lk_" + "".join(secrets.choice(alphabet) for _ in range(40))
open(sys.argv[1], "w").write(key + "\n")
row = {"owner_id": "bench", "name": "imported", "abilities": ["read:orders"], "key": key}
open(sys.argv[2], "w").write(json.dumps(row) + "\n")
PY
}

# create NAME CIDRS_JSON: a key issued over REST; its plaintext goes to
# $BENCH_WORK/NAME.key, never to a command line.
create() {
  curl -sf -X POST "http://127.0.0.1:$HTTP/v1/api-keys" -H "authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' \
    -d "{\"owner_id\":\"bench\",\"name\":\"$1\",\"abilities\":[\"read:orders\"],\"allowed_cidrs\":$2}" \
    >"$BENCH_WORK/$1.json" || { log "cannot create the $1 key"; exit 1; }
  json "$BENCH_WORK/$1.json" 'd["data"]["key"]' >"$BENCH_WORK/$1.key"
}

# keys_ready: the database with the three keys, and a request body for
# each in $BENCH_WORK/NAME.body; made once, by the first section needing them.
keys_ready() {
  [[ ! -f "$BENCH_WORK/imported.body" ]] || return 0
  make_imported_key
  # Imported while keygate is stopped (SQLite).
  env "${SETTINGS[@]}" "$BIN/keygate" migrate >"$BENCH_WORK/migrate.log" 2>&1
  env "${SETTINGS[@]}" "$BIN/keygate" import "$BENCH_WORK/import-one.jsonl" >"$BENCH_WORK/import-one.log" 2>&1 \
    || { cat "$BENCH_WORK/import-one.log" >&2; log "cannot import the benchmark key"; exit 1; }
  serve
  create plain '[]'
  # Nine networks the client is not in, then its own (203.0.113.7 is the
  # client of keygate-bench's Check request).
  create allow-list '["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16","198.51.100.0/24","100.64.0.0/10","2001:db8::/32","fd00::/8","2001:db8:1::/48","192.0.2.0/24","203.0.113.0/24"]'
  local name
  for name in "${KEYS[@]}"; do
    "$BIN/keygate-bench" grpc-body --token-file "$BENCH_WORK/$name.key" --out "$BENCH_WORK/$name.body"
  done
  stop_pid "$KG_PID"
}

# serve [WRAP...]: keygate on the database of the three keys (start_keygate
# makes a fresh database only under its own name, keygate.db).
serve() {
  BENCH_WRAP="$*" start_keygate keygate "$AUTHZ" "$ADMIN" "$METRICS" "${SETTINGS[@]}"
  wait_port "$HTTP" 2400
}

# h2load_checks NAME [h2load options...]: Checks with NAME's body.
h2load_checks() {
  local name="$1"; shift
  taskset -c "$CLIENT_CPU" h2load "$@" \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$BENCH_WORK/$name.body" \
    "http://127.0.0.1:$AUTHZ/envoy.service.auth.v3.Authorization/Check"
}

# every_check_allowed: the figures are void if any Check was denied.
every_check_allowed() {
  local allowed all
  allowed="$(metric "$METRICS" 'keygate_check_decisions_total{code="allowed"}')"
  all="$(metric "$METRICS" keygate_check_decisions_total)"
  echo "decisions: $all, allowed: $allowed"
  [[ "$allowed" == "$all" && "$all" -gt 0 ]] || { log "some Checks were denied: the figures are void"; exit 1; }
}

# --- check -----------------------------------------------------------------

section_check() {
  keys_ready
  serve
  local results="$BENCH_WORK/results.txt" round name out
  : >"$results"
  log "check: ${DURATION}s rounds, ${KEYS[*]}, interleaved"
  for round in $(seq 1 "$ROUNDS"); do
    for name in "${KEYS[@]}"; do
      out="$BENCH_WORK/$name-$round.txt"
      note_load "$name-$round" "$BENCH_WORK/load.txt"
      h2load_checks "$name" -D "$DURATION" --warm-up-time 1 -c 4 -m 25 >"$out" 2>&1
      echo "$name $(h2load_rps "$out")" | tee -a "$results"
    done
  done
  every_check_allowed
  stop_pid "$KG_PID"
  round_ratios "$results" plain allow-list imported
}

# --- instructions ----------------------------------------------------------

section_instructions() {
  command -v callgrind_control >/dev/null || apt-get install -y -qq valgrind >/dev/null
  keys_ready
  local out="$BENCH_WORK/hygiene.callgrind" name ir
  rm -f "$out" "$out".*
  SETTINGS+=(KEYGATE_USAGE_ENABLED=false)
  serve valgrind --tool=callgrind --callgrind-out-file="$out"
  log "instructions: $CHECKS Checks per key under callgrind"
  for name in "${KEYS[@]}"; do
    # Warm-up: connections, the cache entry, the allocator.
    h2load_checks "$name" -n 500 -c 2 -m 10 >"$BENCH_WORK/$name-warmup.txt" 2>&1
    sleep 1
    callgrind_control -z "$KG_PID" >/dev/null 2>&1
    h2load_checks "$name" -n "$CHECKS" -c 2 -m 10 >"$BENCH_WORK/$name-counted.txt" 2>&1
    grep -q "requests: $CHECKS total, $CHECKS started, $CHECKS done, $CHECKS succeeded" \
      "$BENCH_WORK/$name-counted.txt" || { log "not every $name Check succeeded"; exit 1; }
    ir="$(callgrind_ir "$KG_PID" "$out")"
    echo "instructions $name $((ir / CHECKS))" | tee -a "$BENCH_WORK/instructions.txt"
  done
  every_check_allowed
  stop_pid "$KG_PID"
  unset 'SETTINGS[-1]'
  python3 - "$BENCH_WORK/instructions.txt" <<'PY'
import sys
per = {name: int(n) for _, name, n in (l.split() for l in open(sys.argv[1]))}
for name in ("allow-list", "imported"):
    print(f"instructions per Check: {name} {per[name]:,}, plain {per['plain']:,}: "
          f"{per[name] / per['plain']:.3f}x")
PY
}

# --- import ----------------------------------------------------------------

section_import() {
  log "import: $IMPORT_ROWS rows by SHA-256 into PostgreSQL ($IMPORT_DB)"
  psql_admin "CREATE DATABASE $IMPORT_DB"
  KEYGATE_DATABASE_URL="$PG_BASE/$IMPORT_DB" "$BIN/keygate" migrate >"$BENCH_WORK/migrate-pg.log" 2>&1
  # 1,000 owners: each batch of 1,000 rows reaches many owners, as an
  # import of one key per customer does.
  python3 - "$IMPORT_ROWS" "$BENCH_WORK/import.jsonl" <<'PY'
import hashlib, json, os, sys
rows, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as out:
    for i in range(rows):
        digest = hashlib.sha256(b"lk_" + os.urandom(30)).hexdigest()
        out.write(json.dumps({"owner_id": f"owner-{i % 1000}", "name": f"legacy {i}",
                              "abilities": ["read:orders"], "key_sha256": digest}) + "\n")
PY
  import_run new
  local stored
  stored="$(psql "$PG_BASE/$IMPORT_DB" -qAtc 'SELECT count(*) FROM api_keys')"
  echo "keys stored: $stored"
  [[ "$stored" == "$IMPORT_ROWS" ]] || { log "expected $IMPORT_ROWS keys stored"; exit 1; }
  import_run again
}

# import_run LABEL: one `keygate import` of the file, timed; the audit
# lines go to a file as they would to a log collector.
import_run() {
  note_load "import-$1" "$BENCH_WORK/load.txt"
  local start end
  start=$(date +%s.%N)
  env KEYGATE_DATABASE_URL="$PG_BASE/$IMPORT_DB" KEYGATE_IMPORTED_PREFIXES=lk_ \
    taskset -c "$SERVER_CPU" "$BIN/keygate" import "$BENCH_WORK/import.jsonl" \
    >"$BENCH_WORK/import-$1.log" 2>&1 \
    || { tail -5 "$BENCH_WORK/import-$1.log" >&2; log "the import failed"; exit 1; }
  end=$(date +%s.%N)
  python3 -c "import sys; n, s = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'import ({sys.argv[4]}): {n} rows in {s:.2f} s = {n / s:.0f} rows/s')" \
    "$IMPORT_ROWS" "$start" "$end" "$1"
}

for section in "${SECTIONS[@]}"; do
  case "$section" in
    check|instructions|import) "section_$section" ;;
    *) log "unknown section $section (check, instructions, import)"; exit 2 ;;
  esac
done
