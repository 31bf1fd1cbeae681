"""The metering proxy alone over HTTP, the scripted model server behind it: answers pass through
byte for byte, usage is counted as the provider reports it, the real key replaces the run's
token, and a spent budget, a dead token and a provider's faults are answered as they must be."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from orch.adapters.agents.proxy import AnswerReader, Meter, MeteringProxy, Upstream, read_record
from orch.domain.failures import FailureClass
from orch.domain.ledger import Budget, Figure, Usage
from orch.domain.prices import Pricing
from orch.testing import Fault, ModelServer, Script, Turn, Write
from orch.testing import ModelUsage as Turns

KEY = "sk-provider-key"
USAGE = Turns(1000, 200, 300, 40)
MESSAGES = {
    "model": "claude-sonnet-4-5",
    "stream": True,
    "max_tokens": 100,
    "tools": [{"name": "Write"}],
    "messages": [{"role": "user", "content": "hello there"}],
}
RESPONSES = {
    "model": "gpt-5.5",
    "stream": True,
    "tools": [{"type": "function", "name": "exec_command"}],
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    ],
}


@pytest.fixture
def server() -> Iterator[ModelServer]:
    script = Script("hello", (Turn((Write("a.txt", "a\n"),), USAGE),) * 3)
    with ModelServer([script]) as s:
        yield s


@pytest.fixture
def proxy() -> Iterator[MeteringProxy]:
    p = MeteringProxy().start()
    yield p
    p.stop()


def anthropic(server: ModelServer) -> Upstream:
    return Upstream("anthropic", server.url, KEY, "ANTHROPIC_API_KEY")


def post(proxy: MeteringProxy, meter: Meter, body: dict[str, object]) -> httpx.Response:
    if meter.upstream.wire == "anthropic":
        return httpx.post(f"{proxy.url}/v1/messages", json=body, headers={"x-api-key": meter.token})
    auth = {"authorization": f"Bearer {meter.token}"}
    return httpx.post(f"{proxy.url}/v1/responses", json=body, headers=auth)


def test_an_answer_passes_through_byte_for_byte_with_the_real_key_upstream(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    meter = proxy.issue(anthropic(server), Budget(), Pricing(None, "claude-sonnet-4-5"))
    through = post(proxy, meter, MESSAGES)
    direct = httpx.post(f"{server.url}/v1/messages", json=MESSAGES, headers={"x-api-key": KEY})

    # the same events in the same order (message ids are the server's own, per answer)
    assert through.status_code == 200
    names = [line for line in through.text.splitlines() if line.startswith("event:")]
    assert names == [line for line in direct.text.splitlines() if line.startswith("event:")]
    first, second = server.requests[0], server.requests[1]
    headers = {k.lower(): v for k, v in first.headers.items()}
    assert headers["x-api-key"] == KEY
    assert meter.token not in str(first.headers) and meter.token not in str(first.body)
    assert first.body == second.body


@pytest.mark.parametrize("wire", ["anthropic", "responses"])
def test_each_answers_usage_is_counted_as_the_provider_reports_it(
    server: ModelServer, proxy: MeteringProxy, wire: str, tmp_path: Path
) -> None:
    if wire == "anthropic":
        upstream, body, pricing = anthropic(server), MESSAGES, Pricing(None, "claude-sonnet-4-5")
    else:
        upstream = Upstream("responses", f"{server.url}/v1", KEY, "OPENAI_API_KEY")
        body, pricing = RESPONSES, Pricing(None, "gpt-5.5")
    record = tmp_path / "run.usage.jsonl"
    meter = proxy.issue(upstream, Budget(), pricing, record)

    for _ in range(2):
        assert post(proxy, meter, body).status_code == 200

    # the Responses wire counts cached input within its input tokens; the ledger keeps it apart
    want = Usage(2 * USAGE.input_tokens, 2 * USAGE.output_tokens, 2 * 300, 2 * 40)
    counted = meter.metered()
    assert counted.usage.tokens_in == want.tokens_in
    assert (counted.usage.tokens_out, counted.usage.cache_read) == (400, 600)
    assert counted.usage.cache_write == 80
    prices = pricing.of()
    assert prices is not None
    assert counted.usage.cost_usd == pytest.approx(prices.cost(want))
    assert (counted.source.tokens, counted.source.usd) == (Figure.PROVIDER, Figure.ESTIMATED)
    # what a dead worker's run is counted from afterwards
    assert read_record(record, pricing) == counted


def test_a_spent_budget_refuses_the_next_request_finally(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    meter = proxy.issue(anthropic(server), Budget(tokens=1000), Pricing(None, "claude-sonnet-4-5"))

    assert post(proxy, meter, MESSAGES).status_code == 200  # 1240 tokens: spent past 1000
    refused = post(proxy, meter, MESSAGES)

    assert refused.status_code == 400
    assert refused.headers["x-should-retry"] == "false"
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "budget is spent (1240 of 1000 tokens)" in error["message"]
    assert meter.refused == "1240 of 1000 tokens"
    assert len([r for r in server.requests if r.script]) == 1, "the refused request never left"


def test_a_run_held_to_a_tighter_budget_mid_run_is_refused_its_next_request(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    meter = proxy.issue(anthropic(server), Budget(tokens=5000), Pricing(None, "claude-sonnet-4-5"))
    assert post(proxy, meter, MESSAGES).status_code == 200  # 1240 tokens of 5000

    meter.limit(Budget(tokens=1200))  # runs elsewhere spent the rest of the day
    refused = post(proxy, meter, MESSAGES)

    assert refused.status_code == 400 and refused.headers["x-should-retry"] == "false"
    assert meter.refused == "1240 of 1200 tokens"
    assert len([r for r in server.requests if r.script]) == 1


def test_a_token_that_is_unknown_or_revoked_is_refused(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    meter = proxy.issue(anthropic(server), Budget(), Pricing())
    proxy.revoke(meter)
    for token in (meter.token, "made-up", ""):
        answer = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGES, headers={"x-api-key": token})
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"
    assert server.requests == []
    assert proxy.live_tokens() == 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(401, "authentication_error", "invalid x-api-key"), FailureClass.PERMANENT),
        (Fault(529, "overloaded_error", "Overloaded"), FailureClass.PROVIDER),
        (Fault(500, "api_error", "Internal server error"), FailureClass.PROVIDER),
        (Fault(429, "rate_limit_error", "slow down", retry_after_s=20), FailureClass.PROVIDER),
        (Fault(400, "invalid_request_error", "prompt is too long"), None),
    ],
)
def test_a_providers_error_is_passed_on_and_kept_with_its_class(
    server: ModelServer, proxy: MeteringProxy, fault: Fault, kind: FailureClass | None
) -> None:
    server.fail(fault)
    meter = proxy.issue(anthropic(server), Budget(), Pricing())

    answer = post(proxy, meter, MESSAGES)

    assert answer.status_code == fault.status
    assert answer.json()["error"]["type"] == fault.error_type
    [error] = meter.errors
    assert (error.status, error.kind, error.message) == (
        fault.status,
        fault.error_type,
        fault.message,
    )
    assert error.failure == kind
    assert error.retry_after_s == fault.retry_after_s
    assert (meter.trouble() is not None) == (kind is not None)
    # a good answer after it ends the trouble
    assert post(proxy, meter, MESSAGES).status_code == 200
    assert meter.trouble() is None


def test_a_provider_that_cannot_be_reached_is_a_provider_failure(proxy: MeteringProxy) -> None:
    gone = Upstream("anthropic", "http://127.0.0.1:9", KEY, "ANTHROPIC_API_KEY")
    meter = proxy.issue(gone, Budget(), Pricing())

    answer = post(proxy, meter, MESSAGES)

    assert answer.status_code == 502
    trouble = meter.trouble()
    assert trouble is not None and trouble.failure == FailureClass.PROVIDER
    assert trouble.status == 0 and "ConnectError" in trouble.kind


def test_usage_is_read_from_a_stream_cut_at_any_byte(server: ModelServer) -> None:
    body = httpx.post(f"{server.url}/v1/messages", json=MESSAGES, headers={"x-api-key": KEY})
    raw = body.content
    for size in (1, 7, 64):
        meter = Meter("t", anthropic(server), Budget(), Pricing(None, "claude-sonnet-4-5"))
        reader = AnswerReader(meter, "claude-sonnet-4-5", streamed=True)
        for i in range(0, len(raw), size):
            reader.feed(raw[i : i + size])
        reader.end()
        assert meter.usage().tokens == USAGE.input_tokens + USAGE.output_tokens + 40
        assert meter.usage().cache_read == 300


def test_a_responses_stream_cut_before_its_usage_is_counted_as_an_estimate(
    tmp_path: Path,
) -> None:
    upstream = Upstream("responses", "http://127.0.0.1:9/v1", KEY, "OPENAI_API_KEY")
    record = tmp_path / "run.log.usage.jsonl"
    meter = Meter("t", upstream, Budget(), Pricing(None, "gpt-5.5"), record)
    reader = AnswerReader(meter, "gpt-5.5", streamed=True, asked=4000)
    events = [
        {"type": "response.created", "response": {"id": "r", "usage": None}},
        {"type": "response.output_text.delta", "item_id": "m", "delta": "x" * 30},
        {"type": "response.function_call_arguments.delta", "item_id": "f", "delta": "y" * 10},
    ]
    reader.feed(b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events))

    reader.end(cut=True)

    # no usage came: the request's 4000 bytes and 40 characters streamed, four to a token
    assert (meter.usage().tokens_in, meter.usage().tokens_out) == (1000, 10)
    assert meter.usage().cost_usd > 0
    assert meter.metered().source.tokens == Figure.ESTIMATED
    again = read_record(record, Pricing(None, "gpt-5.5"))
    assert again is not None and again.usage == meter.usage()
    assert again.source.tokens == Figure.ESTIMATED


def test_a_stream_the_provider_ended_is_counted_as_it_reported_not_estimated(
    server: ModelServer,
) -> None:
    raw = httpx.post(f"{server.url}/v1/messages", json=MESSAGES, headers={"x-api-key": KEY}).content
    meter = Meter("t", anthropic(server), Budget(), Pricing(None, "claude-sonnet-4-5"))
    reader = AnswerReader(meter, "claude-sonnet-4-5", streamed=True, asked=10**6)
    reader.feed(raw)

    reader.end(cut=True)  # a cut after the provider's closing usage changes nothing

    assert meter.usage().tokens_out == USAGE.output_tokens
    assert meter.metered().source.tokens == Figure.PROVIDER


def test_an_answer_is_recorded_once_however_often_its_end_is_told(
    server: ModelServer, tmp_path: Path
) -> None:
    raw = httpx.post(f"{server.url}/v1/messages", json=MESSAGES, headers={"x-api-key": KEY}).content
    record = tmp_path / "run.log.usage.jsonl"
    meter = Meter("t", anthropic(server), Budget(), Pricing(None, "claude-sonnet-4-5"), record)
    reader = AnswerReader(meter, "claude-sonnet-4-5", streamed=True)
    reader.feed(raw)

    reader.end()
    reader.end(cut=True)  # the connection to the agent broke as the answer ended

    assert len(record.read_text().splitlines()) == 1
    again = read_record(record, Pricing(None, "claude-sonnet-4-5"))
    assert again is not None and again.usage == meter.usage()


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "@evil.example/v1/messages"),  # would make the key's host evil.example
        ("POST", "/v1/messages/batches"),
        ("POST", "/v1/complete"),
        ("POST", "/v1/chat/completions"),
        ("DELETE", "/v1/messages"),
    ],
)
def test_only_the_model_endpoints_are_forwarded_and_to_the_providers_own_host(
    server: ModelServer, proxy: MeteringProxy, method: str, target: str
) -> None:
    meter = proxy.issue(anthropic(server), Budget(), Pricing())
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        body = json.dumps(MESSAGES).encode()
        conn.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nx-api-key: {meter.token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] in (b"400", b"404"), answer[:200]
    assert server.requests == [], "nothing reached the provider"


def test_a_background_response_is_refused_as_it_cannot_be_metered(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    upstream = Upstream("responses", f"{server.url}/v1", KEY, "OPENAI_API_KEY")
    meter = proxy.issue(upstream, Budget(), Pricing(None, "gpt-5.5"))
    refused = post(proxy, meter, {**RESPONSES, "background": True})
    assert refused.status_code == 400
    assert "background" in refused.json()["error"]["message"]
    assert server.requests == []


def test_a_model_without_a_price_is_refused_under_a_dollar_budget(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    meter = proxy.issue(anthropic(server), Budget(usd=5.0), Pricing(None, "claude-sonnet-4-5"))
    refused = post(proxy, meter, {**MESSAGES, "model": "claude-of-tomorrow"})
    assert refused.status_code == 400
    assert "model claude-of-tomorrow has no price" in refused.json()["error"]["message"]
    # not the budget's doing: the run is told apart, to be parked at once
    assert meter.refused == "" and meter.rejected.startswith("model claude-of-tomorrow")
    assert post(proxy, meter, MESSAGES).status_code == 200


def test_requests_in_flight_at_once_hold_back_what_each_is_expected_to_spend(
    server: ModelServer, proxy: MeteringProxy
) -> None:
    slow = Script("hello", (Turn((Write("a.txt", "a\n"),), USAGE),) * 20)
    server.set_scripts([slow])
    # one answer is 1240 tokens; the budget has room for about two
    meter = proxy.issue(anthropic(server), Budget(tokens=3000), Pricing(None, "claude-sonnet-4-5"))
    assert post(proxy, meter, MESSAGES).status_code == 200  # the largest answer is now known

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(proxy, meter, MESSAGES).status_code, range(8)))

    # each in flight held back 1240 tokens: of 3000, 1240 were spent, so one more could go
    # alongside the others' reservations only while they fitted
    assert statuses.count(200) <= 2, statuses
    assert meter.usage().tokens <= 3000 + 1240 * 2


def test_revoking_a_run_cuts_off_its_answers_in_flight_and_counts_what_they_streamed(
    proxy: MeteringProxy,
) -> None:
    with _Dribble() as upstream:
        meter = proxy.issue(
            Upstream("anthropic", upstream.url, KEY, "ANTHROPIC_API_KEY"),
            Budget(),
            Pricing(None, "claude-sonnet-4-5"),
        )
        reading = threading.Thread(target=lambda: _swallow(proxy, meter), daemon=True)
        reading.start()
        assert upstream.started.wait(10)
        deadline = time.monotonic() + 10
        while meter.usage().tokens_in == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

        proxy.revoke(meter)

        assert meter.idle.is_set(), "the answer in flight was waited for"
        # its input as message_start said; its output, not reported before the cut, is
        # estimated from the 3 x 32 characters it streamed
        assert (meter.usage().tokens_in, meter.usage().tokens_out) == (500, 24)
        assert meter.metered().source.tokens == Figure.ESTIMATED
        assert upstream.closed.wait(10), "the provider's connection was closed"
        reading.join(10)


def _swallow(proxy: MeteringProxy, meter: Meter) -> None:
    with contextlib.suppress(httpx.HTTPError):
        post(proxy, meter, MESSAGES)


class _Dribble:
    """An upstream that starts an answer and then never ends it, until its client goes."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _Dribble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
        self._thread.join(10)

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            start = {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "model": "claude-sonnet-4-5",
                    "usage": {"input_tokens": 500},
                },
            }
            said = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Let me look at the failing test."},
            }
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
                + f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()
                + f"event: content_block_delta\ndata: {json.dumps(said)}\n\n".encode() * 3
            )
            self.started.set()
            conn.settimeout(0.2)
            for _ in range(100):
                try:
                    if conn.recv(1) == b"":
                        break
                except TimeoutError:
                    try:
                        conn.sendall(b": still thinking\n\n")
                    except OSError:
                        break
                except OSError:
                    break
            self.closed.set()
