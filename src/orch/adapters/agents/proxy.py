"""The metering proxy: the one place a model provider's key is used, and where every agent run's
spending is counted and held to its budget.

It listens on 127.0.0.1 in orch's own process. Each agent run is given the proxy's URL and a
token of its own instead of the provider's key, which never leaves orch. A request that carries
a live token is sent on to the run's provider with the real key, and the answer is streamed back
as it arrives while the usage the provider reports in it (the Anthropic Messages API's
`message_start` and `message_delta`, the OpenAI Responses API's `response.completed`) is added
to the run's meter. Only the model endpoints the CLIs use are forwarded, each to a path fixed
here, never one the request names. Once the run's budget is spent the next request is refused
with an error the CLIs do not retry; requests in flight at once each hold back an estimate of
what they will spend, so a run overshoots by at most what its requests in flight spend (one, for
an agent that asks one at a time). A run's token is revoked when the run ends, and its answers
still streaming are cut off: whatever it left running can spend nothing more. Provider errors
(their status, their error type, `retry-after`) are kept on the meter for the run's judge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

from orch.domain.failures import FailureClass, provider_answer
from orch.domain.ledger import Budget, Figure, Metered, Usage, UsageFrom
from orch.domain.prices import Pricing

log = logging.getLogger("orch.proxy")

Wire = Literal["anthropic", "responses"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# headers that belong to one hop, or that the proxy sets itself
_HOP = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "accept-encoding",
        "content-encoding",
        "x-api-key",
        "authorization",
        "proxy-authorization",
    }
)
_BODY_CAP = 8 << 20  # what is kept of a plain (not streamed) answer, to read its usage
_TAIL = 256 << 10  # and of its end, where the usage is when the answer is longer

# what is forwarded, per wire: (method, the path the CLI asks) -> (the upstream's path, metered)
_ROUTES: dict[str, dict[tuple[str, str], tuple[str, bool]]] = {
    "anthropic": {
        ("POST", "/v1/messages"): ("/v1/messages", True),
        ("POST", "/v1/messages/count_tokens"): ("/v1/messages/count_tokens", False),
        ("GET", "/v1/models"): ("/v1/models", False),
    },
    # a Responses client names the version in its base URL, as the upstream's does
    "responses": {
        ("POST", "/v1/responses"): ("/responses", True),
        ("GET", "/v1/models"): ("/models", False),
    },
}


@dataclass(frozen=True)
class Upstream:
    """A model provider as one agent reaches it: its wire, its URL and its key."""

    wire: Wire
    base_url: str  # e.g. https://api.anthropic.com, or https://api.openai.com/v1
    key: str = field(repr=False)
    key_env: str  # the variable of orch's environment (or the agent's settings) it came from
    bearer: bool = False  # sent as `Authorization: Bearer`, not `x-api-key`

    def url(self, route: str, query: bytes) -> httpx.URL:
        """The upstream's URL for one of the routes above: its path is fixed here, and the
        request's query string cannot change where it goes."""
        base = httpx.URL(self.base_url)
        url = httpx.URL(self.base_url.rstrip("/") + route).copy_with(query=query or None)
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise ValueError(f"{route} does not stay on {self.base_url}")
        return url

    def auth(self) -> tuple[str, str] | None:
        if not self.key:
            return None
        if self.wire == "responses" or self.bearer:
            return "authorization", f"Bearer {self.key}"
        return "x-api-key", self.key


@dataclass(frozen=True)
class ProviderError:
    """An error answer from the provider, as it gave it."""

    status: int  # 0: the provider could not be reached at all
    kind: str  # its error type (`overloaded_error`, `rate_limit_error`), or the network error
    message: str
    retry_after_s: float | None
    failure: FailureClass | None  # None: the request's fault, not the provider's
    at: float

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status else "no answer"
        said = f" {self.kind}" if self.kind else ""
        text = f": {self.message[:300]}" if self.message else ""
        wait = f" (retry-after {self.retry_after_s:g}s)" if self.retry_after_s else ""
        return f"{what}{said}{text}{wait}"


