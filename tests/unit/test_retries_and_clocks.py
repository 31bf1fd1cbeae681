"""Failure classes, the provider circuit breaker, the task deadline, the stall clock, shutdown
and recovery of a dead incarnation's jobs: each clock and each class records its own outcome."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from orch.adapters.agents.command import CommandAgent
from orch.adapters.agents.scripted import ScriptedAgent
from orch.domain import pipeline as pl
from orch.domain.model import Task
from orch.domain.states import JobState, RunOutcome, Stage, TaskStatus
from orch.ports import AgentRequest, RepoSettings
from orch.services.breaker import Breakers
from orch.testing import (
    InstantAgent,
    MemoryProcessTable,
    Rig,
    SimClock,
    retry,
    rig,
)


def file_ticket(r: Rig, title: str = "Add a greeting") -> Task:
    return r.intake.file("app", title, "Say hello.")


def now(r: Rig, task: Task) -> Task:
    return r.store.get_task(task.id)


def shell_agent(script: str) -> CommandAgent:
    return CommandAgent("default", ["sh", "-c", script])


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("exit 127", "was not found"),
        ("echo 'Error: Invalid API key' >&2; exit 1", "refused the credentials"),
    ],
)
def test_a_permanent_failure_parks_the_task_after_one_attempt(
    made: list[Rig], script: str, why: str
) -> None:
    r = rig({"default": shell_agent(script)})
    made.append(r)
    task = file_ticket(r)
    r.run_until_idle()
    t = now(r, task)
    assert (t.stage, t.status) == (Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR)
    assert "permanent failure, not retried" in t.status_reason
    assert why in t.status_reason
    assert len(r.store.runs(task.id)) == 1


def test_an_agent_that_cannot_start_parks_the_task_without_retrying(made: list[Rig]) -> None:
    r = rig({"default": CommandAgent("default", ["/nonexistent/agent-binary"])})
    made.append(r)
    task = file_ticket(r)
    r.run_until_idle()
    t = now(r, task)
    assert t.status == TaskStatus.NEEDS_OPERATOR
    assert "could not start /nonexistent/agent-binary" in t.status_reason
    assert r.store.jobs(task.id)[-1].attempt == 1


def test_a_transient_failure_is_retried_until_the_attempts_run_out(made: list[Rig]) -> None:
    r = rig({"default": shell_agent("echo 'segfault in the model wrapper'; exit 3")})
    made.append(r)
    task = file_ticket(r)
    r.run_until_idle()
    t = now(r, task)
    assert t.status == TaskStatus.NEEDS_OPERATOR
    assert t.status_reason.startswith("3 attempts failed; last: agent default exited 3")
    assert [run.attempt for run in r.store.runs(task.id)] == [1, 2, 3]


class Outage:
    """A provider that rate-limits every call until it recovers."""

    def __init__(self) -> None:
        self.down = True
        self.preflights = 0

    def outcome(self, request: AgentRequest) -> int | None:
        if self.down:
            log = request.log_path
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("API Error: 429 rate_limit_error: Too Many Requests\n")
            return 1
        return 0


class PreflightedAgent(InstantAgent):
    def __init__(self, outage: Outage) -> None:
        super().__init__("default", outage.outcome)
        self.outage = outage

    def preflight(self) -> str | None:
        self.outage.preflights += 1
        return "the provider does not answer" if self.outage.down else None


def test_a_provider_outage_opens_the_circuit_and_stops_new_agent_work_until_a_probe_passes(
    made: list[Rig],
) -> None:
    clock = SimClock()
    outage = Outage()
    agent = PreflightedAgent(outage)
    breakers = Breakers(threshold=2, cooldown_s=60.0, clock=clock)
    many = replace(pl.default_pipeline(), max_attempts=10)
    two = RepoSettings(name="app", test_command="true", max_active=2)
    r = rig({"default": agent}, pipeline=many, repo=two, clock=clock, breakers=breakers)
    made.append(r)
    first, second = file_ticket(r, "first"), file_ticket(r, "second")
    r.run_until_idle()

    # two rate limits in a row open the circuit; nothing else is launched while it is open
    assert len(agent.started) == 2
    assert breakers.state("default")["circuit"] == "open"
    clock.advance(30)
    r.run_until_idle()
    assert len(agent.started) == 2
    waiting = [j for t in (first, second) for j in r.store.jobs(t.id) if j.state == JobState.QUEUED]
    assert waiting
    assert all("circuit open for agent default" in j.last_error for j in waiting)
    # a refused attempt is not the task's failure
    assert all(now(r, t).status == TaskStatus.ACTIVE for t in (first, second))

    # half-open: the preflight runs first, and while the provider is down nothing is launched
    clock.advance(31)
    r.run_until_idle()
    assert outage.preflights == 1
    assert len(agent.started) == 2
    assert breakers.state("default")["circuit"] == "open"

    # the provider is back: the next probe passes, the attempt succeeds, the circuit closes
    outage.down = False
    clock.advance(121)
    r.run_until_idle()
    assert breakers.state("default")["circuit"] == "closed"
    assert {now(r, t).status for t in (first, second)} == {TaskStatus.WAITING}
    assert {now(r, t).stage for t in (first, second)} == {Stage.ARCHITECTURE}


def test_an_agents_circuit_another_process_opened_holds_its_work_back_here(
    made: list[Rig],
) -> None:
    clock = SimClock()
    r = rig({"default": InstantAgent()}, clock=clock)
    made.append(r)
    r.store.open_circuit("default", r.store.now() + 60, 60, "HTTP 529 overloaded_error")
    task = file_ticket(r)

    r.run_until_idle()

    assert now(r, task).status == TaskStatus.ACTIVE
    [job] = r.store.jobs(task.id)
    assert job.state == JobState.QUEUED
    assert job.last_error == "circuit open for agent default: HTTP 529 overloaded_error"


def test_the_task_deadline_counts_working_time_and_not_human_waits(made: list[Rig]) -> None:
    clock = SimClock()
    bounded = replace(pl.default_pipeline(), deadline_s=50.0)
    r = rig({"default": InstantAgent()}, pipeline=bounded, clock=clock)
    made.append(r)
    task = file_ticket(r)
    r.run_until_idle()
    assert now(r, task).waiting_for == "approve-plan"

    clock.advance(3600)  # an hour waiting for a person costs nothing
    assert r.intake.decide(task.key, True, "alice")
    r.run_until_idle()
    assert now(r, task).waiting_for == "confirm-deploy"

    assert r.intake.decide(task.key, True, "alice")
    assert r.dispatcher.run_once()  # reads the approval: the deploy stage is queued
    assert (now(r, task).stage, now(r, task).status) == (Stage.DEPLOY, TaskStatus.ACTIVE)
    slow = r.store.claim("slow:1:worker", 600.0, r.repos.limit)  # a worker takes a minute
    assert slow is not None
    clock.advance(60)  # a minute of working time, past the deadline of 50s
    retry(r.store, slow, "the worker gave up", 0.0, counts=False)
    r.run_until_idle()
    t = now(r, task)
    assert (t.stage, t.status) == (Stage.DEPLOY, TaskStatus.NEEDS_OPERATOR)
    assert t.status_reason == "deadline: the task used its 50s of working time"


def test_time_queued_behind_another_task_for_the_repository_slot_is_not_working_time(
    made: list[Rig],
) -> None:
    clock = SimClock()
    bounded = replace(pl.default_pipeline(), deadline_s=50.0)
    # every agent run takes 20s; the repository runs one task at a time
    agent = InstantAgent(outcome=lambda _req: clock.advance(20) or 0)
    r = rig({"default": agent}, pipeline=bounded, clock=clock)
    made.append(r)
    first, second = file_ticket(r, "First"), file_ticket(r, "Second")
    r.run_until_idle()
    assert [now(r, t).waiting_for for t in (first, second)] == ["approve-plan"] * 2
    for t in (first, second):
        assert r.intake.decide(t.key, True, "alice")
    r.run_until_idle()
    # one task worked through architecture and development (40s) while the other waited for
    # its slot; each is charged only its own 60s of agent runs, so both stop at review
    for t in (first, second):
        t = now(r, t)
        assert (t.stage, t.status) == (Stage.REVIEW, TaskStatus.NEEDS_OPERATOR)
        assert t.status_reason == "deadline: the task used its 50s of working time"
        assert t.worked_s == 60.0


def test_an_agent_that_goes_silent_is_killed_as_stalled_and_the_run_says_so(
    made: list[Rig],
) -> None:
    stages = tuple(
        replace(s, stall_s=0.3) if s.stage == Stage.ANALYSIS else s
        for s in pl.default_pipeline().stages
    )
    quiet = replace(pl.default_pipeline(), stages=stages, max_attempts=1)
    agent = ScriptedAgent(playbook={"stages": {"analysis": {"mode": "hang"}}})
    r = rig({"default": agent}, pipeline=quiet, kill_grace_s=0.5)
    made.append(r)
    task = file_ticket(r)
    r.run_until_idle()
    t = now(r, task)
    assert t.status == TaskStatus.NEEDS_OPERATOR
    assert "stalled: no output for 0.3s" in t.status_reason
    (run,) = r.store.runs(task.id)
    assert run.outcome == RunOutcome.STALLED


def test_shutdown_kills_the_running_agent_and_requeues_its_job_without_counting_it(
    made: list[Rig],
) -> None:
    agent = ScriptedAgent(playbook={"stages": {"analysis": {"mode": "hang"}}})
    r = rig({"default": agent}, kill_grace_s=0.5)
    made.append(r)
    task = file_ticket(r)
    worker = threading.Thread(target=r.dispatcher.run_once)
    worker.start()
    for _ in range(200):
        if r.store.runs(task.id):
            break
        time.sleep(0.02)
    r.dispatcher.stop()
    worker.join(10)
    assert not worker.is_alive()
    (run,) = r.store.runs(task.id)
    assert run.outcome == RunOutcome.SHUTDOWN
    (job,) = r.store.jobs(task.id)
    assert (job.state, job.attempt, job.last_error) == (
        JobState.QUEUED,
        0,
        "the worker shut down",
    )


def test_recovery_voids_the_leases_of_a_dead_incarnation_at_once_and_keeps_a_live_ones(
    made: list[Rig],
) -> None:
    clock = SimClock()
    processes = MemoryProcessTable()
    r = rig({"default": InstantAgent()}, clock=clock, processes=processes)
    made.append(r)
    dead_task, live_task = file_ticket(r, "dead"), file_ticket(r, "live")
    dead = r.store.claim("host:1:1:dead", 30.0, lambda _repo: 2)
    live = r.store.claim("host:2:2:live", 30.0, lambda _repo: 2)
    assert dead is not None and live is not None
    processes.dead.add("host:1:1:dead")

    recovery = r.dispatcher.recover()  # no time has passed: the TTL alone would wait 30s
    assert (recovery.leases_voided, recovery.requeued) == (1, 1)
    jobs = {j.task_id: j for t in (dead_task, live_task) for j in r.store.jobs(t.id)}
    assert jobs[dead.task_id].state == JobState.QUEUED
    assert jobs[live.task_id].state == JobState.RUNNING
    assert jobs[live.task_id].owner == "host:2:2:live"


@pytest.mark.parametrize(
    ("stopped", "reason"),
    [
        (False, "lease expired 3 times"),
        (True, "lease expired 3 times; its stop could not be applied: an operator must decide"),
    ],
)
def test_a_job_that_kills_its_worker_every_time_is_dead_lettered_with_its_reason(
    made: list[Rig], stopped: bool, reason: str
) -> None:
    processes = MemoryProcessTable()
    r = rig({"default": InstantAgent()}, processes=processes, max_attempts=3)
    made.append(r)
    task = file_ticket(r)
    if stopped:
        r.intake.stop(task.key, "ann", "wrong ticket")
    for n in range(3):
        owner = f"host:{n}:1:poison{n}"
        assert r.store.claim(owner, 30.0, r.repos.limit) is not None
        processes.dead.add(owner)
        r.dispatcher.recover()
    t = now(r, task)
    assert t.status == TaskStatus.NEEDS_OPERATOR
    assert t.status_reason == reason
