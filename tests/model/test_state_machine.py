"""A Hypothesis state machine over the engine on memory adapters and a simulated clock.

Its actors: tickets are filed; a job completes, fails, or its agent hangs until the stall
timeout; orch crashes at any crash point, mid-job or while taking an event, or again and again
at the same point (a restart storm, a poison job); a worker pauses past its lease and comes back
to write with its old claim; the sweeper runs; the clock advances; events arrive twice or out
of order; orch restarts; people approve, reject and press STOP; an operator retries. I1-I7 are
checked after every step; I8 when the faults end (teardown): the machine restarts orch if it is
down, runs until idle, approves whatever waits, lets time pass, and every task must have
converged.

Every failure it finds becomes a named regression test in test_regressions.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orch.crashpoints import POINTS
from orch.domain import pipeline as pl
from orch.domain.errors import Conflict, LeaseLost
from orch.domain.model import Claim, GateRecord, Task
from orch.domain.states import EffectState, Stage, TaskStatus
from orch.invariants import Observation
from orch.ports import AgentRequest
from orch.testing import Rig, SimulatedCrash, advance, crash_at, retry, set_timer, supersede

from .harness import REPO, Outcome, World, build_world, snapshot
from .invariants import Violation, check_all, observe

MAX_TICKETS = 3
TICKET = st.integers(0, MAX_TICKETS - 1)
APPROVER = "approver"  # approves a task that waits at a checkpoint
EARLY = "early-bird"  # approves a task that waits for nothing (yet): must be ignored
# a paused worker's writes with its old claim, every one of which must be fenced off
STALE_WRITES = (
    "advance",
    "renew",
    "begin_effect",
    "finish_effect",
    "retry",
    "mark_events",
    "start_run",
    "record_gate",
    "set_timer",
    "supersede",
)
SETTLE_ROUNDS = 12
STOP_MOMENTS = ("between jobs", "twice", "then an older approval", "while an agent works")
# where a new ticket's task may be brought, fault-free, before the faults start
HEAD_STARTS = (Stage.ARCHITECTURE, Stage.DEVELOPMENT, Stage.DEPLOY_STAGING, Stage.DEPLOY)

SETTINGS = settings(
    max_examples=50,
    stateful_step_count=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class StopMark:
    """A task when its STOP was recorded: its version, and how many agents it had started."""

    version: int
    agent_starts: int


def stale_write(rig: Rig, claim: Claim, write: str) -> None:
    """A write a worker that lost `claim` might still attempt."""
    store = rig.store
    if write == "advance":
        pipeline = pl.from_dict(store.get_task(claim.task_id).pipeline)
        advance(store, claim, claim.stage, pl.after_success(pipeline, claim.stage), "paused")
    elif write == "renew":
        store.renew(claim, 30.0)
    elif write == "begin_effect":
        store.begin_effect(claim, f"stale:{claim.job_id}:{claim.token}", "notify", REPO, "")
    elif write == "finish_effect":
        effects = store.effects(claim.task_id)
        key = effects[-1].key if effects else "stale:none"
        store.finish_effect(claim, key, EffectState.SUCCEEDED, {"by": "a paused worker"})
    elif write == "retry":
        retry(store, claim, "written by a paused worker", 0.0)
    elif write == "mark_events":
        store.mark_events(claim, [e.id for e in store.events(claim.task_id)] or [0])
    elif write == "start_run":
        store.start_run(claim, "default", None, "stale.log")
    elif write == "record_gate":
        store.record_gate(
            claim,
            GateRecord(claim.task_id, claim.version, "stale", "0" * 40, claim.stage, True, ""),
        )
    elif write == "set_timer":
        set_timer(store, claim, 10.0)
    elif write == "supersede":
        supersede(store, claim)
    else:  # pragma: no cover - a typo in STALE_WRITES
        raise AssertionError(write)


class OrchModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.keys: list[str] = []
        self.alive = True  # False from a crash until orch restarts
        self.stops: dict[str, StopMark] = {}
        self.paused = 0
        # each ticket's task status as of the last step (the invariant refreshes it), for the
        # preconditions
        self.statuses: dict[str, str] = {}

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    def has_tickets(self) -> bool:
        return bool(self.keys)

    def is_up(self) -> bool:
        return self.alive

    def has_work(self) -> bool:
        """orch is up, and some task is active or waits for a person."""
        return self.alive and any(
            s in (TaskStatus.ACTIVE, TaskStatus.WAITING) for s in self.statuses.values()
        )

    # -- helpers -----------------------------------------------------------------------------

    def _key(self, i: int) -> str:
        return self.keys[i % len(self.keys)]

    def _task(self, key: str) -> Task:
        return self.w.rig.intake.task(key)

    def _run_one(self, outcome: Outcome) -> bool:
        self.w.agent.mode = outcome
        try:
            return self.w.rig.dispatcher.run_once()
        finally:
            self.w.agent.mode = Outcome.SUCCEED

    def _waiting(self) -> list[str]:
        """Tickets whose task waits at a checkpoint now."""
        tasks = self.w.rig.store.list_tasks(limit=1000)
        return sorted(t.key for t in tasks if t.status == TaskStatus.WAITING)

    def _waited(self) -> list[str]:
        """Tickets whose task waited at a checkpoint after the last step."""
        return sorted(k for k, s in self.statuses.items() if s == TaskStatus.WAITING)

    def someone_waits(self) -> bool:
        return bool(self._waited())

    def _work(self, jobs: int, last: Outcome = Outcome.SUCCEED) -> None:
        """Up to `jobs` jobs run, while any is runnable. The agents succeed, but the last
        job's ends as `last` says."""
        try:
            for n in range(jobs, 0, -1):
                self.w.agent.mode = last if n == 1 else Outcome.SUCCEED
                if not self.w.rig.dispatcher.run_once():
                    return
        finally:
            self.w.agent.mode = Outcome.SUCCEED

    def _approve(self, key: str) -> bool:
        waiting = self._task(key).status == TaskStatus.WAITING
        return self._decide(key, True, APPROVER if waiting else EARLY)

    def _decide(self, key: str, approve: bool, actor: str, comment: str = "") -> bool:
        """A person's answer; one that cannot apply (nothing waits, or the wait was already
        answered otherwise) is refused, and then nothing is recorded."""
        try:
            return self.w.rig.intake.decide(key, approve, actor, comment)
        except Conflict:
            return False

    def _stop(self, key: str, reason: str) -> bool:
        try:
            return self.w.rig.intake.stop(key, "stopper", reason)[1]
        finally:
            self._note_stop(key)

    def _note_stop(self, key: str, starting: int = 0) -> None:
        if key in self.stops:
            return
        task = self._task(key)
        if any(e.kind == "stop" for e in self.w.rig.store.events(task.id)):
            self.stops[key] = StopMark(task.version, self.w.agent.starts(key) + starting)

    # -- actors ------------------------------------------------------------------------------

    @initialize(max_active=st.integers(1, 2))
    def a_repository_with_slots(self, max_active: int) -> None:
        self.world = build_world(max_active=max_active)

    @precondition(lambda self: len(self.keys) < MAX_TICKETS)
    @rule(head_start=st.sampled_from([None, *HEAD_STARTS]))
    def a_ticket_is_filed(self, head_start: Stage | None) -> None:
        """A ticket is filed; with a head start, work goes on without faults (people approving
        what waits) until its task reaches that stage, so faults hit every stage."""
        task = self.w.rig.intake.file(REPO, f"Ticket {len(self.keys) + 1}", "Say hello.")
        self.keys.append(task.key)
        if head_start is None or not self.alive:
            return
        for _ in range(60):
            now = self._task(task.key)
            if now.stage == head_start or now.status in (TaskStatus.DONE, TaskStatus.CANCELLED):
                return
            if not self.w.rig.dispatcher.run_once():
                waiting = self._waiting()
                if not waiting or not self._approve(waiting[0]):
                    return

    @precondition(has_work)
    @rule(jobs=st.integers(1, 4), last=st.sampled_from(Outcome))
    def jobs_run(self, jobs: int, last: Outcome) -> None:
        """Jobs complete; the last one's agent succeeds, fails (exits 1), or hangs until its
        stall timeout kills it."""
        self._work(jobs, last)

    @precondition(has_work)
    @rule(
        point=st.sampled_from(POINTS),
        nth=st.integers(1, 2),
        jobs=st.integers(1, 6),
        outcome=st.sampled_from([Outcome.SUCCEED, Outcome.FAIL, Outcome.HANG]),
    )
    def orch_crashes_mid_job(self, point: str, nth: int, jobs: int, outcome: Outcome) -> None:
        """Jobs run with the point armed, and orch dies the nth time it passes it. The last
        job's agent ends as `outcome` says."""
        with crash_at(f"{point}:{nth}"):
            try:
                self._work(jobs, outcome)
            except SimulatedCrash:
                self.alive = False

    @precondition(has_work)
    @rule(point=st.sampled_from(POINTS), times=st.integers(2, 4))
    def orch_dies_at_the_same_point_again_and_again(self, point: str, times: int) -> None:
        """A restart storm, or a poison job (F17, F19): orch dies the first time work reaches
        `point`, restarts and recovers, `times` times running, so one job may lose its lease
        until the sweeper dead-letters it."""
        for _ in range(times):
            with crash_at(point):
                try:
                    self._work(6)
                except SimulatedCrash:
                    pass
                else:
                    return  # work no longer reaches the point
            self.w.rig.restart()
            self.alive = True
            self.w.sweep()

    @precondition(has_tickets)
    @rule(
        i=TICKET,
        event=st.sampled_from(["stop", "approve"]),
        point=st.sampled_from(["inbox.event", "cancel.flag"]),
    )
    def orch_crashes_while_taking_an_event(self, i: int, event: str, point: str) -> None:
        key = self._key(i)
        with crash_at(point):
            try:
                if event == "stop":
                    self.w.rig.intake.stop(key, "stopper", "taken as orch crashed")
                else:
                    self._approve(key)
            except SimulatedCrash:
                self.alive = False
        self._note_stop(key)

    @precondition(has_work)
    @rule(write=st.sampled_from(STALE_WRITES), reclaim=st.booleans())
    def a_worker_pauses_past_its_lease_and_comes_back(self, write: str, reclaim: bool) -> None:
        """A worker claims a job and pauses (SIGSTOP, a partition) past its lease; the sweeper
        requeues or dead-letters the job, maybe another worker reclaims it; then the paused
        worker writes with its old claim. The write must be fenced off and change nothing."""
        w = self.w
        self.paused += 1
        claim = w.rig.store.claim(f"paused:{self.paused}:1:stopped", w.ttl, w.rig.repos.limit)
        if claim is None:
            return
        w.clock.advance(w.ttl + 1)
        w.sweep(recover=False)
        if reclaim:
            self._run_one(Outcome.SUCCEED)
        before = snapshot(w.rig.store)
        try:
            stale_write(w.rig, claim, write)
        except (LeaseLost, Conflict):
            pass
        else:
            raise Violation("rule 3", f"a paused worker's {write} under token {claim.token} went")
        if snapshot(w.rig.store) != before:
            raise Violation("rule 3", f"a paused worker's fenced {write} changed the store")

    @precondition(is_up)
    @rule(recover=st.booleans())
    def the_sweeper_runs(self, recover: bool) -> None:
        self.w.sweep(recover=recover)

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0, 600.0, 1900.0]))
    def the_clock_advances(self, seconds: float) -> None:
        self.w.clock.advance(seconds)

    @rule()
    def orch_restarts(self) -> None:
        self.w.rig.restart()
        self.alive = True

    @precondition(someone_waits)
    @rule(i=TICKET, approve=st.booleans())
    def a_person_decides(self, i: int, approve: bool) -> None:
        """A person approves (or rejects) a task that waits at a checkpoint."""
        keys = self._waited()
        if approve:
            self._approve(keys[i % len(keys)])
        else:
            self._decide(keys[i % len(keys)], False, "rejecter", "not like this")

    @precondition(has_tickets)
    @rule(
        i=TICKET,
        when=st.sampled_from(STOP_MOMENTS),
        agent_ends=st.sampled_from([Outcome.SUCCEED, Outcome.FAIL, Outcome.HANG]),
    )
    def a_person_presses_stop(self, i: int, when: str, agent_ends: Outcome) -> None:
        """STOP between jobs; twice (recorded once); followed by an approval sent before it;
        or while an agent works (the STOP lands between the agent's start and its end, and
        the agent then ends as `agent_ends` says: a hanging one by its stall timeout)."""
        key = self._key(i)
        if when == "while an agent works" and self.alive:
            self._stop_while_an_agent_works(agent_ends)
        elif when == "twice":
            self._stop(key, "once")
            assert not self._stop(key, "twice"), f"the second STOP of {key} was recorded"
        else:
            self._stop(key, "changed our minds")
            if when == "then an older approval":
                self._decide(key, True, APPROVER)

    def _stop_while_an_agent_works(self, agent_ends: Outcome) -> None:
        def press(request: AgentRequest) -> Outcome:
            self.w.agent.on_start = None
            self.w.rig.intake.stop(request.task_key, "stopper", "while the agent works")
            # the agent starting now is the last one this task may start
            self._note_stop(request.task_key, starting=1)
            return agent_ends

        self.w.agent.on_start = press
        try:
            self._run_one(Outcome.SUCCEED)
        finally:
            self.w.agent.on_start = None

    @precondition(has_tickets)
    @rule(i=TICKET, case=st.sampled_from(["twice", "before its wait"]))
    def an_approval_arrives_twice_or_early(self, i: int, case: str) -> None:
        """The same approval twice (recorded once), or an approval for a task that waits for
        nothing (yet), which must be ignored, then and when the wait comes."""
        key = self._key(i)
        if case == "twice":
            self._approve(key)
            assert not self._approve(key), f"the second approval of {key} was recorded"
        elif self._task(key).status != TaskStatus.WAITING:
            self._approve(key)

    @precondition(has_tickets)
    @rule(i=TICKET)
    def an_operator_retries(self, i: int) -> None:
        key = self._key(i)
        if self._task(key).status == TaskStatus.NEEDS_OPERATOR:
            self.w.rig.intake.retry(key, None, "ops")
        else:
            with pytest.raises(Conflict):
                self.w.rig.intake.retry(key, None, "ops")

    # -- checks ------------------------------------------------------------------------------

    def _observe(self) -> Observation:
        return observe(self.w.rig, deploys=self.w.deploys, agents=self.w.agent.processes)

    def _check_model(self, o: Observation) -> None:
        """What this model knows beyond I1-I8: a STOP recorded between jobs is final (the task
        only gets cancelled or parked after it, and starts no agent), and an approval that
        came before its checkpoint's wait is never applied."""
        for key, mark in self.stops.items():
            task = o.record.by_key(key)
            assert task is not None
            for t in o.record.transitions[task.id]:
                if t.version > mark.version and t.to_status not in (
                    TaskStatus.CANCELLED.value,
                    TaskStatus.NEEDS_OPERATOR.value,
                ):
                    raise Violation(
                        "I6",
                        f"{key} was stopped at v{mark.version}, then went to "
                        f"{t.to_stage}/{t.to_status} at v{t.version} ({t.reason!r})",
                    )
            started = self.w.agent.starts(key) - mark.agent_starts
            if started:
                raise Violation("I6", f"{key} started {started} agent(s) after its STOP")
        for history in o.record.transitions.values():
            for t in history:
                if t.actor == EARLY:
                    raise Violation("F12", f"an approval sent before its wait moved {t}")

    @invariant()
    def i1_to_i7_hold(self) -> None:
        if self.world is None:
            return
        o = self._observe()
        self.statuses = {t.key: t.status for t in o.record.tasks}
        self._verify(o, settled=False)

    def _verify(self, o: Observation, *, settled: bool) -> None:
        """I1-I7 (and I8 once settled), and what the model knows."""
        check_all(o, swept_at=self.w.swept_at, settled=settled)
        self._check_model(o)

    def teardown(self) -> None:
        if self.world is None:
            return
        try:
            if sys.exc_info()[0] is None:  # a step failed already: report that, not the settle
                self._settle()
        finally:
            self.world.close()

    def _settle(self) -> None:
        """The faults end: orch comes back, runs until idle, people approve what waits, time
        passes (leases, backoffs and the STOP bound run out); every task must converge (I8)."""
        w = self.w
        w.agent.mode = Outcome.SUCCEED
        if not self.alive:
            w.rig.restart()
            self.alive = True
        idle = 0
        for _ in range(SETTLE_ROUNDS):
            ran = w.drain()
            approved = 0
            for task in w.rig.store.list_tasks(limit=1000):
                if task.status == TaskStatus.WAITING:
                    approved += w.rig.intake.decide(task.key, True, APPROVER)
            if approved:
                ran += w.drain()
            if ran or approved:
                idle = 0
                continue
            idle += 1
            if idle == 2:
                break
            w.clock.advance(w.rig.dispatcher.settings.cancel_bound_s + w.ttl + 1)
        self._verify(self._observe(), settled=True)


def test_no_interleaving_of_jobs_faults_and_people_breaks_i1_to_i8() -> None:
    run_state_machine_as_test(OrchModel, settings=SETTINGS)
