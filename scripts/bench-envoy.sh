#!/usr/bin/env bash
# Latency through a real Envoy at a fixed rate (default 1,000 req/s):
#   envoy-alone     route with ext_authz disabled
#   envoy+keygate   ext_authz → keygate (SQLite, usage on), valid keys
#   envoy+noop      ext_authz → keygate-bench's no-op server
# Every route answers with Envoy's `direct_response`, so no upstream cost
# is in any of the three. Envoy (--concurrency 1), keygate and the no-op
# server share BENCH_SERVER_CPU; the load generator runs on BENCH_CLIENT_CPU.
# Prints keygate-bench's JSON on stdout.
#
# Usage: scripts/bench-envoy.sh [extra keygate-bench http flags]
# Env:   BENCH_RATE (default 1000), BENCH_ENVOY_DURATION (per round, default
#        10s), BENCH_ENVOY_ROUNDS (interleaved rounds, default 5),
#        BENCH_NO_BUILD, BENCH_SERVER_CPU, BENCH_CLIENT_CPU as for bench.sh.
# Needs .venv-envoy (scripts/setup-test-env.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
cd "$BENCH_ROOT"

ENVOY="${ENVOY_BIN:-$BENCH_ROOT/.venv-envoy/bin/envoy-bin}"
[[ -x "$ENVOY" ]] || ENVOY="$(scripts/setup-test-env.sh --print-envoy)"
RATE="${BENCH_RATE:-1000}"
DURATION="${BENCH_ENVOY_DURATION:-10s}"
ROUNDS="${BENCH_ENVOY_ROUNDS:-5}"
BENCH_WORK="${BENCH_WORK:-}"
OWN_WORK=""
if [[ -z "$BENCH_WORK" ]]; then BENCH_WORK="$(mktemp -d)"; OWN_WORK="$BENCH_WORK"; fi
trap 'bench_cleanup; [[ -n "$OWN_WORK" ]] && rm -rf "$OWN_WORK"' EXIT

[[ "${BENCH_NO_BUILD:-}" == 1 ]] || cargo build --release --bins >&2

KG_AUTHZ=54051 KG_ADMIN=54052 KG_METRICS=54090 NOOP=54061
LISTEN_KG=54080 LISTEN_NOOP=54081 ENVOY_ADMIN=54901

start_keygate envoy-keygate "$KG_AUTHZ" "$KG_ADMIN" "$KG_METRICS"
taskset -c "$SERVER_CPU" "$BIN/keygate-bench" noop-server --listen "127.0.0.1:$NOOP" \
  >"$BENCH_WORK/noop.log" 2>&1 &
BENCH_PIDS+=("$!")
wait_port "$NOOP"

# One ext_authz listener per authorization server. `allowed_headers`,
# timeout and failure settings as in the README's example.
listener() {
  local name="$1" port="$2" cluster="$3"
  cat <<YAML
  - name: $name
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $name
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: { prefix: /public }
                direct_response: { status: 200, body: { inline_string: "ok" } }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    disabled: true
              - match: { prefix: / }
                direct_response: { status: 200, body: { inline_string: "ok" } }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: { keygate.abilities: "read:orders" }
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: $cluster }, timeout: 0.2s }
              failure_mode_allow: false
              status_on_error: { code: ServiceUnavailable }
              validate_mutations: true
              allowed_headers:
                patterns: [{ exact: authorization }, { exact: x-api-key }, { exact: x-forwarded-for }]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
YAML
}
cluster() {
  local name="$1" port="$2"
  cat <<YAML
  - name: $name
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: $name
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $port } } }
YAML
}
{
  echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN } } }"
  echo "static_resources:"
  echo "  listeners:"
  listener via_keygate "$LISTEN_KG" keygate
  listener via_noop "$LISTEN_NOOP" noop
  echo "  clusters:"
  cluster keygate "$KG_AUTHZ"
  cluster noop "$NOOP"
} >"$BENCH_WORK/envoy.yaml"

taskset -c "$SERVER_CPU" "$ENVOY" -c "$BENCH_WORK/envoy.yaml" --concurrency 1 \
  --base-id "$((RANDOM * 7 + 1000))" -l warning >"$BENCH_WORK/envoy.log" 2>&1 &
ENVOY_PID=$!
BENCH_PIDS+=("$ENVOY_PID")
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ENVOY_ADMIN/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ENVOY_ADMIN/ready" >/dev/null || { cat "$BENCH_WORK/envoy.log" >&2; exit 1; }
# Sanity: the authz'd route must deny a request without a key.
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LISTEN_KG/orders")"
[[ "$code" == 401 ]] || { log "expected 401 without a key through keygate, got $code"; exit 1; }

log "envoy: $RATE req/s, $ROUNDS rounds of $DURATION per scenario"
taskset -c "$CLIENT_CPU" "$BIN/keygate-bench" http \
  --admin "127.0.0.1:$KG_ADMIN" --rate "$RATE" --duration "$DURATION" --rounds "$ROUNDS" \
  --warmup 1s --server-pid "$ENVOY_PID" \
  --scenario "envoy-alone=http://127.0.0.1:$LISTEN_KG/public/orders/42" \
  --scenario "envoy+keygate=http://127.0.0.1:$LISTEN_KG/v1/orders/42" \
  --scenario "envoy+noop=http://127.0.0.1:$LISTEN_NOOP/v1/orders/42" \
  --json "$@"
