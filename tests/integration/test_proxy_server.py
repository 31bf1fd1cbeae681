"""The metering proxy alone over HTTP, the scripted model server behind it: answers pass through
byte for byte, usage is counted as the provider reports it, the real key replaces the run's
token, and a spent budget, a dead token and a provider's faults are answered as they must be."""

from __future__ import annotations

from collections.abc import Iterator
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
