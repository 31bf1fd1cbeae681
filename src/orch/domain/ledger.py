"""Tokens and money: what an agent run used, what it may still use, and what it costs.

Token counts follow the agents' own usage events. `tokens_in` is fresh input only: cache reads and
cache writes are counted apart, because they are priced apart and a long session re-reads its
context on every turn. A token budget counts fresh input plus output plus cache writes, the tokens
a run makes the provider process anew; cache reads count towards cost only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from orch.domain.errors import PipelineError

if TYPE_CHECKING:
    from orch.domain.periods import OverTime


@dataclass(frozen=True)
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.tokens_in + other.tokens_in,
            self.tokens_out + other.tokens_out,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.cost_usd + other.cost_usd,
        )

    def less(self, other: Usage) -> Usage:
        """What is left after taking `other` away, each figure no lower than zero."""
        return Usage(
            max(self.tokens_in - other.tokens_in, 0),
            max(self.tokens_out - other.tokens_out, 0),
            max(self.cache_read - other.cache_read, 0),
            max(self.cache_write - other.cache_write, 0),
            max(self.cost_usd - other.cost_usd, 0.0),
        )

    @property
    def tokens(self) -> int:
        """The tokens a token budget counts."""
        return self.tokens_in + self.tokens_out + self.cache_write

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "cost_usd": round(self.cost_usd, 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            int(data.get("tokens_in", 0)),
            int(data.get("tokens_out", 0)),
            int(data.get("cache_read", 0)),
            int(data.get("cache_write", 0)),
            float(data.get("cost_usd", 0.0)),
        )


class Figure(StrEnum):
    """Where a figure of the ledger came from."""

    PROVIDER = "provider"  # the model provider's own usage, read by orch's metering proxy
    AGENT = "agent"  # the agent's CLI's own account of its usage or its cost
    ESTIMATED = "estimated"  # orch's: the tokens counted, priced by the price table
    UNPRICED = "unpriced"  # no price is known for the model: the dollars are not counted


@dataclass(frozen=True)
class UsageFrom:
    """Where a run's tokens and its dollars came from."""

    tokens: Figure
    usd: Figure

    def as_dict(self) -> dict[str, str]:
        return {"tokens": self.tokens.value, "usd": self.usd.value}


# what a run's figures are when nothing says otherwise: the agent's own account
AGENTS_OWN = UsageFrom(Figure.AGENT, Figure.AGENT)
# a dead run's figures when its log says nothing: what it last noted in the store as it ran,
# which may fall short of what it spent after
NOTED = UsageFrom(Figure.ESTIMATED, Figure.ESTIMATED)


