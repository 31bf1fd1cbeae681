"""What the models of the supported CLIs cost: a built-in price table, so that every run is
priced, a run stopped before its CLI priced it and a Codex run (whose CLI never prices) included.

US dollars per million tokens. A model is found by its name, or by its name with a date after
it (`claude-sonnet-4-5-20250929` is `claude-sonnet-4-5`, `gpt-5-2025-08-07` is `gpt-5`); any
other name (`gpt-5-pro` is not `gpt-5`) has no price. An agent's own `prices`, where configured,
price every model it uses instead.

Sources, as dated:
- Anthropic: the model catalog that Claude Code 2.1.328 (npm, 2026-11-18) prices its own runs
  with, which carries Anthropic's list prices. A cache write is priced as a five-minute one;
  long-context surcharges are not modelled.
- OpenAI: the API pricing page (developers.openai.com/api/docs/pricing) as of 2026-06, and the
  Codex rate card of the OpenAI Help Center (checked 2026-05-13, 25 credits a dollar), which
  agree. OpenAI charges nothing for cache writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from orch.domain.ledger import Prices

TABLE_DATE = "2026-11-18"

_CLAUDE_3_15 = Prices(3.0, 15.0, 0.3, 3.75)
_CLAUDE_5_25 = Prices(5.0, 25.0, 0.5, 6.25)
_CLAUDE_15_75 = Prices(15.0, 75.0, 1.5, 18.75)

ANTHROPIC: Mapping[str, Prices] = {
    "claude-3-5-haiku": Prices(0.8, 4.0, 0.08, 1.0),
    "claude-3-5-sonnet": _CLAUDE_3_15,
    "claude-3-7-sonnet": _CLAUDE_3_15,
    "claude-haiku-4-5": Prices(1.0, 5.0, 0.1, 1.25),
    "claude-haiku-5-5": Prices(0.1, 0.5, 0.01, 0.125),
    "claude-sonnet-4-0": _CLAUDE_3_15,
    "claude-sonnet-4": _CLAUDE_3_15,
    "claude-sonnet-4-5": _CLAUDE_3_15,
    "claude-sonnet-4-6": _CLAUDE_3_15,
    "claude-sonnet-5": Prices(2.0, 10.0, 0.2, 2.5),
    "claude-sonnet-5-5": Prices(2.0, 10.0, 0.1, 2.5),
    "claude-opus-4-0": _CLAUDE_15_75,
    "claude-opus-4": _CLAUDE_15_75,
    "claude-opus-4-1": _CLAUDE_15_75,
    "claude-opus-4-5": _CLAUDE_5_25,
    "claude-opus-4-6": _CLAUDE_5_25,
    "claude-opus-4-7": _CLAUDE_5_25,
    "claude-opus-4-8": _CLAUDE_5_25,
    "claude-opus-5": _CLAUDE_5_25,
    "claude-opus-5-5": Prices(4.0, 20.0, 0.2, 5.0),
}

_GPT_5 = Prices(1.25, 10.0, 0.125)
_GPT_5_2 = Prices(1.75, 14.0, 0.175)

OPENAI: Mapping[str, Prices] = {
    "gpt-5": _GPT_5,
    "gpt-5-codex": _GPT_5,
    "gpt-5-mini": Prices(0.25, 2.0, 0.025),
    "gpt-5-nano": Prices(0.05, 0.4, 0.005),
    "gpt-5.1": _GPT_5,
    "gpt-5.1-codex": _GPT_5,
    "gpt-5.1-codex-max": _GPT_5,
    "gpt-5.1-codex-mini": Prices(0.25, 2.0, 0.025),
    "gpt-5.2": _GPT_5_2,
    "gpt-5.2-codex": _GPT_5_2,
    "gpt-5.3-codex": _GPT_5_2,
    "gpt-5.4": Prices(2.5, 15.0, 0.25),
    "gpt-5.4-mini": Prices(0.75, 4.5, 0.075),
    "gpt-5.4-nano": Prices(0.2, 1.25, 0.02),
    "gpt-5.5": Prices(5.0, 30.0, 0.5),
}

BUILT_IN: Mapping[str, Prices] = {**ANTHROPIC, **OPENAI}
# a model's snapshot: its name and the date it was taken
_DATED = re.compile(r"(.+?)-(\d{8}|\d{4}-\d{2}-\d{2})")


def built_in(model: str) -> Prices | None:
    """The built-in prices of `model`, or None for a model the table does not know."""
    name = model.strip().lower()
    if name in BUILT_IN:
        return BUILT_IN[name]
    dated = _DATED.fullmatch(name)
    return BUILT_IN.get(dated.group(1)) if dated else None


class Pricing:
    """How one agent's runs are priced: its configured `prices` for every model, else the
    built-in table by each model's name."""

    def __init__(self, configured: Prices | None = None, model: str = "") -> None:
        self.configured = configured if configured else None
        self.model = model  # the agent's own model, for usage that names none

    def of(self, model: str | None = None) -> Prices | None:
        if self.configured is not None:
            return self.configured
        return built_in(model or self.model)

    def __bool__(self) -> bool:
        """Whether the agent's own model has a price."""
        return self.of() is not None
