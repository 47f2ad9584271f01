#!/usr/bin/env bash
# Python suites that drive keygate with real clients:
#   tests/py   Check through Envoy's generated ext_authz stubs (xds-protos)
#   tests/e2e  HTTP through the real Envoy binary (and a noop authz baseline)
# Needs the keygate binary: KEYGATE_BIN (default target/debug/keygate).
# Extra arguments go to pytest, e.g. scripts/test-py.sh -k rotation -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup-test-env.sh"
export ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv-envoy/bin/envoy-bin}"
export PYTHONDONTWRITEBYTECODE=1
exec "$ROOT/.venv-stubs/bin/pytest" -q -p no:cacheprovider tests/py tests/e2e "$@"