@dataclass(frozen=True)
class Metered:
    """What a run spent, with where its figures came from."""

    usage: Usage
    source: UsageFrom


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens, for agents whose CLI reports tokens but no cost."""

    input: float = 0.0
    output: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (
            usage.tokens_in * self.input
            + usage.tokens_out * self.output
            + usage.cache_read * self.cache_read
            + usage.cache_write * self.cache_write
        ) / 1_000_000

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Budget:
    """A limit in dollars, in tokens, or both; None is no limit."""

    usd: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if self.usd is not None and self.usd < 0:
            raise PipelineError(f"a budget of {self.usd} USD is negative")
        if self.tokens is not None and self.tokens < 0:
            raise PipelineError(f"a budget of {self.tokens} tokens is negative")

    @property
    def unlimited(self) -> bool:
        return self.usd is None and self.tokens is None

    def left(self, spent: Usage) -> Budget:
        """What is left of this budget after `spent`; never below zero."""
        return Budget(
            None if self.usd is None else max(self.usd - spent.cost_usd, 0.0),
            None if self.tokens is None else max(self.tokens - spent.tokens, 0),
        )

    def crossed(self, spent: Usage) -> str:
        """Why `spent` is over this budget, or "" while it is within."""
        if self.usd is not None and spent.cost_usd > self.usd + 1e-9:
            return f"${spent.cost_usd:.4f} of ${self.usd:.4f}"
        if self.tokens is not None and spent.tokens > self.tokens:
            return f"{spent.tokens} of {self.tokens} tokens"
        return ""

    def exhausted(self, spent: Usage) -> str:
        """Why nothing more may be spent (the budget is used up or crossed), or ""."""
        # less than a micro-dollar left is nothing: a CLI refuses a limit that rounds to zero
        if self.usd is not None and spent.cost_usd >= self.usd - 1e-6:
            return f"${spent.cost_usd:.4f} of ${self.usd:.4f}"
        if self.tokens is not None and spent.tokens >= self.tokens:
            return f"{spent.tokens} of {self.tokens} tokens"
        return ""

    def tightest(self, other: Budget) -> Budget:
        return Budget(_least(self.usd, other.usd), _least_int(self.tokens, other.tokens))

    def as_dict(self) -> dict[str, Any]:
        return {"usd": self.usd, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Budget:
        if not data:
            return cls()
        usd, tokens = data.get("usd"), data.get("tokens")
        return cls(
            None if usd is None else float(usd),
            None if tokens is None else int(tokens),
        )


NO_BUDGET = Budget()


def _least(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _least_int(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


@dataclass(frozen=True)
class Limits:
    """The budgets one agent run is held to: its stage's and its task's, each against what the
    task has spent so far in that scope, and the budgets over time (orch.domain.periods) of its
    repository and of all, each against what was spent in its period."""

    stage: str
    stage_budget: Budget
    task_budget: Budget
    stage_spent: Usage
    task_spent: Usage
    over_time: tuple[OverTime, ...] = ()

    def exhausted(self) -> str:
        """Why no run may start (a budget is used up), or ""."""
        return self._why(Budget.exhausted, Usage())

    def left(self) -> Budget:
        """What one more run may spend before it crosses a budget."""
        left = self.stage_budget.left(self.stage_spent).tightest(
            self.task_budget.left(self.task_spent)
        )
        for o in self.over_time:
            left = left.tightest(o.budget.left(o.spent))
        return left

    def crossed(self, run: Usage, over_time: bool = True) -> str:
        """Why a run that has spent `run` so far is over a budget (with `over_time` false: its
        stage's or its task's), or ""."""
        return self._why(Budget.crossed, run, over_time)

    def waits_for(self, run: Usage | None = None) -> OverTime | None:
        """The budget over time that is used up (with `run`, what a run spent on top), if it
        is one of those: the stage then waits for its period to end."""
        for o in self.over_time:
            if o.budget.exhausted(o.spent + (run or Usage())):
                return o
        return None

    def own_spent(self, run: Usage) -> str:
        """Why the stage's or the task's own budget is used up with `run` on top, or ""."""
        return self._why(Budget.exhausted, run, over_time=False)

    def tightest_over_time(self, run: Usage) -> OverTime | None:
        """The budget over time with the least left once `run` is counted."""

        def share_left(o: OverTime) -> float:
            left = o.budget.left(o.spent + run)
            shares = []
            if o.budget.usd:
                shares.append((left.usd or 0.0) / o.budget.usd)
            if o.budget.tokens:
                shares.append((left.tokens or 0) / o.budget.tokens)
            return min(shares, default=0.0)

        return min(self.over_time, key=share_left, default=None)

    def _why(self, test: Callable[[Budget, Usage], str], run: Usage, over_time: bool = True) -> str:
        scopes = self._scopes() if over_time else self._scopes()[:2]
        for scope, budget, spent in scopes:
            why = test(budget, spent + run)
            if why:
                return f"budget: {scope} spent {why}"
        return ""

    def _scopes(self) -> tuple[tuple[str, Budget, Usage], ...]:
        return (
            (f"stage {self.stage}", self.stage_budget, self.stage_spent),
            ("the task", self.task_budget, self.task_spent),
            *((o.scope, o.budget, o.spent) for o in self.over_time),
        )


def unmetered(budget: Budget, meters: frozenset[str]) -> list[str]:
    """The units of `budget` an agent that reports `meters` cannot be held to."""
    units = [u for u, v in (("usd", budget.usd), ("tokens", budget.tokens)) if v is not None]
    return [u for u in units if u not in meters]


def budgets_of(
    overrides: Mapping[str, Any], stage: str, stage_default: Budget, task_default: Budget
) -> tuple[Budget, Budget]:
    """The stage's and the task's budgets: an operator's override where one was set, else the
    pipeline's. `overrides` is {"task": {...}, "stages": {stage: {...}}}, per unit."""
    return (
        _overridden(stage_default, overrides.get("stages", {}).get(stage)),
        _overridden(task_default, overrides.get("task")),
    )


def raised(overrides: Mapping[str, Any], limits: Limits, to: Budget) -> dict[str, Any]:
    """The overrides after an operator raises the budget to `to`: each scope used up in a unit
    `to` names is raised in that unit; if none is, the task's budget is."""
    out: dict[str, Any] = {
        "task": dict(overrides.get("task") or {}),
        "stages": {k: dict(v) for k, v in (overrides.get("stages") or {}).items()},
    }
    scopes = (
        (out["stages"].setdefault(limits.stage, {}), limits.stage_budget, limits.stage_spent),
        (out["task"], limits.task_budget, limits.task_spent),
    )
    hit = False
    for target, budget, spent in scopes:
        # a raise never lowers a budget
        if to.usd is not None and budget.usd is not None and spent.cost_usd >= budget.usd - 1e-6:
            target["usd"], hit = max(to.usd, budget.usd), True
        if to.tokens is not None and budget.tokens is not None and spent.tokens >= budget.tokens:
            target["tokens"], hit = max(to.tokens, budget.tokens), True
    if not hit:
        current = limits.task_budget
        if to.usd is not None:
            out["task"]["usd"] = to.usd if current.usd is None else max(to.usd, current.usd)
        if to.tokens is not None:
            out["task"]["tokens"] = (
                to.tokens if current.tokens is None else max(to.tokens, current.tokens)
            )
    if not out["stages"][limits.stage]:
        del out["stages"][limits.stage]
    return out


def _overridden(default: Budget, override: Mapping[str, Any] | None) -> Budget:
    if not override:
        return default
    usd = override.get("usd", default.usd)
    tokens = override.get("tokens", default.tokens)
    return Budget(None if usd is None else float(usd), None if tokens is None else int(tokens))
