"""The REST API's served OpenAPI document, checked by real tools against the
real binary on SQLite: `openapi-spec-validator` validates the document, and
`schemathesis` fuzzes every operation against it (bounded examples per
operation): no server error, no response outside the documented statuses,
content types and schemas.

Both tools live in .venv-api (scripts/setup-test-env.sh)."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from pyharness.paths import REPO_ROOT

API_VENV = REPO_ROOT / ".venv-api" / "bin"
# Examples per operation; REST_FUZZ_EXAMPLES raises it for a longer run.
EXAMPLES = int(os.environ.get("REST_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def rest(keygate_factory):
    """A keygate with no admin tokens: the loopback REST API treats every
    token-less caller as a local administrator, so the fuzzer reaches every
    route's validation rather than stopping at 401."""
    server = keygate_factory(name="keygate-rest")
    return f"http://{server.http_addr}"


def test_the_served_document_is_valid_openapi_3_1(rest, tmp_path: Path):
    with urllib.request.urlopen(f"{rest}/openapi.json", timeout=10) as response:
        document = json.load(response)
    assert document["openapi"].startswith("3.1")
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document))
    result = subprocess.run([str(API_VENV / "openapi-spec-validator"), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fuzzing_every_operation_finds_no_server_error_or_schema_violation(rest, tmp_path: Path):
    report = tmp_path / "junit.xml"
    result = subprocess.run(
        [str(API_VENV / "schemathesis"), "run", f"{rest}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,"
                     "content_type_conformance,response_schema_conformance",
         "--max-examples", str(EXAMPLES),
         "--phases", "examples,coverage,fuzzing",
         "--seed", "15",
         "--request-timeout", "10",
         "--report", "junit", "--report-junit-path", str(report)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
