"""The proxy row's upstream: streams Anthropic-style SSE events at a fixed spacing, each stamped
with the system-wide monotonic clock when it was written.

Run as `python bench/proxy_upstream.py EVENTS SPACING_MS`: it binds 127.0.0.1, prints
`PORT <n>`, and answers every POST with one stream until it is terminated.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    events = 100
    spacing_s = 0.002

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        usage = {"input_tokens": 1000, "output_tokens": 1}
        start = {"type": "message_start", "message": {"id": "m", "model": "x", "usage": usage}}
        self._event("message_start", start)
        for i in range(self.events):
            time.sleep(self.spacing_s)
            delta = {"type": "text_delta", "text": f"word{i} "}
            self._event("content_block_delta", {"type": "content_block_delta", "delta": delta})
        self._event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 99}})
        self._event("message_stop", {"type": "message_stop"})
        self.close_connection = True

    def _event(self, name: str, data: dict[str, object]) -> None:
        data = {**data, "t": time.monotonic_ns()}
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def main() -> None:
    Stream.events, Stream.spacing_s = int(sys.argv[1]), float(sys.argv[2]) / 1000
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stream)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
