"""The API behind Envoy in examples/local: answers every request with 200 and
the keygate identity headers Envoy added, as JSON.

    python3 examples/local/upstream.py [PORT]   (default 8000)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        identity = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-keygate-")}
        body = json.dumps({"path": self.path, "identity": identity}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
