"""What was spent in the current day and month against the budgets over time: all repositories'
and one repository's (orch.domain.periods). Read from the store, by when each run started."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from orch.domain.ledger import Budget, Usage
from orch.domain.periods import ALL, OverTime, Period
from orch.ports import Store


def over_time(
    store: Store,
    repo: str | None,
    repo_budgets: Mapping[Period, Budget],
    all_budgets: Mapping[Period, Budget],
    now: float | None = None,
    live: Iterable[tuple[str, float, Usage]] = (),
) -> tuple[OverTime, ...]:
    """Each configured budget over time, the repository's first, with its period's spending:
    the store's, and `live`, what runs in flight (repository, when it started, spent) have spent
    that the store does not hold yet. Nothing is read for a period without a budget."""
    now = store.now() if now is None else now
    live = list(live)
    scopes = [(repo, repo_budgets)] if repo is not None else []
    out = []
    for scope, budgets in (*scopes, (ALL, all_budgets)):
        for period, budget in budgets.items():
            if budget.unlimited:
                continue
            start = period.start(now)
            spent = store.spent_since(start, None if scope == ALL else scope)
            for repo, started_at, usage in live:
                if (scope == ALL or repo == scope) and started_at >= start:
                    spent = spent + usage
            out.append(OverTime(period, scope or ALL, budget, spent, period.end(now)))
    return tuple(out)
