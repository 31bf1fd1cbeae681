"""Budgets over time: what all of orch, or one repository, may spend in a day or a month.

Days and months are UTC: a day starts at 00:00 UTC, a month at 00:00 UTC on its first day. A run
counts in the period it started in. A stage whose start finds such a budget spent waits for the
period's end instead of starting; a run that crosses one while it runs is stopped, and its stage
waits likewise. Neither is the task's failure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from orch.domain.ledger import Budget, Usage


class Period(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"

    def start(self, now: float) -> float:
        """When the period holding `now` began."""
        t = dt.datetime.fromtimestamp(now, dt.UTC)
        first = t.replace(hour=0, minute=0, second=0, microsecond=0)
        if self == Period.MONTHLY:
            first = first.replace(day=1)
        return first.timestamp()

    def end(self, now: float) -> float:
        """When the period holding `now` ends, and the next begins."""
        t = dt.datetime.fromtimestamp(self.start(now), dt.UTC)
        if self == Period.DAILY:
            return (t + dt.timedelta(days=1)).timestamp()
        year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
        return t.replace(year=year, month=month).timestamp()


ALL = ""  # the scope of a budget over every repository
# how the reason of a stage that waits for a budget over time begins
WAITS_FOR_BUDGET = "budget over time:"


@dataclass(frozen=True)
class OverTime:
    """One budget over time, against what was spent in its period so far."""

    period: Period
    repo: str  # ALL, or the repository it holds
    budget: Budget
    spent: Usage
    resets_at: float

    @property
    def scope(self) -> str:
        where = "all repositories" if self.repo == ALL else f"repository {self.repo}"
        return f"the {self.period.value} budget of {where}"


def resets(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
