"""Agent runs in flight and what they have spent so far. Each run notes its spending in the
store as it goes, so every process reads it against the budgets over time, and each run is held,
as it goes, to what those budgets leave it after what runs elsewhere spent since it started. It
notes what its agent is retrying there too, for any process to show."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from orch.domain.errors import OrchError
from orch.domain.ledger import Budget, Limits, Usage
from orch.domain.periods import Period
from orch.ports import AgentProcess, Store
from orch.services.over_time import over_time

log = logging.getLogger(__name__)


def retrying(proc: AgentProcess) -> str:
    """What a run's agent is retrying (its provider's failure, as far as it is known), or ""
    while it is not."""
    if not proc.retrying():
        return ""
    trouble = proc.trouble()
    return trouble.why if trouble is not None else "its CLI retries its model requests"


@dataclass
class InFlight:
    """A run this process supervises, and what of its spending the store holds."""

    repo: str
    run_id: int
    started_at: float  # the store's clock
    proc: AgentProcess
    noted: Usage = field(default_factory=Usage)
    noted_retrying: str = ""

    def unnoted(self) -> Usage:
        """What it spent that the store does not hold yet."""
        return self.proc.usage().less(self.noted)


class SpendingWatch:
    """Called on each tick of a run's supervision; at most every `every_s`, it notes what the
    run spent (if that changed) and, where budgets over time apply, reads them again and holds
    the rest of the run to what they leave it."""

    def __init__(
        self,
        store: Store,
        flight: InFlight,
        limits: Limits,
        budgets: tuple[Mapping[Period, Budget], Mapping[Period, Budget]],
        live: Callable[[], list[tuple[str, float, Usage]]],
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.flight = flight
        self.limits = limits  # as they stand now: the budgets over time read again
        self._budgets = budgets  # the run's repository's, and all repositories'
        self._live = live  # what the other runs in flight here have not noted yet
        self._every_s = every_s
        self._clock = clock
        self._due = clock() + every_s

    def tick(self) -> None:
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self._every_s
        try:
            self._note()
            if self.limits.over_time:
                self._hold()
        except OrchError as exc:  # the store is away: the next tick tries again
            log.warning("could not note what run %s spent: %s", self.flight.run_id, exc)

    def _note(self) -> None:
        flight = self.flight
        usage, now_retrying = flight.proc.usage(), retrying(flight.proc)
        if (usage, now_retrying) != (flight.noted, flight.noted_retrying):
            self.store.note_spending(flight.run_id, usage, now_retrying)
            flight.noted, flight.noted_retrying = usage, now_retrying

    def _hold(self) -> None:
        flight = self.flight
        repo_budgets, all_budgets = self._budgets
        # the store holds what every process's runs noted, this one's too (a period that began
        # after it started does not count it); the other runs here add what they have not
        now = self.store.now()
        periods = over_time(
            self.store, flight.repo, repo_budgets, all_budgets, now=now, live=self._live()
        )
        others = tuple(
            replace(o, spent=o.spent.less(flight.noted))
            if flight.started_at >= o.period.start(now)
            else o
            for o in periods
        )
        self.limits = replace(self.limits, over_time=others)
        flight.proc.limit(self.limits.left())
