"""KeyAdmin client over Python stubs generated at run time from
proto/keygate/admin/v1/key_admin.proto with grpcio-tools."""
from __future__ import annotations

import datetime as dt
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

import grpc

from .paths import KEY_ADMIN_PROTO, PROTO_DIR


def generate_admin_stubs(out_dir: Path) -> SimpleNamespace:
    """protoc the KeyAdmin proto into out_dir and import it.

    Returns a namespace with `pb2` (messages) and `grpc` (KeyAdminStub)."""
    import grpc_tools
    from grpc_tools import protoc

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{wkt}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(KEY_ADMIN_PROTO)]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}): {' '.join(args)}")
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))
    importlib.invalidate_caches()
    pb2 = importlib.import_module("keygate.admin.v1.key_admin_pb2")
    pb2_grpc = importlib.import_module("keygate.admin.v1.key_admin_pb2_grpc")
    return SimpleNamespace(pb2=pb2, grpc=pb2_grpc)


class AdminClient:
    """Thin helpers over keygate.admin.v1.KeyAdmin (unauthenticated loopback
    listener unless `token` is given)."""

    def __init__(self, target: str, stubs: SimpleNamespace, token: str | None = None,
                 timeout: float = 10.0):
        self.target = target
        self.pb2 = stubs.pb2
        self.channel = grpc.insecure_channel(target)
        self.stub = stubs.grpc.KeyAdminStub(self.channel)
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else None

    def close(self) -> None:
        self.channel.close()

    def _call(self, rpc: str, req):
        return getattr(self.stub, rpc)(req, timeout=self.timeout, metadata=self.metadata)

    def create_key(self, owner_id: str, *, name: str = "test key", environment: str = "live",
                   abilities: Sequence[str] = (), superkey: bool = False,
                   rate_limit: tuple[int, int] | Mapping[str, int] | None = None,
                   expires_at=None,
                   metadata: Mapping[str, str] | None = None,
                   credits: int | None = None):
        """CreateKey. rate_limit: (max_attempts, decay_seconds) or a dict;
        expires_at: an aware datetime or a google.protobuf.Timestamp;
        credits: the remaining credits, no refill.
        Returns the CreateKeyResponse (`.key` plaintext, `.api_key`)."""
        req = self.pb2.CreateKeyRequest(owner_id=owner_id, name=name, environment=environment,
                                        abilities=list(abilities), superkey=superkey)
        if rate_limit is not None:
            if isinstance(rate_limit, Mapping):
                req.rate_limit.max_attempts = rate_limit["max_attempts"]
                req.rate_limit.decay_seconds = rate_limit["decay_seconds"]
            else:
                req.rate_limit.max_attempts, req.rate_limit.decay_seconds = rate_limit
        if isinstance(expires_at, dt.datetime):
            req.expires_at.FromDatetime(expires_at.astimezone(dt.timezone.utc))
        elif expires_at is not None:  # a google.protobuf.Timestamp
            req.expires_at.CopyFrom(expires_at)
        if metadata:
            req.metadata.update(metadata)
        if credits is not None:
            req.credits.remaining = credits
        return self._call("CreateKey", req)

    def import_key(self, owner_id: str, key: str, *, name: str = "imported key"):
        """ImportKeys with one row given by its plaintext; returns its result."""
        row = self.pb2.ImportKeyRow(owner_id=owner_id, name=name, key=key)
        (result,) = self._call("ImportKeys", self.pb2.ImportKeysRequest(rows=[row])).results
        return result

    def get_key(self, owner_id: str, id: str):
        return self._call("GetKey", self.pb2.GetKeyRequest(owner_id=owner_id, id=id))

    def key_usage(self, owner_id: str, id: str):
        return self._call("GetKeyUsage", self.pb2.GetKeyUsageRequest(owner_id=owner_id, id=id))

    def revoke_key(self, owner_id: str, id: str, reason: str = "test"):
        return self._call("RevokeKey", self.pb2.RevokeKeyRequest(owner_id=owner_id, id=id,
                                                                 reason=reason))

    def rotate_key(self, owner_id: str, id: str, overlap_minutes: int = 0):
        return self._call("RotateKey", self.pb2.RotateKeyRequest(
            owner_id=owner_id, id=id, overlap_minutes=overlap_minutes))

    def suspend_owner(self, owner_id: str, reason: str = "test"):
        return self._call("SuspendOwner", self.pb2.SuspendOwnerRequest(owner_id=owner_id,
                                                                       reason=reason))

    def resume_owner(self, owner_id: str):
        return self._call("ResumeOwner", self.pb2.ResumeOwnerRequest(owner_id=owner_id))
