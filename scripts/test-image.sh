#!/usr/bin/env bash
# Builds the OCI image with scripts/build-image.sh into a throw-away buildah
# store and tests it (tests/image): its user, its files, and the keygate in
# it serving Check.
#
# It packages KEYGATE_BIN (default target/debug/keygate, the binary
# `cargo test` built) rather than a release build: the packaging and the
# binary's behaviour are what is tested, and a release build would add
# about ten minutes of CPU to every CI run.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup-test-env.sh"
export KEYGATE_BIN="${KEYGATE_BIN:-$ROOT/target/debug/keygate}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# vfs: plain folders, where overlay mounts are not allowed (containers, CI).
STORAGE_DRIVER=vfs scripts/build-image.sh --binary "$KEYGATE_BIN" --tag localhost/keygate:test \
  --storage "$work/storage" --oci-dir "$work/oci"
export KEYGATE_IMAGE_OCI="$work/oci" PYTHONDONTWRITEBYTECODE=1
# --basetemp: the unpacked root filesystem goes away with $work.
"$ROOT/.venv-stubs/bin/pytest" -q -p no:cacheprovider --basetemp "$work/pytest" tests/image "$@"
