"""README.md as a new user reads it: its keys parse, its Envoy filter is the
example file's, its grpcurl walk-through and its Helm section's admin-token
command run as written against a real keygate."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import grpc
import pytest

from pyharness import grpcurl, keyformat
from pyharness.admin import AdminClient
from pyharness.authz import assert_denied

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXAMPLE_ENVOY = (ROOT / "examples/envoy/envoy.yaml").read_text()
# The chart's values.schema.json pattern for one admin token entry.
ENTRY = re.compile(r"^[^:,\s]+:(service|admin|feed):[0-9a-fA-F]{64}$")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else len(README)]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a block as bash reads them (a command ends at a line
    outside quotes that does not end in a backslash); comments dropped."""
    commands, current = [], []
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        text = "\n".join(current)
        if not line.endswith("\\") and _balanced(text):
            commands.append(text.strip())
            current = []
    assert not current, f"unterminated command: {current}"
    return commands


def _balanced(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
        return True
    except ValueError:
        return False


def test_every_key_in_the_readme_is_well_formed_or_clearly_a_shape() -> None:
    seen = 0
    for match in re.finditer(r"\bsk_(?:live|test)_([1-9A-HJ-NP-Za-km-z]*)(…)?", README):
        key, token, shape = match.group(0).rstrip("…"), match.group(1), match.group(2)
        if not token:
            assert shape, f"{key!r} is neither a key nor marked as a shape with …"
        elif len(token) == 8:
            continue  # a display prefix, as keygate stores and shows it
        else:
            assert keyformat.is_well_formed(key), f"the README's {key!r} is not a valid key"
            seen += 1
    assert seen >= 1


def test_the_readmes_example_key_passes_keygates_format_check(check) -> None:
    (key,) = {m.group(0) for m in re.finditer(r"\bsk_live_[1-9A-HJ-NP-Za-km-z]{38}\b", README)}
    # Well formed and never issued: unknown, not malformed.
    assert_denied(check({"authorization": f"Bearer {key}"}), 401, "invalid_key")


def _without_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        code = re.sub(r"\s+#.*$", "", line).rstrip()
        if code.strip() and not code.lstrip().startswith("#"):
            lines.append(code)
    return lines


def test_the_readmes_envoy_filter_is_the_example_files() -> None:
    snippet = _without_comments(_blocks(_section("Envoy"), "yaml")[0])
    example = _without_comments(EXAMPLE_ENVOY)
    start = next(i for i, line in enumerate(example) if line.strip() == snippet[0].strip())
    indent = len(example[start]) - len(example[start].lstrip())
    block = [line[indent:] for line in example[start:start + len(snippet)]]
    assert block == snippet
    following = example[start + len(snippet)]
    assert len(following) - len(following.lstrip()) <= indent, "the README's filter stops short"


def test_the_readmes_grpcurl_walkthrough_runs_as_written(keygate) -> None:
    (block,) = _blocks(_section("KeyAdmin walk-through with grpcurl"), "sh")
    commands = _commands(block)
    assert commands[0] == "keygate serve &"
    substitutions = {
        "127.0.0.1:50052": keygate.admin_addr,
        "127.0.0.1:50051": keygate.authz_addr,
    }
    created = None
    names = []
    for command in commands[1:]:
        assert command.startswith("grpcurl "), command
        for placeholder, value in substitutions.items():
            command = command.replace(placeholder, value)
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                             env={"PATH": f"{Path(grpcurl.grpcurl_bin()).parent}:/usr/bin:/bin"})
        method = command.split()[-1]
        names.append(method.rsplit("/", 1)[-1])
        assert run.returncode == 0, f"{method}: {run.stderr}{run.stdout}"
        answer = json.loads(run.stdout)
        if method.endswith("/CreateKey"):
            created = answer
            substitutions["<key id>"] = answer["apiKey"]["id"]
            substitutions["<key>"] = answer["key"]
        if method.endswith("/Check"):
            assert not answer.get("status", {}).get("code"), answer
            assert "okResponse" in answer, answer
    assert created is not None
    assert {"CreateKey", "ListKeys", "RotateKey", "Check", "GetKeyUsage", "RevokeKey"} <= set(names)


def test_reflection_on_each_listener_lists_exactly_its_services(keygate) -> None:
    common = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
              "grpc.reflection.v1alpha.ServerReflection"}
    for addr, own in ((keygate.authz_addr, "envoy.service.auth.v3.Authorization"),
                      (keygate.admin_addr, "keygate.admin.v1.KeyAdmin")):
        run = grpcurl.run("-plaintext", addr, "list")
        assert run.returncode == 0, run.stderr
        assert set(run.stdout.split()) == common | {own}


def test_the_helm_sections_admin_token_command_configures_a_working_token(
        keygate_bin, keygate_factory, admin_stubs, owner) -> None:
    (block,) = _blocks(_section("Helm"), "sh")
    eval_line = next(c for c in _commands(block) if c.startswith("eval "))
    script = textwrap.dedent(f"""\
        keygate() {{ {shlex.quote(str(keygate_bin))} "$@"; }}
        {eval_line}
        printf '%s\\n%s\\n' "$ADMIN_TOKEN" "$KEYGATE_ADMIN_TOKENS"
        """)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    token, entry = run.stdout.splitlines()
    assert ENTRY.match(entry), entry
    assert entry.startswith("ops:admin:")

    server = keygate_factory(extra_env={"KEYGATE_ADMIN_TOKENS": entry}, name="keygate-readme-token")
    with_token = AdminClient(server.admin_addr, admin_stubs, token=token)
    without = AdminClient(server.admin_addr, admin_stubs)
    try:
        assert with_token.create_key(owner).key.startswith("sk_live_")
        with pytest.raises(grpc.RpcError) as caught:
            without.create_key(owner)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        with_token.close()
        without.close()
