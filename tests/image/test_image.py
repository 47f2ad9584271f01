"""The OCI image that scripts/build-image.sh writes, read as an OCI layout
(KEYGATE_IMAGE_OCI) with the standard library, and the keygate in it run.

Containers cannot be started on every machine that runs this suite, so the
image's root filesystem is unpacked and keygate is run inside it with
`chroot --userspec=65532:65532`: the same files, the same loader and
libraries, the image's user. Run with scripts/test-image.sh.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyharness.admin import AdminClient  # noqa: E402
from pyharness.authz import AuthzClient, assert_allowed, assert_denied  # noqa: E402
from pyharness.fixtures import admin_stubs, owner  # noqa: E402,F401
from pyharness.keygateproc import KeygateServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NON_ROOT = 65532


def _layout() -> Path:
    path = os.environ.get("KEYGATE_IMAGE_OCI")
    if not path:
        pytest.fail("KEYGATE_IMAGE_OCI is not set: run scripts/test-image.sh", pytrace=False)
    return Path(path)


def _blob(layout: Path, digest: str) -> Path:
    algorithm, value = digest.split(":", 1)
    return layout / "blobs" / algorithm / value


@pytest.fixture(scope="module")
def manifest() -> dict:
    layout = _layout()
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return json.loads(_blob(layout, entry["digest"]).read_text())


@pytest.fixture(scope="module")
def config(manifest) -> dict:
    return json.loads(_blob(_layout(), manifest["config"]["digest"]).read_text())


@pytest.fixture(scope="module")
def rootfs(manifest, tmp_path_factory) -> Path:
    """The image's layers unpacked in order into a fresh folder."""
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # as a container runtime's root; mktemp makes it 0700
    for layer in manifest["layers"]:
        with tarfile.open(_blob(_layout(), layer["digest"])) as tar:
            tar.extractall(root, filter="tar")
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def _linked_libraries(binary: Path) -> set[str]:
    """What the dynamic loader resolves for `binary` on this machine."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    paths = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            paths.add(parts[2].lstrip("/"))
        elif parts and parts[0].startswith("/"):
            paths.add(parts[0].lstrip("/"))
    return paths


def test_image_runs_keygate_serve_as_a_non_root_user(config) -> None:
    c = config["config"]
    assert c["User"] == f"{NON_ROOT}:{NON_ROOT}"
    assert c["Entrypoint"] == ["/usr/local/bin/keygate"]
    assert c["Cmd"] == ["serve"]
    # The chart runs `keygate serve` by name.
    assert "PATH=/usr/local/bin" in c["Env"]
    assert set(c["ExposedPorts"]) == {"50051/tcp", "50052/tcp", "9090/tcp"}
    version = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
                   if line.startswith("version = "))
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")


def test_image_holds_the_binary_and_exactly_the_libraries_it_links(rootfs) -> None:
    binary = rootfs / "usr/local/bin/keygate"
    expected = {"usr/local/bin/keygate"} | _linked_libraries(binary)
    assert _files(rootfs) == expected
    given = Path(os.environ.get("KEYGATE_BIN", ROOT / "target/debug/keygate"))
    assert hashlib.sha256(binary.read_bytes()).digest() == hashlib.sha256(given.read_bytes()).digest()
    for path in expected:
        st = (rootfs / path).stat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, f"{path} is writable by its user"


def test_keygate_in_the_image_serves_health_and_check_as_its_user(rootfs, tmp_path, admin_stubs, owner) -> None:
    # A writable folder for SQLite: the image itself is read-only for its user.
    data = rootfs / "data"
    data.mkdir()
    os.chown(data, NON_ROOT, NON_ROOT)
    server = KeygateServer(
        rootfs / "usr/local/bin/keygate", tmp_path, name="keygate-in-image",
        extra_env={"KEYGATE_DATABASE_URL": "sqlite:///data/keygate.db"},
        command=["chroot", f"--userspec={NON_ROOT}:{NON_ROOT}", str(rootfs),
                 "/usr/local/bin/keygate", "serve"])
    try:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {str(NON_ROOT)}, status

        admin = AdminClient(server.admin_addr, admin_stubs)
        authz = AuthzClient(server.authz_addr)
        try:
            created = admin.create_key(owner, abilities=["read:orders"])
            assert_allowed(authz.check({"authorization": f"Bearer {created.key}"}), created.api_key)
            assert_denied(authz.check({}), 401, "missing_credentials")
        finally:
            admin.close()
            authz.close()
    finally:
        assert server.stop() == 0, server.log_tail()


def test_containerfile_builds_the_same_image_shape(config) -> None:
    """Containerfile (for machines that can pull base images) and
    build-image.sh agree on user, entrypoint, ports, version and toolchain."""
    lines = [line.strip() for line in (ROOT / "Containerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    c = config["config"]
    assert f"USER {c['User']}" in lines
    assert f"ENTRYPOINT {json.dumps(c['Entrypoint'])}" in lines
    assert f"CMD {json.dumps(c['Cmd'])}" in lines
    exposed = next(line.split()[1:] for line in lines if line.startswith("EXPOSE"))
    assert {f"{p}/tcp" for p in exposed} == set(c["ExposedPorts"])
    assert f"ARG VERSION={c['Labels']['org.opencontainers.image.version']}" in lines
    toolchain = next(line.split('"')[1] for line in (ROOT / "rust-toolchain.toml").read_text().splitlines()
                     if line.startswith("channel"))
    assert f"ARG RUST_VERSION={toolchain}" in lines
    assert lines[-1] == f"CMD {json.dumps(c['Cmd'])}"