class Meter:
    """One run's account at the proxy: its token, what it spent, and what went wrong."""

    def __init__(
        self,
        token: str,
        upstream: Upstream,
        budget: Budget,
        pricing: Pricing,
        record: Path | None = None,
    ) -> None:
        self.token = token
        self.upstream = upstream
        self.budget = budget
        self.pricing = pricing
        self.record = record  # a line per model answer: a dead worker's run is counted from it
        self._lock = threading.Lock()
        self._usage = Usage()
        self._unpriced = False
        self._estimated = False  # an answer cut off before its usage came was estimated
        self.refused = ""  # why its requests were refused (its budget), once they were
        self.rejected = ""  # why a request was refused that no budget would let through
        self.revoked = False
        self.errors: list[ProviderError] = []  # the latest few
        self.failing_since: float | None = None  # first provider error since the last answer
        self.on_usage: Callable[[], None] | None = None  # told after each count
        self._reserved = Usage()  # what the requests in flight are expected to spend
        self._largest = Usage()  # the largest answer so far: what one more is expected to cost
        self.tasks: set[asyncio.Task[None]] = set()  # its answers in flight (the proxy's loop)
        self.idle = threading.Event()  # set while none is in flight
        self.idle.set()

    def add(self, model: str, delta: Usage, estimated: bool = False) -> None:
        prices = self.pricing.of(model)
        cost = prices.cost(delta) if prices is not None else 0.0
        with self._lock:
            self._usage = self._usage + replace(delta, cost_usd=cost)
            self._unpriced = self._unpriced or prices is None
            self._estimated = self._estimated or estimated
        told = self.on_usage
        if told is not None:
            told()

    def usage(self) -> Usage:
        with self._lock:
            return self._usage

    def metered(self) -> Metered:
        with self._lock:
            usd = Figure.UNPRICED if self._unpriced and not self._usage.cost_usd else None
            tokens = Figure.ESTIMATED if self._estimated else Figure.PROVIDER
            return Metered(self._usage, UsageFrom(tokens, usd or Figure.ESTIMATED))

    def admit(self, model: str, body_size: int) -> tuple[str, Usage]:
        """Whether one more request may go: "" and what it holds back until its answer is
        counted, or why not. Requests in flight at once hold back what each is expected to
        spend (the largest answer so far, or the request's size in tokens), so a burst of them
        cannot all pass a budget that one of them would spend."""
        prices = self.pricing.of(model)
        guess = self._largest if self._largest.tokens else Usage(max(body_size // 4, 1))
        guess = replace(guess, cost_usd=prices.cost(guess) if prices else 0.0)
        with self._lock:
            if self.revoked:  # revoked since its token was looked up
                return "the run has ended", Usage()
            why = self.budget.exhausted(self._usage + self._reserved)
            if not why:
                self._reserved = self._reserved + guess
        return why, guess

    def unpriced(self, model: str) -> str:
        """Why a request for `model` cannot be held to the run's budget (the model has no
        price, and the budget is in dollars), or ""."""
        if self.budget.usd is None or self.pricing.of(model) is not None:
            return ""
        return (
            f"model {model or '(none named)'} has no price, so a dollar budget cannot hold it:"
            " give the agent `prices`"
        )

    def limit(self, budget: Budget) -> None:
        """Hold its next requests to `budget` instead."""
        with self._lock:
            self.budget = budget

    def end(self) -> None:
        """Its run ended: no request of it is admitted any more."""
        with self._lock:
            self.revoked = True

    def release(self, held: Usage, answer: Usage) -> None:
        """A request's answer is counted (as `answer`): what it held back is free again."""
        with self._lock:
            self._reserved = self._reserved.less(held)
            if answer.tokens > self._largest.tokens:
                self._largest = answer

    def answered(self) -> None:
        with self._lock:
            self.failing_since = None

    def failed(self, error: ProviderError) -> None:
        with self._lock:
            self.errors = [*self.errors[-9:], error]
            if error.failure is not None and self.failing_since is None:
                self.failing_since = error.at

    def trouble(self) -> ProviderError | None:
        """The provider's error since its last good answer, if any: what the run's retries
        were about."""
        with self._lock:
            if self.failing_since is None or not self.errors:
                return None
            return self.errors[-1]

    def write(self, model: str, usage: Usage, estimated: bool = False) -> None:
        if self.record is None:
            return
        line = json.dumps(
            {"model": model, **usage.as_dict(), **({"estimated": True} if estimated else {})}
        )
        try:
            with open(self.record, "a", encoding="utf-8") as out:
                out.write(line + "\n")
        except OSError as exc:
            log.warning("could not record a model answer in %s: %s", self.record, exc)


def read_record(path: Path, pricing: Pricing) -> Metered | None:
    """What a run's meter recorded, read back after its worker died; None without a record."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    total, unpriced, estimated = Usage(), False, False
    for line in lines:
        try:
            row = json.loads(line)
            usage = Usage.from_dict(row)
        except (ValueError, TypeError, AttributeError):
            continue
        prices = pricing.of(str(row.get("model") or ""))
        unpriced = unpriced or prices is None
        estimated = estimated or row.get("estimated") is True
        total = total + replace(usage, cost_usd=prices.cost(usage) if prices else 0.0)
    usd = Figure.UNPRICED if unpriced and not total.cost_usd else Figure.ESTIMATED
    return Metered(total, UsageFrom(Figure.ESTIMATED if estimated else Figure.PROVIDER, usd))


class _Count:
    """The usage of one model answer, as its events report it: each event may repeat or raise
    what an earlier one said, so the highest of each count is kept and only the increase is
    added to the meter."""

    def __init__(self, meter: Meter, model: str) -> None:
        self.meter = meter
        self.model = model
        self.seen = Usage()
        self.estimated = False

    def saw(self, now: Usage, model: str | None = None, estimated: bool = False) -> None:
        if model:
            self.model = model
        top = Usage(
            max(self.seen.tokens_in, now.tokens_in),
            max(self.seen.tokens_out, now.tokens_out),
            max(self.seen.cache_read, now.cache_read),
            max(self.seen.cache_write, now.cache_write),
        )
        delta = Usage(
            top.tokens_in - self.seen.tokens_in,
            top.tokens_out - self.seen.tokens_out,
            top.cache_read - self.seen.cache_read,
            top.cache_write - self.seen.cache_write,
        )
        self.seen = top
        if delta.tokens or delta.cache_read:
            self.estimated = self.estimated or estimated
            self.meter.add(self.model, delta, estimated)

    def done(self) -> None:
        if self.seen.tokens or self.seen.cache_read:
            self.meter.write(self.model, self.seen, self.estimated)


def anthropic_usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    return Usage(
        int(u.get("input_tokens") or 0),
        int(u.get("output_tokens") or 0),
        int(u.get("cache_read_input_tokens") or 0),
        int(u.get("cache_creation_input_tokens") or 0),
    )


def responses_usage(u: Any) -> Usage:
    """A Responses API answer's usage."""
    if not isinstance(u, dict):
        return Usage()
    details = u.get("input_tokens_details") or {}
    return fresh_input(
        int(u.get("input_tokens") or 0),
        int(u.get("output_tokens") or 0),
        int(details.get("cached_tokens") or 0),
        int(details.get("cache_write_tokens") or 0),
    )


def fresh_input(input_tokens: int, output_tokens: int, cached: int, written: int) -> Usage:
    """Usage as the Responses wire counts it, where `input_tokens` holds the cached input too:
    the ledger keeps fresh input apart from cache reads and writes."""
    return Usage(max(input_tokens - cached - written, 0), output_tokens, cached, written)


class AnswerReader:
    """Reads the usage (and any error) out of one answer as its bytes pass through."""

    def __init__(self, meter: Meter, model: str, streamed: bool, asked: int = 0) -> None:
        self.count = _Count(meter, model)
        self.meter = meter
        self.streamed = streamed  # an event stream, by its content type
        self.asked = asked  # the request's size in bytes
        self.final = False  # the answer's closing usage was read
        self.said = 0  # characters of text the answer streamed
        self.ended = False
        self.buffer = b""
        self.data: list[bytes] = []
        self.body = bytearray()
        self.tail = b""
        self.cut = False  # the body was longer than what is kept of it
        self.error: tuple[str, str] | None = None  # (type, message) of an error it carried

    def feed(self, chunk: bytes) -> None:
        if not self.streamed:
            room = _BODY_CAP - len(self.body)
            self.body += chunk[:room]
            self.cut = self.cut or len(chunk) > room
            self.tail = (self.tail + chunk)[-_TAIL:]
            return
        self.buffer += chunk
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end].rstrip(b"\r"), self.buffer[end + 1 :]
            if not line:
                self._event()
            elif line.startswith(b"data:"):
                self.data.append(line[5:].lstrip())

    def _event(self) -> None:
        data, self.data = b"\n".join(self.data), []
        # most events are deltas: of those only the length of what they say is kept, for an
        # answer cut off before its usage
        if b'"usage"' not in data and b'"error"' not in data and b"message_start" not in data:
            if b"delta" in data:
                self.said += _said(data)
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if isinstance(event, dict):
            self._read(event)

    def _read(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if self.meter.upstream.wire == "anthropic":
            if kind == "message_start":
                message = event.get("message") or {}
                self.count.saw(anthropic_usage(message.get("usage")), message.get("model"))
            elif kind == "message_delta":
                self.count.saw(anthropic_usage(event.get("usage")))
                self.final = True
            elif kind == "error":
                self._error(event.get("error"))
            elif kind == "message" or "usage" in event:
                # a plain answer: the whole message
                self.count.saw(anthropic_usage(event.get("usage")), event.get("model"))
                self.final = True
        else:
            response = event.get("response") if "response" in event else event
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                self.count.saw(responses_usage(response["usage"]), response.get("model"))
                self.final = True
            if kind in ("error", "response.failed"):
                err = event.get("error") or (response or {}).get("error")
                self._error(err if isinstance(err, dict) else event)

    def _error(self, err: Any) -> None:
        if isinstance(err, dict):
            # the Responses API types a stream's error event "error" and says what in `code`
            kind = str(err.get("type") or "")
            if kind in ("", "error") and err.get("code"):
                kind = str(err["code"])
            self.error = (kind, str(err.get("message", "")))

    def end(self, cut: bool = False) -> None:
        """The answer is over; `cut`: it was cut off (the run revoked, the connection broken)
        before the provider ended it. Only the first call counts."""
        if self.ended:
            return
        self.ended = True
        if self.streamed:
            if self.data:
                self._event()
            if cut and not self.final:
                self._estimate()
        elif self.body:
            body: Any = None
            if not self.cut:
                try:
                    body = json.loads(bytes(self.body))
                except ValueError:
                    body = None
            if isinstance(body, dict):
                if "error" in body:
                    self._error(body["error"])
                else:
                    self._read(body)
            elif self.cut:
                # too long to keep whole: its usage is read from its end
                usage = _usage_in(self.tail)
                if usage is not None:
                    self._read({"usage": usage, "type": "message"})
        self.count.done()

    def _estimate(self) -> None:
        """A stream cut off before its closing usage: the provider generated, and bills, what
        it streamed, which it had not reported yet. Counted as orch's estimate: a token for
        every four characters of text streamed, and the request's input (four bytes a token)
        when no usage was read at all (the Responses API reports it only at the end)."""
        seen = self.count.seen
        asked = 0 if seen.tokens or seen.cache_read else self.asked // 4
        said = -(-self.said // 4)
        if asked > seen.tokens_in or said > seen.tokens_out:
            guess = replace(
                seen, tokens_in=max(seen.tokens_in, asked), tokens_out=max(seen.tokens_out, said)
            )
            self.count.saw(guess, estimated=True)


def _said(data: bytes) -> int:
    """How many characters of text (or tool input, or thinking) a delta event carries."""
    try:
        event = json.loads(data)
    except ValueError:
        return 0
    if not isinstance(event, dict):
        return 0
    delta = event.get("delta")
    if isinstance(delta, str):  # the Responses API's deltas
        return len(delta)
    if isinstance(delta, dict):  # the Messages API's content_block_delta
        for field in ("text", "partial_json", "thinking"):
            value = delta.get(field)
            if isinstance(value, str):
                return len(value)
    return 0


def _usage_in(tail: bytes) -> dict[str, Any] | None:
    """The last `"usage": {...}` object in the end of a JSON answer."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    colon = tail.find(b":", at)
    try:
        value, _ = json.JSONDecoder().raw_decode(
            tail[colon + 1 :].decode("utf-8", "replace").lstrip()
        )
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class MeteringProxy:
    """The proxy server, on a thread of its own with its own event loop."""

    def __init__(self, host: str = "127.0.0.1", connect_timeout_s: float = 10.0) -> None:
        self._host = host
        self._meters: dict[str, Meter] = {}
        self._lock = threading.Lock()
        self._connect_timeout_s = connect_timeout_s
        self._client: httpx.AsyncClient | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._starting = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    # -- the life of the server

    def start(self) -> MeteringProxy:
        with self._starting:
            if self._thread is None:
                self._start()
        self._started.wait(10)
        return self

    def _start(self) -> None:
        # made with its protocol named: asyncio turns Nagle off only on connections accepted
        # from such a socket, and a streamed event must not wait for the last one's ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, 0))
        sock.listen(128)  # a request sent before the loop accepts waits in the backlog
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_keep_alive=30,
            server_header=False,
            date_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="orch-metering-proxy", daemon=True
        )
        self._thread.start()

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        asyncio.run(self._main(sock))

    async def _main(self, sock: socket.socket) -> None:
        assert self._server is not None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=self._connect_timeout_s, read=600, write=60, pool=60),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,
        )
        self._loop = asyncio.get_running_loop()
        try:
            self._started.set()
            await self._server.serve(sockets=[sock])
        finally:
            self._started.set()
            await self._client.aclose()
            sock.close()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(15)
        self._server = self._thread = None

    # -- tokens

    def issue(
        self,
        upstream: Upstream,
        budget: Budget,
        pricing: Pricing,
        record: Path | None = None,
    ) -> Meter:
        """A meter and a token for one run."""
        self.start()
        meter = Meter(secrets.token_urlsafe(32), upstream, budget, pricing, record)
        with self._lock:
            self._meters[meter.token] = meter
        return meter

    def revoke(self, meter: Meter, wait_s: float = 5.0) -> None:
        """The run ended: its token is good for nothing more, and its answers still streaming
        are cut off (what they streamed so far is counted) before this returns."""
        meter.end()
        with self._lock:
            self._meters.pop(meter.token, None)
        loop = self._loop
        if loop is None or meter.idle.is_set():
            return

        def cut() -> None:
            for task in list(meter.tasks):
                task.cancel()

        try:
            loop.call_soon_threadsafe(cut)
        except RuntimeError:  # the loop has ended: nothing is in flight any more
            return
        if not meter.idle.wait(wait_s):
            log.warning("answers of a revoked run still in flight after %gs", wait_s)

    def live_tokens(self) -> int:
        with self._lock:
            return len(self._meters)

    # -- the ASGI application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        token = _token(headers)
        with self._lock:
            meter = self._meters.get(token) if token else None
        path = scope["path"]
        wire: Wire = meter.upstream.wire if meter is not None else _wire_of(path)
        if meter is None:
            await _refuse(send, wire, 401, "authentication_error", _NO_TOKEN, final=True)
            return
        route = _ROUTES[wire].get((scope["method"], path))
        if route is None:
            what = f"orch's proxy does not forward {scope['method']} {path}"
            await _refuse(send, wire, 404, "not_found_error", what, final=True)
            return
        body = await _body(receive)
        upstream_path, metered = route
        model, asks_background = _asked(body)
        if asks_background:
            what = "orch's proxy does not forward background responses: they cannot be metered"
            await _refuse(send, wire, 400, "invalid_request_error", what, final=True)
            return
        held = Usage()
        if metered:
            problem = meter.unpriced(model)
            if problem:
                meter.rejected = meter.rejected or problem
                await _refuse(
                    send, wire, 400, "invalid_request_error", f"orch: {problem}", final=True
                )
                return
            why, held = meter.admit(model, len(body))
            if why and meter.revoked:
                await _refuse(send, wire, 401, "authentication_error", _NO_TOKEN, final=True)
                return
            if why:
                meter.refused = meter.refused or why
                await _refuse(send, wire, 400, "invalid_request_error", _spent(why), final=True)
                return
        forward = asyncio.create_task(
            self._forward(scope, upstream_path, headers, body, meter, send, model, held)
        )
        meter.tasks.add(forward)
        meter.idle.clear()
        try:
            await forward
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the server itself is stopping
            # the run was revoked: its answer is cut off here
        finally:
            meter.tasks.discard(forward)
            if not meter.tasks:
                meter.idle.set()

    async def _forward(
        self,
        scope: Scope,
        route: str,
        headers: list[tuple[str, str]],
        body: bytes,
        meter: Meter,
        send: Send,
        model: str,
        held: Usage,
    ) -> None:
        assert self._client is not None
        up = meter.upstream
        listed = {n.strip().lower() for k, v in headers if k == "connection" for n in v.split(",")}
        out = [(k, v) for k, v in headers if k not in _HOP and k not in listed]
        auth = up.auth()
        if auth is not None:
            out.append(auth)
        out.append(("accept-encoding", "identity"))  # the answer is read as it passes
        reader = AnswerReader(meter, model, streamed=False)
        try:
            url = up.url(route, scope.get("query_string", b""))
            request = self._client.build_request(scope["method"], url, headers=out, content=body)
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                what = type(exc).__name__
                meter.failed(
                    ProviderError(0, what, str(exc)[:300], None, FailureClass.PROVIDER, time.time())
                )
                # a network blip: the CLI may retry it, as it would against the provider
                text = f"orch could not reach {up.base_url}: {what}"
                await _refuse(send, up.wire, 502, "api_error", text, final=False)
                return
            try:
                content = response.headers.get("content-type", "")
                reader = AnswerReader(meter, model, "text/event-stream" in content, len(body))
                if response.status_code < 400:
                    meter.answered()
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in response.headers.multi_items()
                            if k.lower() not in _HOP
                        ],
                    }
                )
                async for chunk in response.aiter_raw():
                    reader.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                reader.end()
                # judged before the answer ends: whoever reads the meter after it sees the fault
                self._judge(meter, response, reader)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except (httpx.HTTPError, OSError) as exc:
                meter.failed(
                    ProviderError(
                        0,
                        type(exc).__name__,
                        f"the answer broke off: {exc}"[:300],
                        None,
                        FailureClass.PROVIDER,
                        time.time(),
                    )
                )
                reader.end(cut=True)
            except asyncio.CancelledError:
                reader.end(cut=True)  # what it streamed before it was cut off is counted
                raise
            finally:
                await response.aclose()
        finally:
            meter.release(held, reader.count.seen)

    @staticmethod
    def _judge(meter: Meter, response: httpx.Response, reader: AnswerReader) -> None:
        status = response.status_code
        kind, message = reader.error or ("", "")
        if status < 400 and not kind:
            meter.answered()
            return
        failure = provider_answer(status, kind)
        meter.failed(
            ProviderError(
                status,
                kind,
                message,
                _retry_after(response.headers.get("retry-after")),
                failure,
                time.time(),
            )
        )


_NO_TOKEN = "orch: this token is not a live run's (the run ended, or it never was one)"


def _spent(why: str) -> str:
    return (
        f"orch: this run's budget is spent ({why}); no more model requests are sent for it."
        " An operator can raise the budget and retry the task."
    )


def _token(headers: Iterable[tuple[str, str]]) -> str:
    for k, v in headers:
        if k == "x-api-key":
            return v.strip()
        if k == "authorization" and v.lower().startswith("bearer "):
            return v[7:].strip()
    return ""


def _asked(body: bytes) -> tuple[str, bool]:
    """The model a request names, and whether it asks for a background response."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return "", False
    if not isinstance(data, dict):
        return "", False
    return str(data.get("model") or ""), bool(data.get("background"))


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def _wire_of(path: str) -> Wire:
    return "anthropic" if "/messages" in path else "responses"


async def _refuse(
    send: Send, wire: Wire, status: int, kind: str, message: str, *, final: bool
) -> None:
    """Answer with an error in the wire's own shape; `final`: one the CLI must not retry."""
    if wire == "anthropic":
        payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        payload = {"error": {"type": kind, "code": kind, "message": message, "param": None}}
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if final:
        # an SDK that reads this header does not retry what is final
        headers.append((b"x-should-retry", b"false"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
