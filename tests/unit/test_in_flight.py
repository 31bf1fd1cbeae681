"""A run in flight notes what it has spent, and what it retries, in the store as it goes: at most
once per interval, only when that changed, and a store that is away for a while loses nothing."""

from __future__ import annotations

from typing import Any

from orch.domain import pipeline as pl
from orch.domain.errors import StoreUnavailable
from orch.domain.failures import FailureClass, Trouble
from orch.domain.ledger import Budget, Limits, Usage
from orch.domain.model import Ticket
from orch.services.in_flight import InFlight, SpendingWatch
from orch.testing import SimClock, memory_store


class Proc:
    """What the watch reads of an agent process."""

    def __init__(self) -> None:
        self.spent = Usage()
        self.trouble_now: Trouble | None = None
        self.limits: list[Budget] = []

    def usage(self) -> Usage:
        return self.spent

    def retrying(self) -> bool:
        return self.trouble_now is not None

    def trouble(self) -> Trouble | None:
        return self.trouble_now

    def limit(self, budget: Budget) -> None:
        self.limits.append(budget)


class Flaky:
    """The store, away while `away` is set."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.away = False
        self.notes = 0

    def note_spending(self, run_id: int, usage: Usage, retrying: str = "") -> None:
        if self.away:
            raise StoreUnavailable("the database is restarting")
        self.notes += 1
        self.store.note_spending(run_id, usage, retrying)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def running(clock: SimClock) -> tuple[Any, int, int]:
    store = memory_store(clock)
    flow = pl.default_pipeline()
    ticket = Ticket(key="APP-1", repo="app", title="t", body="")
    task = store.create_task(ticket, "orch/APP-1", pl.to_dict(flow), pl.start(flow), "t")
    claim = store.claim("here:1:x", 60.0, lambda _repo: 1)
    assert claim is not None
    return store, task.id, store.start_run(claim, "claude", 7, "/tmp/run.log")


def watch(store: Any, flight: InFlight, clock: SimClock) -> SpendingWatch:
    limits = Limits("development", Budget(), Budget(), Usage(), Usage())
    return SpendingWatch(store, flight, limits, ({}, {}), lambda: [], 10.0, clock)


def test_a_run_notes_its_spending_once_per_interval_and_only_when_it_changed() -> None:
    clock = SimClock(1000.0)
    store, task_id, run_id = running(clock)
    flaky = Flaky(store)
    proc = Proc()
    w = watch(flaky, InFlight("app", run_id, 1000.0, proc), clock)  # type: ignore[arg-type]

    proc.spent = Usage(100, 10, cost_usd=0.1)
    w.tick()  # before the first interval is over
    assert flaky.notes == 0
    clock.advance(10)
    w.tick()
    assert [r.usage for r in store.runs(task_id)] == [Usage(100, 10, cost_usd=0.1)]
    clock.advance(10)
    w.tick()  # nothing changed
    assert flaky.notes == 1
    assert proc.limits == [], "without budgets over time the run is held to nothing new"


def test_what_a_run_retries_is_noted_and_cleared_when_it_gets_an_answer() -> None:
    clock = SimClock(1000.0)
    store, task_id, run_id = running(clock)
    proc = Proc()
    w = watch(store, InFlight("app", run_id, 1000.0, proc), clock)  # type: ignore[arg-type]

    proc.trouble_now = Trouble(FailureClass.PROVIDER, "the provider failed: HTTP 529")
    clock.advance(10)
    w.tick()
    assert store.retrying_runs() == {task_id: "the provider failed: HTTP 529"}

    proc.trouble_now, proc.spent = None, Usage(50, 5)
    clock.advance(10)
    w.tick()
    assert store.retrying_runs() == {}


def test_spending_not_noted_while_the_store_was_away_is_noted_when_it_is_back() -> None:
    clock = SimClock(1000.0)
    store, task_id, run_id = running(clock)
    flaky = Flaky(store)
    proc = Proc()
    flight = InFlight("app", run_id, 1000.0, proc)
    w = watch(flaky, flight, clock)  # type: ignore[arg-type]

    proc.spent = Usage(300, 30, cost_usd=0.3)
    flaky.away = True
    clock.advance(10)
    w.tick()  # the run goes on
    assert flight.unnoted() == Usage(300, 30, cost_usd=0.3), "still counted in this process"

    flaky.away = False
    clock.advance(10)
    w.tick()
    assert flight.unnoted() == Usage()
    [run] = store.runs(task_id)
    assert run.usage == Usage(300, 30, cost_usd=0.3)
