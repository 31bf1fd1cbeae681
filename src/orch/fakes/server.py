"""The HTTP plumbing the fakes share: a threaded server on 127.0.0.1, one handler calling the
fake's `handle`, the faults applied around it, and every exchange remembered."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from orch.fakes.faults import Faults


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # keys lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, value: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status,
        json.dumps(value).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int  # 0: the connection was dropped without an answer


class FakeServer:
    """Subclasses implement `handle`; `with fake:` serves until the block ends."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.exchanges: list[Exchange] = []
        # requests the provider's specification does not allow: a test fails on any
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what subclasses provide -------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    # -- serving -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake is not serving"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are written apart: without this each answer waits on Nagle
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                fake._exchange(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client that went away mid-answer (a timeout, a killed process) is no news
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def violate(self, what: str) -> None:
        with self._lock:
            self.violations.append(what)

    def _remember(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.exchanges.append(Exchange(method, path, status))

    def _exchange(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        body = _body(handler)
        declared = handler.headers.get("Content-Length")
        if declared and declared.isdigit() and len(body) < int(declared):
            # the client went away mid-request (a killed process): nothing to answer
            self._remember(handler.command, urlsplit(handler.path).path, 0)
            handler.close_connection = True
            return
        request = Request(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        fault = self.faults.take(request.method, request.path)
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault is not None and fault.status:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after))
            response = json_response(fault.status, {"message": "injected fault"}, headers)
        else:
            try:
                response = self.handle(request)
            except Exception as exc:  # the fake's own bug: answered, and failed on
                self.violate(f"fake failed on {request.method} {request.path}: {exc!r}")
                response = json_response(500, {"message": f"fake failed: {exc}"})
        if fault is not None and fault.drop:
            self._remember(request.method, request.path, 0)
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)
            handler.close_connection = True
            return
        self._remember(request.method, request.path, response.status)
        with contextlib.suppress(OSError):
            handler.send_response(response.status)
            headers = {"Content-Length": str(len(response.body)), **response.headers}
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if request.method != "HEAD":
                handler.wfile.write(response.body)


def _body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, sent whole or in chunks (git sends a large push chunked)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()  # the CRLF after each chunk
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""
