"""keygate's ext_authz Check, driven with Envoy's generated stubs (xds-protos).

Fixtures (tests/pyharness/fixtures.py): `keygate` starts `keygate serve`
(KEYGATE_BIN, default target/debug/keygate) on free loopback ports with SQLite
in a temp dir and waits for grpc.health.v1 SERVING on the Check and KeyAdmin
listeners; `create_key(owner_id, **fields)` calls KeyAdmin/CreateKey through
stubs generated from proto/ at session start; `check(headers, path, method,
context_extensions, header_map)` sends a CheckRequest; `admin` has
revoke_key / rotate_key / suspend_owner / resume_owner.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyharness.fixtures import *  # noqa: E402,F401,F403
