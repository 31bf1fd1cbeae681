"""I1-I8 (DESIGN.md §4) as checks over a rig: its store, `MemoryForge.merges`, the
`MemoryNotifier`, the pipeline, and what the harness saw beside them (deploys that ran, agent
processes, the time of the last sweep).

`observe()` reads every record through the store's port (the memory and the SQL stores alike);
each `check_iN` takes that snapshot and raises `Violation` (an AssertionError naming the
invariant and what broke it). Reading the store's records, not asking the engine, keeps the
checks independent of the code they check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orch import invariants
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectState,
    JobState,
    TaskStatus,
)
from orch.testing import Rig

from .harness import DeployLog, StartedAgent

TERMINAL = {TaskStatus.DONE.value, TaskStatus.CANCELLED.value}
UNRESOLVED = {s.value for s in UNRESOLVED_EFFECT_STATES}
# why a task that was STOPped may be parked instead of cancelled: the STOP waits behind an
# effect whose outcome nobody can tell, or its clean-up failed; an operator decides
STOP_PARK_REASONS = ("an operator must decide", "outlived its bound", "stop could not be applied")


class Violation(AssertionError):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant} violated: {detail}")
        self.invariant = invariant


@dataclass(frozen=True)
class Observed:
    """What the store recorded (read through its port, as `orch chaos` reads it), and the
    evidence the rig has beside it."""

    record: invariants.Record
    merges: list[tuple[str, str, str]]
    sent: list[tuple[str, str]]
    limits: dict[str, int]
    deploys: list[tuple[str, str]] = field(default_factory=list)
    agents: list[StartedAgent] = field(default_factory=list)

    @property
    def now(self) -> float:
        return self.record.now

    @property
    def tasks(self) -> list[Any]:
        return list(self.record.tasks)

    @property
    def jobs(self) -> list[Any]:
        return list(self.record.jobs)

    @property
    def transitions(self) -> dict[int, list[Any]]:
        return dict(self.record.transitions)

    @property
    def effects(self) -> list[Any]:
        return list(self.record.effects)

    @property
    def events(self) -> list[Any]:
        return list(self.record.events)

    def jobs_of(self, task_id: int) -> list[Any]:
        return self.record.jobs_of(task_id)

    def events_of(self, task_id: int, kind: str | None = None) -> list[Any]:
        return [e for e in self.events if e.task_id == task_id and kind in (None, e.kind)]

    def task_by_key(self, key: str) -> Any | None:
        found = [t for t in self.tasks if t.key == key]
        return max(found, key=lambda t: t.id) if found else None


def observe(
    rig: Rig, *, deploys: DeployLog | None = None, agents: Sequence[StartedAgent] = ()
) -> Observed:
    record = invariants.read(rig.store)
    return Observed(
        record=record,
        merges=list(rig.forge.merges),
        sent=list(rig.notifier.sent),
        limits={t.repo: rig.repos.limit(t.repo) for t in record.tasks},
        deploys=deploys.entries() if deploys is not None else [],
        agents=list(agents),
    )


def _raise(invariant: str, violations: Sequence[str]) -> None:
    if violations:
        raise Violation(invariant, "; ".join(violations[:5]))


def _twice(items: Iterable[Any]) -> list[Any]:
    return [item for item, n in Counter(items).items() if n > 1]


# -- I1: at most one merge per pull request and one production deploy per release, ever --------


def check_i1(o: Observed) -> None:
    doubled = _twice((repo, head) for repo, head, _sha in o.merges)
    if doubled:
        raise Violation("I1", f"merged more than once (repo, head): {doubled}")
    deployed = [
        (e.repo, e.precondition)
        for e in o.effects
        if e.kind == "deploy:production" and e.state == EffectState.SUCCEEDED.value
    ]
    doubled = _twice(deployed)
    if doubled:
        raise Violation("I1", f"production deploy recorded twice (repo, release): {doubled}")
    doubled = _twice(release for target, release in o.deploys if target == "production")
    if doubled:
        raise Violation("I1", f"production deploy ran more than once for releases {doubled}")


# -- I2: no lost task ---------------------------------------------------------------------------


def check_i2(o: Observed) -> None:
    _raise("I2", invariants.stranded(o.record))


# -- I3: no zombie ------------------------------------------------------------------------------


def check_i3(o: Observed, *, swept_at: float | None) -> None:
    """No job is still running with a lease that had already expired when the sweeper last
    ran (`swept_at`, sim time; the sweep requeues or dead-letters every job whose lease
    expired before it, so a job outlives its lease by at most one sweep), and no agent process
    lives for a task that no job is running."""
    _raise("I3", invariants.past_leases(o.record, swept_at))
    live = [a for a in o.agents if a.alive]
    for key, n in Counter(a.task_key for a in live).items():
        if n > 1:
            raise Violation("I3", f"{n} agents alive at once for {key}")
    for agent in live:
        task = o.task_by_key(agent.task_key)
        running = task is not None and any(
            j.state == JobState.RUNNING.value for j in o.jobs_of(task.id)
        )
        if not running:
            raise Violation(
                "I3", f"the {agent.stage} agent of {agent.task_key} lives, and no job runs it"
            )


# -- I4: history is gap-free and every transition is an edge of the pipeline --------------------


def check_i4(o: Observed) -> None:
    _raise("I4", invariants.history(o.record))


# -- I5: per-repo limits hold at every instant --------------------------------------------------


def check_i5(o: Observed) -> None:
    """Tasks holding a repository slot never exceed the repository's `max_active`, each holds a
    distinct slot below it, and only an active task holds one (a wait holds nothing). A
    running job of an active task works under its task's slot, unless it only applies a STOP
    (which needs none), so running work never exceeds `max_active` either. The repository's
    one merge in flight (an unresolved merge effect) belongs to an active task: a task that
    waits, is parked or has ended holds no merge slot (rule 11)."""
    for repo, limit in o.limits.items():
        holders = [t for t in o.tasks if t.repo == repo and t.slot is not None]
        if len(holders) > limit:
            keys = [t.key for t in holders]
            raise Violation("I5", f"{len(holders)} tasks {keys} hold slots of {repo}, max {limit}")
        slots = [t.slot for t in holders]
        if _twice(slots) or any(not 0 <= s < limit for s in slots):
            raise Violation("I5", f"slots {slots} of {repo} are not distinct slots below {limit}")
        for t in holders:
            if t.status != TaskStatus.ACTIVE.value:
                raise Violation("I5", f"{t.key} is {t.status} and still holds slot {t.slot}")
        working = {
            j.task_id for j in o.jobs if j.repo == repo and j.state == JobState.RUNNING.value
        }
        for t in o.tasks:
            if (
                t.id in working
                and t.status == TaskStatus.ACTIVE.value
                and t.cancel_requested_at is None
                and t.slot is None
            ):
                raise Violation("I5", f"{t.key} runs a job of {repo} without a slot")
    status = {t.id: (t.key, t.status) for t in o.tasks}
    for e in o.effects:
        if e.kind == "merge" and e.state in UNRESOLVED:
            key, st = status[e.task_id]
            if st != TaskStatus.ACTIVE.value:
                raise Violation(
                    "I5", f"{key} is {st} and holds {e.repo}'s merge slot: {e.key} is {e.state}"
                )


# -- I6: after STOP the task is cancelled within a bound, and its agent is dead -----------------


def check_i6(o: Observed, *, settled: bool) -> None:
    """A STOPped task's agents are dead once it is cancelled; once the system has settled it
    is cancelled, or finished first (the STOP lost the race to done), or is parked because the
    STOP waits on an effect whose outcome is unknown (or on a clean-up that failed)."""
    for task in o.tasks:
        if not o.events_of(task.id, "stop"):
            continue
        if task.status == TaskStatus.CANCELLED.value:
            alive = [a.stage for a in o.agents if a.task_key == task.key and a.alive]
            if alive:
                raise Violation("I6", f"{task.key} is cancelled, and its {alive} agent lives")
        if not settled or task.status in TERMINAL:
            continue
        parked_on_purpose = task.status == TaskStatus.NEEDS_OPERATOR.value and any(
            why in task.status_reason for why in STOP_PARK_REASONS
        )
        if not parked_on_purpose:
            raise Violation(
                "I6",
                f"{task.key} was stopped and has settled at {task.stage}/{task.status} "
                f"({task.status_reason!r})",
            )


# -- I7: every idempotency key succeeds at most once --------------------------------------------


def check_i7(o: Observed) -> None:
    doubled = _twice(key for key, _text in o.sent)
    if doubled:
        raise Violation("I7", f"notified more than once under keys {doubled}")
    doubled = _twice(e.key for e in o.effects if e.state == EffectState.SUCCEEDED.value)
    if doubled:
        raise Violation("I7", f"effect keys {doubled} succeeded more than once")
    sent = Counter(key for key, _text in o.sent)
    merged = {(repo, head) for repo, head, _sha in o.merges}
    for e in o.effects:
        if e.state != EffectState.SUCCEEDED.value:
            continue
        if e.kind == "notify" and sent[e.key] != 1:
            raise Violation("I7", f"notification {e.key} succeeded, and was sent {sent[e.key]}x")
        if e.kind == "merge" and (e.repo, e.precondition) not in merged:
            raise Violation("I7", f"merge {e.key} succeeded, and the forge never merged it")
    doubled = _twice(o.deploys)
    if doubled:
        raise Violation("I7", f"deploys (target, release) {doubled} ran more than once")


# -- I8: after the last fault, every task converges to terminal or waiting ----------------------


def check_i8(o: Observed) -> None:
    """Settled: every task is done, cancelled, waiting for a person or parked for an operator,
    and no job is running or runnable now. A task that waits for a person waits for a decision
    nobody has given: a decision recorded for its wait (an event keyed to its version, as
    intake keys them) must have moved it on."""
    # what answers each kind of wait: an approval means nothing to a parked task, and is ignored
    answers = {
        TaskStatus.WAITING.value: ("approve", "reject"),
        TaskStatus.NEEDS_OPERATOR.value: ("retry",),
    }
    for task in o.tasks:
        if task.status in answers:
            given = [
                e
                for e in o.events_of(task.id)
                if e.kind in answers[task.status]
                and e.key.startswith(f"{task.id}:v{task.version}:")
            ]
            if given:
                ev = given[0]
                done = "read" if ev.processed_at is not None else "not read"
                raise Violation(
                    "I8",
                    f"{task.key} still {task.status} at {task.stage} v{task.version}, though "
                    f"{ev.actor}'s {ev.kind} for it was recorded ({done}): the decision is lost",
                )
        if task.status == TaskStatus.ACTIVE.value:
            jobs = [(j.version, j.state, j.run_after - o.now) for j in o.jobs_of(task.id)]
            raise Violation(
                "I8",
                f"{task.key} is still active at {task.stage} after the faults ended; its jobs "
                f"(version, state, due in s): {jobs}",
            )
    for job in o.jobs:
        if job.state == JobState.RUNNING.value or (
            job.state == JobState.QUEUED.value and job.run_after <= o.now
        ):
            raise Violation("I8", f"job {job.id} of task {job.task_id} is still {job.state}")


def check_all(o: Observed, *, swept_at: float | None, settled: bool = False) -> None:
    check_i1(o)
    check_i2(o)
    check_i3(o, swept_at=swept_at)
    check_i4(o)
    check_i5(o)
    check_i6(o, settled=settled)
    check_i7(o)
    if settled:
        check_i8(o)
