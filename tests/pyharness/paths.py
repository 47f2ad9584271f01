"""Where things are."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
KEY_ADMIN_PROTO = PROTO_DIR / "keygate" / "admin" / "v1" / "key_admin.proto"
E2E_DIR = REPO_ROOT / "tests" / "e2e"
ENVOY_TEMPLATE = E2E_DIR / "envoy.yaml.tmpl"
ENVOY_EXAMPLE = REPO_ROOT / "examples" / "envoy" / "envoy.yaml"
ENVOY_HTTP_TEMPLATE = E2E_DIR / "envoy-http.yaml.tmpl"
ENVOY_HTTP_EXAMPLE = REPO_ROOT / "examples" / "envoy" / "envoy-http.yaml"
ENVOY_MODULE_TEMPLATE = E2E_DIR / "envoy-module.yaml.tmpl"


def keygate_bin() -> Path:
    """KEYGATE_BIN, default target/debug/keygate (relative paths: repo root)."""
    p = Path(os.environ.get("KEYGATE_BIN", "target/debug/keygate"))
    return p if p.is_absolute() else REPO_ROOT / p


def envoy_bin() -> Path:
    """ENVOY_BIN, default .venv-envoy/bin/envoy-bin (made by setup-test-env.sh)."""
    p = Path(os.environ.get("ENVOY_BIN", ".venv-envoy/bin/envoy-bin"))
    return p if p.is_absolute() else REPO_ROOT / p


def envoy_module_dir() -> Path:
    """KEYGATE_ENVOY_MODULE_DIR, default target/debug/deps: the directory
    holding libkeygate_envoy.so, the keygate-envoy crate's cdylib. `cargo
    test` leaves it only there (`cargo build` also copies it to
    target/debug)."""
    p = Path(os.environ.get("KEYGATE_ENVOY_MODULE_DIR", "target/debug/deps"))
    return p if p.is_absolute() else REPO_ROOT / p
