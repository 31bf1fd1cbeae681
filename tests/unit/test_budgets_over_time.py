"""Budgets over time: what all of orch, or one repository, may spend in a UTC day or month. A
stage whose start finds one spent waits, uncounted and visibly, for the period to end; a run
stopped by one waits likewise; a run that finished its work is kept. Runs in flight in another
process count as they note their spending in the store."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from orch.domain import pipeline as pl
from orch.domain.ledger import Budget, Usage
from orch.domain.model import Task
from orch.domain.periods import Period
from orch.domain.states import JobState, Stage, TaskStatus
from orch.ports import AgentRequest, RepoSettings
from orch.services.over_time import over_time
from orch.services.views import state_view, task_detail
from orch.services.waits import Waits
from orch.testing import InstantAgent, Rig, SimClock, rig

START = 1_000_000.0  # 1970-01-12 13:46:40 UTC
MIDNIGHT = 1_036_800.0  # 1970-01-13 00:00 UTC
RUN = Usage(100, 50, 0, 0, 0.6)
# two agent stages, no person in the way
TWO = pl.Pipeline(
    stages=(
        pl.StageSpec(Stage.ANALYSIS, "analyst", "default", "{{ ticket.title }}"),
        pl.StageSpec(Stage.DEVELOPMENT, "developer", "default", "{{ ticket.title }}"),
    ),
    max_attempts=2,
)


def utc(when: str) -> float:
    return dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        (Period.DAILY, "2026-12-05 17:49:00", "2026-12-05 00:00:00", "2026-12-06 00:00:00"),
        (Period.DAILY, "2026-12-31 23:59:59", "2026-12-31 00:00:00", "2027-01-01 00:00:00"),
        (Period.MONTHLY, "2026-12-05 17:49:00", "2026-12-01 00:00:00", "2027-01-01 00:00:00"),
        (Period.MONTHLY, "2028-02-29 12:00:00", "2028-02-01 00:00:00", "2028-03-01 00:00:00"),
    ],
)
def test_a_period_is_a_utc_day_or_month(period: Period, now: str, start: str, end: str) -> None:
    assert period.start(utc(now)) == utc(start)
    assert period.end(utc(now)) == utc(end)


def world(
    made: list[Rig],
    agent: InstantAgent,
    max_active: int = 1,
    heartbeat_s: float = 5.0,
    **budgets: Budget,
) -> tuple[Rig, SimClock]:
    clock = SimClock(START)
    per_period = {Period(k): v for k, v in budgets.items()}
    repo = RepoSettings(
        name="app", test_command="true", key_prefix="APP", budgets=per_period, max_active=max_active
    )
    r = rig(
        {"default": agent},
        pipeline=TWO,
        repo=repo,
        clock=clock,
        max_attempts=2,
        heartbeat_s=heartbeat_s,
    )
    made.append(r)
    return r, clock


def test_a_stage_waits_for_the_next_day_once_its_repositorys_daily_budget_is_spent(
    made: list[Rig],
) -> None:
    agent = InstantAgent(spends=RUN)
    r, clock = world(made, agent, daily=Budget(usd=1.0))
    first = r.intake.file("app", "first", "", actor="test")
    r.run_until_idle()
    # both its runs finished their work: the second crossed the budget ($1.20 of $1) and is kept
    assert r.store.get_task(first.id).status == TaskStatus.DONE
    second = r.intake.file("app", "second", "", actor="test")

    r.run_until_idle()

    task = r.store.get_task(second.id)
    assert task.status == TaskStatus.ACTIVE and task.stage == Stage.ANALYSIS
    [job] = [j for j in r.store.jobs(task.id) if j.state == JobState.QUEUED]
    assert job.run_after == MIDNIGHT
    assert job.attempt == 0, "waiting for the budget is not an attempt"
    assert job.last_error.startswith(
        "budget over time: the daily budget of repository app is spent ($1.2000 of $1.0000)"
    )
    held = Waits(r.store, r.repos.limit, wall=lambda: START).why(task)
    assert held is not None and held.kind == "budget" and held.until == MIDNIGHT
    assert len(agent.started) == 2, "no agent started for the second task"

    clock.advance(MIDNIGHT - START + 1)
    r.run_until_idle()

    assert r.store.get_task(second.id).status == TaskStatus.DONE
    assert len(agent.started) == 4


def test_a_run_stopped_by_the_budget_of_all_repositories_waits_then_parks_if_it_never_fits(
    made: list[Rig],
) -> None:
    # a run that spends past the budget and does not finish its work: stopped by it
    agent = InstantAgent(spends=Usage(100, 50, 0, 0, 1.5), outcome=lambda _req: 1)
    r, clock = world(made, agent)
    every = {Period.MONTHLY: Budget(usd=1.0)}
    r.engine.tools.settings = replace(r.engine.tools.settings, budgets=every)
    task = r.intake.file("app", "pricey", "", actor="test")

    r.run_until_idle()

    task = r.store.get_task(task.id)
    assert task.status == TaskStatus.ACTIVE, task.status_reason
    [job] = [j for j in r.store.jobs(task.id) if j.state == JobState.QUEUED]
    assert job.last_error.startswith(
        "budget over time: the monthly budget of all repositories is spent ($1.5000 of $1.0000)"
    )
    assert job.run_after == Period.MONTHLY.end(START)
    assert job.attempt == 1, "a run the budget stopped counts an attempt"
    [run] = r.store.runs(task.id)
    assert run.cost_usd == pytest.approx(1.5)

    # the next month it runs again, is stopped again, and with its attempts used up it parks
    clock.advance(Period.MONTHLY.end(START) - START + 1)
    r.run_until_idle()
    task = r.store.get_task(task.id)
    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith(
        "budget over time: the monthly budget of all repositories stopped this stage's run 2"
        " times: it does not fit"
    )


def test_the_state_and_a_task_show_spend_against_each_budget_over_time(made: list[Rig]) -> None:
    r, _ = world(made, InstantAgent(spends=RUN), daily=Budget(usd=5.0, tokens=10_000))
    task = r.intake.file("app", "first", "", actor="test")
    r.run_until_idle()

    over = over_time(
        r.store,
        "app",
        {Period.DAILY: Budget(usd=5.0, tokens=10_000)},
        {Period.MONTHLY: Budget(usd=9)},
    )
    state = state_view(r.store.summary(), {}, over)
    detail = task_detail(r.store, r.store.get_task(task.id), over=over)

    daily, monthly = state["budgets"]
    assert daily["scope"] == "the daily budget of repository app" and daily["repo"] == "app"
    assert daily["spent"]["usd"] == pytest.approx(1.2) and daily["spent"]["tokens_in"] == 200
    assert daily["budget"] == {"usd": 5.0, "tokens": 10_000}
    assert daily["resets_at"] == MIDNIGHT and daily["spent_up"] is False
    assert monthly["scope"] == "the monthly budget of all repositories" and monthly["repo"] is None
    assert detail["ledger"]["over_time"] == state["budgets"]


def test_a_task_waiting_for_a_budget_holds_no_slot_and_a_stop_ends_it_at_once(
    made: list[Rig],
) -> None:
    r, _ = world(made, InstantAgent(spends=RUN), daily=Budget(usd=0.5))
    first = r.intake.file("app", "first", "", actor="test")
    r.run_until_idle()  # its first run crosses the budget and finishes; its second stage waits
    task = r.store.get_task(first.id)
    assert task.stage == Stage.DEVELOPMENT and task.status == TaskStatus.ACTIVE
    assert task.slot is None, "a task waiting for a budget gives its repository slot back"
    worked = task.worked(r.store.now())

    r.intake.stop(task.key, "alice", "not today")
    r.run_until_idle()

    task = r.store.get_task(first.id)
    assert task.status == TaskStatus.CANCELLED, "the STOP did not wait for midnight"
    assert task.worked(r.store.now()) == worked, "waiting was not working time"


def in_flight_elsewhere(r: Rig, spent: Usage) -> tuple[Task, int]:
    """A task whose run another orch process is running, with what it has noted so far."""
    theirs = r.intake.file("app", "elsewhere", "", actor="test")
    claim = r.store.claim("elsewhere:1:other", 3600.0, r.repos.limit)
    assert claim is not None and claim.task_id == theirs.id
    run_id = r.store.start_run(claim, "default", None, "/tmp/elsewhere.log")
    r.store.note_spending(run_id, spent)
    return theirs, run_id


def test_a_stage_waits_when_runs_in_flight_in_another_process_spent_the_day(
    made: list[Rig],
) -> None:
    agent = InstantAgent(spends=RUN)
    r, _ = world(made, agent, max_active=2, daily=Budget(usd=1.0))
    in_flight_elsewhere(r, Usage(1000, 100, 0, 0, 1.0))
    ours = r.intake.file("app", "ours", "", actor="test")

    r.run_until_idle()

    [job] = [j for j in r.store.jobs(ours.id) if j.state == JobState.QUEUED]
    assert job.run_after == MIDNIGHT and job.attempt == 0
    assert job.last_error.startswith(
        "budget over time: the daily budget of repository app is spent ($1.0000 of $1.0000)"
    )
    assert agent.started == []


class SpendingProcess:
    """An agent process that spends `step` each time it is looked at, until it has been looked
    at `ends_after` times (it exits 0) or is held to a budget it has crossed (it is killed, as
    orch's own agents are). `meanwhile(n)` runs at its n-th look."""

    pid = None

    def __init__(self, step: Usage, ends_after: int, meanwhile: Callable[[int], None]) -> None:
        self.step, self.ends_after, self.meanwhile = step, ends_after, meanwhile
        self.spent = Usage()
        self.looks = 0
        self.code: int | None = None
        self.limits: list[Budget] = []

    def wait(self, timeout_s: float) -> int | None:
        if self.code is None:
            time.sleep(min(timeout_s, 0.01))
            self.looks += 1
            self.spent = self.spent + self.step
            self.meanwhile(self.looks)
            if self.looks >= self.ends_after:
                self.code = 0
        return self.code

    def limit(self, budget: Budget) -> None:
        self.limits.append(budget)
        if budget.crossed(self.spent):
            self.code = -9

    def kill(self, grace_s: float) -> int | None:
        self.code = -9 if self.code is None else self.code
        return self.code

    def usage(self) -> Usage:
        return self.spent

    def usage_from(self) -> None:
        return None

    def retrying(self) -> bool:
        return False

    def trouble(self) -> None:
        return None

    def close(self) -> None:
        return None

    def output_bytes(self) -> int:
        return self.looks  # it prints as it goes: never a stall

    def dropped_bytes(self) -> int:
        return 0

    def tail(self, chars: int = 2000) -> str:
        return ""

    def report(self) -> None:
        return None


class SpendingAgent(InstantAgent):
    def __init__(self, make: Callable[[], SpendingProcess]) -> None:
        super().__init__()
        self.make = make
        self.procs: list[SpendingProcess] = []

    def start(self, request: AgentRequest) -> SpendingProcess:  # type: ignore[override]
        self.started.append(request)
        self.procs.append(self.make())
        return self.procs[-1]


def test_a_run_is_stopped_when_runs_in_another_process_spend_what_its_day_had_left(
    made: list[Rig],
) -> None:
    every = {Period.DAILY: Budget(usd=1.0)}
    holder: list[Rig] = []

    def elsewhere_spends(look: int) -> None:
        if look == 10:  # we have spent $0.50; the other process's run notes $0.90 in all
            holder[0].store.note_spending(their_run, Usage(900, 90, 0, 0, 0.9))

    agent = SpendingAgent(lambda: SpendingProcess(Usage(10, 1, 0, 0, 0.05), 400, elsewhere_spends))
    r, _ = world(made, agent, max_active=2, heartbeat_s=0.05)
    holder.append(r)
    r.engine.tools.settings = replace(r.engine.tools.settings, budgets=every)
    _, their_run = in_flight_elsewhere(r, Usage(200, 20, 0, 0, 0.2))
    ours = r.intake.file("app", "ours", "", actor="test")

    r.run_until_idle()

    [proc] = agent.procs
    assert proc.code == -9 and proc.looks < 400, "the run went on past what the day left it"
    # at first it may spend what the day leaves after the other run's $0.20; once that run
    # noted $0.90, only $0.10
    assert proc.limits[0].usd == pytest.approx(0.8)
    assert proc.limits[-1].usd == pytest.approx(0.1)
    [job] = [j for j in r.store.jobs(ours.id) if j.state == JobState.QUEUED]
    assert job.run_after == MIDNIGHT and job.attempt == 1
    assert job.last_error.startswith(
        "budget over time: the daily budget of all repositories is spent"
    ), job.last_error
    [run] = r.store.runs(ours.id)
    assert run.cost_usd == pytest.approx(proc.spent.cost_usd)
