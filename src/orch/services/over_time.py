"""What was spent in the current day and month against the budgets over time: all repositories'
and one repository's (orch.domain.periods). Read from the store, by when each run started."""

from __future__ import annotations

from collections.abc import Mapping

from orch.domain.ledger import Budget
from orch.domain.periods import ALL, OverTime, Period
from orch.ports import Store


def over_time(
    store: Store,
    repo: str | None,
    repo_budgets: Mapping[Period, Budget],
    all_budgets: Mapping[Period, Budget],
    now: float | None = None,
) -> tuple[OverTime, ...]:
    """Each configured budget over time, the repository's first, with its period's spending;
    nothing is read for a period without a budget."""
    now = store.now() if now is None else now
    scopes = [(repo, repo_budgets)] if repo is not None else []
    out = []
    for scope, budgets in (*scopes, (ALL, all_budgets)):
        for period, budget in budgets.items():
            if budget.unlimited:
                continue
            spent = store.spent_since(period.start(now), None if scope == ALL else scope)
            out.append(OverTime(period, scope or ALL, budget, spent, period.end(now)))
    return tuple(out)
