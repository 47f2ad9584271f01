#!/usr/bin/env bash
# Lints, renders and validates the Helm chart in charts/keygate, offline.
#
# Creates .venv-chart at the repo root on first use and installs the pinned
# tools from tests/chart/requirements.txt; later runs reuse it and reinstall
# only when that file changes. Extra arguments go to pytest, e.g.
#   scripts/test-chart.sh -k schema
# `scripts/test-chart.sh --setup` prepares the venv and runs nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-chart"
requirements="$root/tests/chart/requirements.txt"
stamp="$venv/.requirements.sha256"

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "test-chart: $python not found" >&2; exit 1; }

if [[ ! -x "$venv/bin/python" ]]; then
  echo "test-chart: creating $venv" >&2
  "$python" -m venv "$venv"
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "test-chart: installing tools from tests/chart/requirements.txt" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
  echo "$want" >"$stamp"
fi
# --setup: the venv only (scripts/test.sh prepares it while cargo compiles).
[[ "${1:-}" != --setup ]] || exit 0

cd "$root"
exec "$venv/bin/python" -m pytest tests/chart -p no:cacheprovider -q "$@"
