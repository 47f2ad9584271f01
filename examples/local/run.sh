#!/usr/bin/env bash
# keygate, Envoy (examples/envoy/envoy.yaml) and a tiny upstream on this
# machine:
#
#   curl :8080 ──▶ Envoy ──Check──▶ keygate (127.0.0.1:50051, KeyAdmin :50052,
#                    │                        REST :8088 (Envoy has :8080),
#                    │                        SQLite in a temporary folder)
#                    └─allowed─▶ examples/local/upstream.py (127.0.0.1:8000)
#
# Usage: examples/local/run.sh [--smoke]
#   Without arguments it creates a key, prints curl commands to try, and
#   runs until Ctrl-C. --smoke checks instead that the key gets 200 through
#   Envoy, that a revoke turns it into 401, and exits (the suite runs this,
#   beside other tests: on free ports instead of the ones above, written
#   into a copy of examples/envoy/envoy.yaml).
# Env: KEYGATE_BIN  default `keygate` on PATH, else target/release/keygate,
#                   else target/debug/keygate
#      ENVOY_BIN    default `envoy` on PATH, else .venv-envoy/bin/envoy-bin
#      GRPCURL      default `grpcurl` on PATH, else .venv-stubs/bin/grpcurl
#      (scripts/setup-test-env.sh installs those two)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
die() { echo "examples/local: $*" >&2; exit 1; }

first() { for c in "$@"; do [[ -n "$c" && -x "$c" ]] && { echo "$c"; return; }; done; return 1; }
KEYGATE_BIN="${KEYGATE_BIN:-$(first "$(command -v keygate || true)" "$ROOT/target/release/keygate" "$ROOT/target/debug/keygate")}" \
  || die "no keygate: cargo install --locked --path . (or set KEYGATE_BIN)"
ENVOY_BIN="${ENVOY_BIN:-$(first "$(command -v envoy || true)" "$ROOT/.venv-envoy/bin/envoy-bin")}" \
  || die "no envoy: run scripts/setup-test-env.sh (or set ENVOY_BIN)"
GRPCURL="${GRPCURL:-$(first "$(command -v grpcurl || true)" "$ROOT/.venv-stubs/bin/grpcurl")}" \
  || die "no grpcurl: run scripts/setup-test-env.sh (or set GRPCURL)"

work="$(mktemp -d)"
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT

# Polls "$@" for up to 30 s.
await() {
  local what="$1"; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  # The folder goes when the script exits: show the logs' ends first.
  tail -n 20 "$work"/*.log >&2 || true
  die "$what did not come up (the logs above)"
}

# Envoy's listener and admin, keygate's Check, KeyAdmin, metrics, REST and
# forward-auth, the upstream.
if [[ "${1:-}" == "--smoke" ]]; then
  # Fixed ports can be taken by another test's connections (they are in
  # the ephemeral range): ask the kernel for free ones.
  read -r API ENVOY_ADMIN AUTHZ ADMIN METRICS HTTP FORWARD UPSTREAM < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
else
  API=8080 ENVOY_ADMIN=9901 AUTHZ=50051 ADMIN=50052 METRICS=9090 HTTP=8088 FORWARD=8081 UPSTREAM=8000
fi
sed -e "s/port_value: 8080 }/port_value: $API }/" -e "s/port_value: 9901 }/port_value: $ENVOY_ADMIN }/" \
  -e "s/port_value: 50051 }/port_value: $AUTHZ }/" -e "s/port_value: 8000 }/port_value: $UPSTREAM }/" \
  "$ROOT/examples/envoy/envoy.yaml" >"$work/envoy.yaml"
for port in "$API" "$ENVOY_ADMIN" "$AUTHZ" "$UPSTREAM"; do
  grep -q "port_value: $port }" "$work/envoy.yaml" \
    || die "examples/envoy/envoy.yaml no longer has the ports this script sets: update it"
done

python3 "$ROOT/examples/local/upstream.py" "$UPSTREAM" &
pids+=($!)
KEYGATE_DATABASE_URL="sqlite://$work/keygate.db" KEYGATE_AUTHZ_ADDR="127.0.0.1:$AUTHZ" \
  KEYGATE_ADMIN_ADDR="127.0.0.1:$ADMIN" KEYGATE_METRICS_ADDR="127.0.0.1:$METRICS" \
  KEYGATE_HTTP_ADDR="127.0.0.1:$HTTP" KEYGATE_FORWARD_AUTH_ADDR="127.0.0.1:$FORWARD" \
  "$KEYGATE_BIN" serve >"$work/keygate.log" 2>&1 &
pids+=($!)
"$ENVOY_BIN" -c "$work/envoy.yaml" --disable-hot-restart --log-level warn \
  >"$work/envoy.log" 2>&1 &
pids+=($!)

await keygate "$GRPCURL" -plaintext "127.0.0.1:$AUTHZ" grpc.health.v1.Health/Check
await upstream python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$UPSTREAM/')"
await Envoy python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$ENVOY_ADMIN/ready')"

created="$("$GRPCURL" -plaintext -d '{"owner_id":"acme","name":"local example","abilities":["read:orders"]}' \
  "127.0.0.1:$ADMIN" keygate.admin.v1.KeyAdmin/CreateKey)"
key="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' <<<"$created")"
id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"]["id"])' <<<"$created")"

# The HTTP status of GET http://127.0.0.1:$API$1 with the key.
status() {
  python3 - "$1" "$key" "$API" <<'PY'
import sys, urllib.error, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[3]}" + sys.argv[1], headers={"authorization": "Bearer " + sys.argv[2]})
try:
    print(urllib.request.urlopen(req).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
}

if [[ "${1:-}" == "--smoke" ]]; then
  [[ "$(status /orders)" == 200 ]] || die "a fresh key was not let through to /orders"
  "$GRPCURL" -plaintext -d "{\"owner_id\":\"acme\",\"id\":\"$id\",\"reason\":\"smoke test\"}" \
    "127.0.0.1:$ADMIN" keygate.admin.v1.KeyAdmin/RevokeKey >/dev/null
  [[ "$(status /orders)" == 401 ]] || die "a revoked key was not refused"
  echo "examples/local: 200 with the key, 401 once revoked"
  exit 0
fi

cat <<INFO
keygate, Envoy and the upstream are running (logs in $work). A key for owner acme:
  $key
Try:
  curl -i -H 'Authorization: Bearer $key' http://127.0.0.1:8080/orders
  curl -i http://127.0.0.1:8080/orders                      # 401 missing_credentials
  curl -i -H 'Authorization: Bearer $key' http://127.0.0.1:8080/admin-only   # 403 insufficient_ability
Revoke it:
  $GRPCURL -plaintext -d '{"owner_id":"acme","id":"$id","reason":"done"}' 127.0.0.1:50052 keygate.admin.v1.KeyAdmin/RevokeKey
Ctrl-C stops everything.
INFO
wait
