"""Every run priced: the built-in price table, an agent's own `prices` over it, and a run
stopped before its CLI priced it, priced from its counted tokens at each message's model."""

from __future__ import annotations

import pytest

from orch.adapters.agents.claude_code import ClaudeStream
from orch.adapters.agents.codex import CodexStream
from orch.domain.ledger import Figure, Prices, Usage
from orch.domain.prices import BUILT_IN, Pricing, built_in


@pytest.mark.parametrize(
    ("model", "known"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("gpt-5.1-codex-max", "gpt-5.1-codex-max"),
        ("gpt-5.1-codex", "gpt-5.1-codex"),
        ("gpt-5.1-codex-2025-11-13", "gpt-5.1-codex"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("GPT-5.5", "gpt-5.5"),
    ],
)
def test_a_model_is_found_by_its_name_or_a_dated_name_that_starts_with_it(
    model: str, known: str
) -> None:
    assert built_in(model) == BUILT_IN[known]


@pytest.mark.parametrize(
    "model",
    ["sonnet", "gpt-of-tomorrow", "claude-sonnet-45", "gpt-5x", "gpt-5-pro", "gpt-5.4-pro"],
)
def test_a_model_the_table_does_not_know_has_no_price(model: str) -> None:
    assert built_in(model) is None


def test_the_table_prices_sonnet_as_claude_code_does() -> None:
    # Claude Code 2.1.328's own tier for claude-sonnet-4-5: 3 / 15, cache reads 0.3, writes 3.75
    prices = built_in("claude-sonnet-4-5")
    assert prices is not None
    assert prices.cost(Usage(1_000_000, 1_000_000, 1_000_000, 1_000_000)) == pytest.approx(22.05)


def test_an_agents_own_prices_price_every_model_it_uses() -> None:
    own = Prices(1.0, 2.0)
    assert Pricing(own, "gpt-5.5").of("claude-opus-4-1") == own
    assert Pricing(None, "gpt-5.5").of() == built_in("gpt-5.5")
    assert not Pricing(None, "gpt-of-tomorrow")


def _message(key: str, model: str, usage_in: int, usage_out: int) -> list[dict[str, object]]:
    start = {"type": "message_start", "message": {"id": key, "model": model}}
    start["message"]["usage"] = {"input_tokens": usage_in, "output_tokens": 1}  # type: ignore[index]
    delta = {"type": "message_delta", "usage": {"output_tokens": usage_out}}
    return [
        {"type": "stream_event", "api_message_id": key, "event": start},
        {"type": "stream_event", "api_message_id": key, "event": delta},
    ]


def test_a_claude_run_killed_before_its_result_is_priced_at_each_messages_model() -> None:
    stream = ClaudeStream()
    for event in [
        *_message("m1", "claude-sonnet-4-5-20250929", 10_000, 2_000),
        *_message("m2", "claude-haiku-4-5-20251001", 4_000, 1_000),
    ]:
        stream.feed(event)

    metered = stream.metered(Pricing(None, "sonnet"))

    assert metered.usage.tokens_in == 14_000 and metered.usage.tokens_out == 3_000
    sonnet = 10_000 * 3.0 + 2_000 * 15.0
    haiku = 4_000 * 1.0 + 1_000 * 5.0
    assert metered.usage.cost_usd == pytest.approx((sonnet + haiku) / 1e6)
    assert (metered.source.tokens, metered.source.usd) == (Figure.AGENT, Figure.ESTIMATED)


def test_a_claude_run_that_ended_is_priced_by_claude_code_itself() -> None:
    stream = ClaudeStream()
    for event in _message("m1", "claude-sonnet-4-5", 10_000, 2_000):
        stream.feed(event)
    stream.feed({"type": "result", "subtype": "success", "total_cost_usd": 0.0777})

    metered = stream.metered(Pricing(None, "sonnet"))

    assert metered.usage.cost_usd == pytest.approx(0.0777)
    assert (metered.source.tokens, metered.source.usd) == (Figure.AGENT, Figure.AGENT)


def test_a_run_of_a_model_without_a_price_says_its_dollars_are_not_counted() -> None:
    stream = ClaudeStream()
    for event in _message("m1", "claude-of-tomorrow", 10_000, 2_000):
        stream.feed(event)
    metered = stream.metered(Pricing(None, "claude-of-tomorrow"))
    assert metered.usage.cost_usd == 0.0
    assert metered.source.usd == Figure.UNPRICED


def test_a_codex_run_is_priced_by_its_models_row_of_the_table() -> None:
    stream = CodexStream()
    stream.feed(
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 12_000, "cached_input_tokens": 2_000, "output_tokens": 500},
        }
    )
    metered = stream.metered(Pricing(None, "gpt-5.5"))
    assert metered.usage.cost_usd == pytest.approx((10_000 * 5.0 + 2_000 * 0.5 + 500 * 30.0) / 1e6)
    assert (metered.source.tokens, metered.source.usd) == (Figure.AGENT, Figure.ESTIMATED)
