"""A tiny HTTP service: GET / answers with a greeting and the VM's host name."""

import argparse
import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"hello": "from a vorteil micro-VM", "host": socket.gethostname(), "uid": os.getuid()}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    port = parser.parse_args().port
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104  (the VM serves its NIC)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on port {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
