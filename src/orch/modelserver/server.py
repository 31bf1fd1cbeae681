"""The HTTP side: a threaded server on 127.0.0.1 that routes each request to its wire."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from orch.modelserver.anthropic import _anthropic_events, _anthropic_message, _anthropic_reply
from orch.modelserver.responses import _responses_events, _responses_object, _responses_reply
from orch.modelserver.script import (
    CODEX_KEY_ENV,
    ZERO_USAGE,
    Fault,
    Recorded,
    Script,
    Usage,
    _Reply,
)


class _HttpServer(ThreadingHTTPServer):
    # join the handler threads on close, so stop() leaves nothing running
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        super().__init__(address, _Handler)
        self.owner = owner


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    # a client that stalls mid-request must not keep stop() waiting forever
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # requests are recorded on the server; stderr noise would only clutter test output
        return

    def do_GET(self) -> None:
        self.server.owner._record(self.path, dict(self.headers), {}, None)
        self._send_json(404, {"error": {"type": "not_found", "message": self.path}})

    def do_POST(self) -> None:
        body = self._read_json()
        route = self.path.split("?", 1)[0].rstrip("/")
        owner = self.server.owner
        if route.endswith(("/messages", "/responses")):
            fault = owner._next_fault(self.path, dict(self.headers), body)
            if fault is not None:
                self._send_fault(fault, anthropic=route.endswith("/messages"))
                return
        if route.endswith("/messages/count_tokens"):
            owner._record(self.path, dict(self.headers), body, None)
            self._send_json(200, {"input_tokens": 1})
        elif route.endswith("/messages"):
            reply = owner._answer(self.path, dict(self.headers), body, _anthropic_reply)
            message = _anthropic_message(body, reply)
            if body.get("stream"):
                self._send_sse(_anthropic_events(message))
            else:
                self._send_json(200, message)
        elif route.endswith("/responses"):
            reply = owner._answer(self.path, dict(self.headers), body, _responses_reply)
            response = _responses_object(body, reply)
            if body.get("stream", False):
                self._send_sse(_responses_events(response))
            else:
                self._send_json(200, response)
        else:
            owner._record(self.path, dict(self.headers), body, None)
            self._send_json(404, {"error": {"type": "not_found", "message": self.path}})

    def _read_json(self) -> dict[str, Any]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = self._read_chunked()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return bytes(data)

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _send_fault(self, fault: Fault, anthropic: bool) -> None:
        if anthropic:
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": fault.error_type, "message": fault.message},
            }
        else:
            payload = {
                "error": {
                    "type": fault.error_type,
                    "code": fault.error_type,
                    "message": fault.message,
                    "param": None,
                }
            }
        data = json.dumps(payload).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if fault.retry_after_s is not None:
            self.send_header("retry-after", f"{fault.retry_after_s:g}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _send_sse(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        # the body ends when the connection closes: no keep-alive, so stop() never waits on an
        # idle pooled connection
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for name, data in events:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return


_Responder = Callable[[Mapping[str, Any], Sequence[Script], Usage], _Reply]


class ModelServer:
    """The scripted server: start()/stop() or a `with` block; `url` once started."""

    def __init__(
        self,
        scripts: Sequence[Script] = (),
        *,
        model_usage: Usage | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._scripts: tuple[Script, ...] = tuple(scripts)
        self._model_usage = model_usage or ZERO_USAGE
        self._address = (host, port)
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._faults: list[Fault] = []
        self._failing: Fault | None = None
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> ModelServer:
        if self._http is not None:
            return self
        self._http = _HttpServer(self._address, self)
        host, port = self._http.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"model-server-{port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        http, thread = self._http, self._thread
        if http is None or thread is None:
            return
        http.shutdown()
        http.server_close()
        thread.join()
        self._http = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    def set_scripts(self, scripts: Sequence[Script]) -> None:
        with self._lock:
            self._scripts = tuple(scripts)

    def fail(self, *faults: Fault, then: Fault | None = None) -> None:
        """Answer the next model requests with `faults`, one each, in order; then every later
        one with `then`, if given (an outage), else with its script again."""
        with self._lock:
            self._faults = list(faults)
            self._failing = then

    def _next_fault(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Fault | None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults else self._failing
            if fault is not None:
                self._requests.append(Recorded(path, headers, body, None, None))
        return fault

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def claude_env(self, api_key: str = "scripted") -> dict[str, str]:
        """Environment that points `claude` at this server (merge it over a clean env)."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            # a broken script should fail the run now, not after minutes of backoff
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "API_TIMEOUT_MS": "60000",
        }

    def codex_config(self, provider: str = "scripted") -> list[str]:
        """`-c` overrides for `codex exec` that point it at this server (with codex_env())."""
        table = (
            f'{{name="{provider}", base_url="{self.url}/v1", env_key="{CODEX_KEY_ENV}", '
            'wire_api="responses", request_max_retries=0, stream_max_retries=0, '
            "stream_idle_timeout_ms=60000}"
        )
        return ["-c", f"model_provider={provider}", "-c", f"model_providers.{provider}={table}"]

    def codex_env(self, api_key: str = "scripted") -> dict[str, str]:
        """The API key variable that codex_config()'s provider reads."""
        return {CODEX_KEY_ENV: api_key}

    def _record(
        self,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        reply: _Reply | None,
    ) -> None:
        script, turn = (reply.script, reply.turn) if reply else (None, None)
        with self._lock:
            self._requests.append(Recorded(path, headers, body, script, turn))

    def _answer(
        self,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        responder: _Responder,
    ) -> _Reply:
        with self._lock:
            scripts = self._scripts
        reply = responder(body, scripts, self._model_usage)
        self._record(path, headers, body, reply)
        return reply
