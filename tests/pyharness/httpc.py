"""A plain HTTP/1.1 client (http.client) that keeps exactly the headers given."""
from __future__ import annotations

import http.client
import json
from dataclasses import dataclass


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]      # lower-cased names, repeated ones joined with ","
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def upstream(self) -> dict:
        """The echo upstream's view of the request (for responses it produced)."""
        return self.json()

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.headers} {self.body[:2000]!r}"


def http_request(base_url: str, path: str,
                 headers: dict[str, str] | list[tuple[str, str]] | None = None,
                 method: str = "GET", body: bytes | None = None,
                 timeout: float = 10.0) -> HttpResponse:
    """`headers` as a list of pairs sends a name as often as it is listed."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        if isinstance(headers, list):
            conn.putrequest(method, path)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        hdrs: dict[str, str] = {}
        for k, v in r.getheaders():
            k = k.lower()
            hdrs[k] = f"{hdrs[k]},{v}" if k in hdrs else v
        return HttpResponse(r.status, hdrs, r.read())
    finally:
        conn.close()
