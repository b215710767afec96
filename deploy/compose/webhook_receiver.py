"""A webhook receiver for trying flowwatch alerts locally (docker compose service `webhook`).

Prints every notification it receives as one JSON line: the payload (Alertmanager webhook
format), its idempotency key, and whether its HMAC signature checks out against
WEBHOOK_SECRET, verified the way any receiver should (services.alerts.delivery.verify).
Answers 200 to every POST, and to GET / for the healthcheck. Not for production.

    python deploy/compose/webhook_receiver.py [--host 127.0.0.1] [--port 9000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from services.alerts.delivery import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


def signature_status(body: bytes, headers: dict[str, str], secret: str) -> str:
    """'valid', 'invalid', 'missing' (unsigned) or 'unchecked' (no secret configured here)."""
    if not secret:
        return "unchecked"
    signature, timestamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        return "missing"
    return "valid" if verify(secret.encode(), timestamp, body, signature) else "invalid"


class Handler(BaseHTTPRequestHandler):
    secret = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        record = {
            "path": self.path,
            "idempotency_key": self.headers.get(ID_HEADER),
            "signature": signature_status(body, dict(self.headers.items()), self.secret),
            "payload": payload,
        }
        print(json.dumps(record), flush=True)
        self._reply(200, b'{"ok":true}')

    def do_GET(self) -> None:
        self._reply(200, b'{"ok":true}')

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one JSON line per notification on stdout is the whole output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    Handler.secret = os.environ.get("WEBHOOK_SECRET", "")
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"webhook receiver on http://{args.host}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
