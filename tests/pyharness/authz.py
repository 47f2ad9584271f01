"""Building ext_authz v3 CheckRequests with Envoy's own generated stubs
(xds-protos) and reading CheckResponses against keygate's contract."""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ext_authz_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as ext_authz_grpc
from google.protobuf import json_format

OVERWRITE_IF_EXISTS_OR_ADD = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# gRPC status codes (google.rpc.Code) keygate maps HTTP denials to.
GRPC_OK = 0
GRPC_INVALID_ARGUMENT = 3
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAUTHENTICATED = 16
GRPC_FOR_HTTP = {400: GRPC_INVALID_ARGUMENT, 401: GRPC_UNAUTHENTICATED,
                 403: GRPC_PERMISSION_DENIED, 429: GRPC_RESOURCE_EXHAUSTED}

IDENTITY_HEADERS = ("x-keygate-key-id", "x-keygate-owner-id", "x-keygate-environment",
                    "x-keygate-key-prefix", "x-keygate-abilities")
WWW_AUTHENTICATE = 'Bearer realm="keygate"'
DENIAL_CODES = {"missing_credentials", "malformed_key", "invalid_key", "key_revoked",
                "key_expired", "owner_suspended", "environment_not_allowed",
                "insufficient_ability", "rate_limited", "invalid_path", "credits_exhausted",
                "ip_not_allowed"}
IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d{2}:\d{2}:\d{2} GMT$")

Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def _pairs(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def build_check_request(
    headers: Headers | None = None,
    path: str = "/v1/orders",
    method: str = "GET",
    context_extensions: Mapping[str, str] | None = None,
    header_map: bool = False,
    *,
    source_ip: str = "203.0.113.7",
    source_port: int = 54321,
    host: str = "api.example.com",
    pseudo_headers: bool = True,
) -> ext_authz_pb2.CheckRequest:
    """A CheckRequest shaped like the ones Envoy's ext_authz filter sends.

    Header names are lower-cased (Envoy does). With header_map=True the headers
    go into attributes.request.http.header_map as raw bytes (`raw_value`, what
    Envoy sends with encode_raw_headers: true) instead of the `headers` map.
    """
    req = ext_authz_pb2.CheckRequest()
    attrs = req.attributes
    attrs.source.address.socket_address.address = source_ip
    attrs.source.address.socket_address.port_value = source_port
    attrs.destination.address.socket_address.address = "127.0.0.1"
    attrs.destination.address.socket_address.port_value = 8080
    attrs.request.time.GetCurrentTime()
    http = attrs.request.http
    http.id = str(uuid.uuid4())
    http.method = method
    http.path = path
    http.host = host
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    pairs = []
    if pseudo_headers:
        pairs += [(":authority", host), (":method", method), (":path", path),
                  (":scheme", "https")]
    pairs += [(k.lower(), v) for k, v in _pairs(headers)]
    if header_map:
        for k, v in pairs:
            http.header_map.headers.add(key=k, raw_value=v.encode("utf-8"))
    else:
        for k, v in pairs:
            # Envoy joins repeated headers with ',' in the map form.
            http.headers[k] = f"{http.headers[k]},{v}" if k in http.headers else v
    if context_extensions:
        attrs.context_extensions.update(context_extensions)
    return req


def _hv(h: base_pb2.HeaderValue) -> str:
    return h.value if h.value else h.raw_value.decode("utf-8", "replace")


def _options_to_dict(opts: Iterable[base_pb2.HeaderValueOption]) -> dict[str, str]:
    out: dict[str, str] = {}
    for o in opts:
        k = o.header.key.lower()
        out[k] = f"{out[k]},{_hv(o.header)}" if k in out else _hv(o.header)
    return out


@dataclass
class CheckResult:
    request: ext_authz_pb2.CheckRequest
    response: ext_authz_pb2.CheckResponse
    elapsed_s: float = 0.0
    _body: object = field(default=None, repr=False)

    # -- common
    @property
    def grpc_code(self) -> int:
        return self.response.status.code

    @property
    def allowed(self) -> bool:
        return self.grpc_code == GRPC_OK

    def dump(self) -> str:
        return json_format.MessageToJson(self.response, preserving_proto_field_name=True)

    # -- denied
    @property
    def http_status(self) -> int:
        return int(self.response.denied_response.status.code)

    @property
    def denied_headers(self) -> dict[str, str]:
        return _options_to_dict(self.response.denied_response.headers)

    @property
    def body(self) -> dict:
        if self._body is None:
            self._body = json.loads(self.response.denied_response.body)
        return self._body  # type: ignore[return-value]

    @property
    def error_code(self) -> str | None:
        if self.allowed:
            return None
        try:
            return self.body["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    # -- allowed
    @property
    def upstream_headers(self) -> dict[str, str]:
        return _options_to_dict(self.response.ok_response.headers)

    @property
    def upstream_append_actions(self) -> dict[str, int]:
        return {o.header.key.lower(): o.append_action for o in self.response.ok_response.headers}

    @property
    def headers_to_remove(self) -> list[str]:
        return [h.lower() for h in self.response.ok_response.headers_to_remove]

    @property
    def response_headers(self) -> dict[str, str]:
        return _options_to_dict(self.response.ok_response.response_headers_to_add)

    @property
    def metadata(self) -> dict:
        return json_format.MessageToDict(self.response.dynamic_metadata)


class AuthzClient:
    """envoy.service.auth.v3.Authorization client (what Envoy is to keygate)."""

    def __init__(self, target: str, timeout: float = 5.0):
        self.target = target
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 << 20),
                             ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = ext_authz_grpc.AuthorizationStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def check_request(self, req: ext_authz_pb2.CheckRequest) -> CheckResult:
        import time
        t0 = time.perf_counter()
        try:
            resp = self.stub.Check(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise AssertionError(
                f"Check returned a gRPC error instead of a decision: "
                f"{e.code().name}: {e.details()}") from None
        return CheckResult(req, resp, time.perf_counter() - t0)

    def check(self, headers: Headers | None = None, path: str = "/v1/orders",
              method: str = "GET", context_extensions: Mapping[str, str] | None = None,
              header_map: bool = False, **kw) -> CheckResult:
        return self.check_request(build_check_request(
            headers, path=path, method=method, context_extensions=context_extensions,
            header_map=header_map, **kw))


# ---------------------------------------------------------------- assertions

def assert_denied(res: CheckResult, http_status: int, code: str | Iterable[str], *,
                  secret: str | None = None) -> None:
    """The full denial contract. `code` may be a set of acceptable codes."""
    codes = {code} if isinstance(code, str) else set(code)
    ctx = f"\nresponse: {res.dump()}"
    assert res.grpc_code == GRPC_FOR_HTTP[http_status], (
        f"status.code {res.grpc_code}, want {GRPC_FOR_HTTP[http_status]} for HTTP "
        f"{http_status}{ctx}")
    assert res.response.HasField("denied_response"), "no denied_response" + ctx
    assert not res.response.HasField("ok_response"), "denial carries an ok_response" + ctx
    assert res.http_status == http_status, (
        f"denied_response.status.code {res.http_status}, want {http_status}{ctx}")
    try:
        body = res.body
    except ValueError as e:
        raise AssertionError(f"denied body is not JSON ({e}){ctx}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"body shape{ctx}"
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message"}, f"error shape{ctx}"
    assert err["code"] in codes, f"error.code {err['code']!r}, want one of {sorted(codes)}{ctx}"
    assert isinstance(err["message"], str) and err["message"].strip(), f"empty message{ctx}"
    hdrs = res.denied_headers
    assert hdrs.get("content-type") == "application/json", f"content-type{ctx}"
    if http_status == 401:
        assert hdrs.get("www-authenticate") == WWW_AUTHENTICATE, f"www-authenticate{ctx}"
    if http_status == 429:
        ra = hdrs.get("retry-after", "")
        assert ra.isdigit() and int(ra) >= 1, f"retry-after {ra!r}{ctx}"
    if secret:
        assert_no_secret(res, secret)


def assert_no_secret(res: CheckResult, secret: str) -> None:
    """Neither the plaintext key nor its token segment is echoed back."""
    token = secret.rsplit("_", 1)[-1]
    blob = res.response.SerializeToString()
    for s in {secret, token}:
        if len(s) >= 12:
            assert s.encode() not in blob, f"the key's secret is echoed in the response: {res.dump()}"


def assert_allowed(res: CheckResult, api_key=None, *, credential_header: str | None = None,
                   abilities: str | None = None, secret: str | None = None) -> None:
    """The full allowed contract for a checked key (`api_key`: a KeyAdmin ApiKey)."""
    ctx = f"\nresponse: {res.dump()}"
    assert res.grpc_code == GRPC_OK, f"status.code {res.grpc_code}, want 0 (allowed){ctx}"
    assert not res.response.HasField("denied_response"), "allowed but has denied_response" + ctx
    if api_key is None:
        return
    up = res.upstream_headers
    want = {
        "x-keygate-key-id": api_key.id,
        "x-keygate-owner-id": api_key.owner_id,
        "x-keygate-environment": api_key.environment,
        "x-keygate-key-prefix": api_key.key_prefix,
    }
    for k, v in want.items():
        assert up.get(k) == v, f"upstream header {k}={up.get(k)!r}, want {v!r}{ctx}"
    if abilities is None:
        abilities = "*" if api_key.superkey else ",".join(api_key.abilities)
    got_ab = up.get("x-keygate-abilities")
    if abilities == "":
        # Envoy drops an empty header value unless keep_empty_value is set,
        # so keygate may send "" or nothing.
        assert got_ab in (None, ""), f"x-keygate-abilities {got_ab!r}, want empty{ctx}"
    else:
        assert got_ab is not None, f"no x-keygate-abilities{ctx}"
        assert sorted(got_ab.split(",")) == sorted(abilities.split(",")), (
            f"x-keygate-abilities {got_ab!r}, want {abilities!r}{ctx}")
    actions = res.upstream_append_actions
    for k in IDENTITY_HEADERS:
        if k in actions:
            assert actions[k] == OVERWRITE_IF_EXISTS_OR_ADD, (
                f"{k} append_action {actions[k]}, want OVERWRITE_IF_EXISTS_OR_ADD{ctx}")
    if credential_header:
        assert credential_header in res.headers_to_remove, (
            f"headers_to_remove {res.headers_to_remove} lacks {credential_header}{ctx}")
    md = res.metadata
    md_want = {"key_id": api_key.id, "owner_id": api_key.owner_id,
               "environment": api_key.environment, "key_prefix": api_key.key_prefix}
    for k, v in md_want.items():
        assert md.get(k) == v, f"dynamic_metadata.{k}={md.get(k)!r}, want {v!r}{ctx}"
    assert isinstance(md.get("abilities"), str), f"dynamic_metadata.abilities not a string{ctx}"
    if abilities:
        assert sorted(md["abilities"].split(",")) == sorted(abilities.split(",")), (
            f"dynamic_metadata.abilities {md['abilities']!r}, want {abilities!r}{ctx}")
    if secret:
        assert_no_secret(res, secret)
