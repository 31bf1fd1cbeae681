"""I1-I8 (DESIGN.md §4) as checks over a rig: its store, `MemoryForge.merges`, the
`MemoryNotifier`, the pipeline, and what the harness saw beside them (deploys that ran, agent
processes, the time of the last sweep).

`observe()` reads every record through the store's port (the memory and the SQL stores alike);
each `check_iN` takes that snapshot and raises `Violation` (an AssertionError naming the
invariant and what broke it). Reading the store's records, not asking the engine, keeps the
checks independent of the code they check.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orch.domain import pipeline as pl
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectState,
    JobState,
    Stage,
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
    """One consistent read of everything the invariants talk about."""

    now: float
    tasks: list[Any]
    jobs: list[Any]
    transitions: dict[int, list[Any]]
    effects: list[Any]
    events: list[Any]
    merges: list[tuple[str, str, str]]
    sent: list[tuple[str, str]]
    limits: dict[str, int]
    deploys: list[tuple[str, str]] = field(default_factory=list)
    agents: list[StartedAgent] = field(default_factory=list)

    def jobs_of(self, task_id: int) -> list[Any]:
        return [j for j in self.jobs if j.task_id == task_id]

    def events_of(self, task_id: int, kind: str | None = None) -> list[Any]:
        return [e for e in self.events if e.task_id == task_id and kind in (None, e.kind)]

    def task_by_key(self, key: str) -> Any | None:
        found = [t for t in self.tasks if t.key == key]
        return max(found, key=lambda t: t.id) if found else None


def observe(
    rig: Rig, *, deploys: DeployLog | None = None, agents: Sequence[StartedAgent] = ()
) -> Observed:
    store = rig.store
    # the store's reads are its port: the same for every store, and no engine code
    tasks = sorted(store.list_tasks(limit=1_000_000), key=lambda t: t.id)
    return Observed(
        now=store.now(),
        tasks=tasks,
        jobs=sorted((j for t in tasks for j in store.jobs(t.id)), key=lambda j: j.id),
        transitions={t.id: store.transitions(t.id) for t in tasks},
        effects=[e for t in tasks for e in store.effects(t.id)],
        events=sorted((e for t in tasks for e in store.events(t.id)), key=lambda e: e.id),
        merges=list(rig.forge.merges),
        sent=list(rig.notifier.sent),
        limits={t.repo: rig.repos.limit(t.repo) for t in tasks},
        deploys=deploys.entries() if deploys is not None else [],
        agents=list(agents),
    )


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
    """An active task's current job (its version's) is queued, or running under a lease (live,
    or expired and so due to the sweeper, which requeues or parks it: I3 bounds that); a
    waiting task waits at a checkpoint; a parked one waits for an operator."""
    for task in o.tasks:
        if task.status == TaskStatus.WAITING.value and not task.waiting_for:
            raise Violation("I2", f"{task.key} is waiting, but at no checkpoint")
        if task.status != TaskStatus.ACTIVE.value:
            continue
        current = [j for j in o.jobs_of(task.id) if j.version == task.version]
        runnable = [
            j
            for j in current
            if j.state == JobState.QUEUED.value
            or (
                j.state == JobState.RUNNING.value
                and j.owner is not None
                and j.expires_at is not None
            )
        ]
        if not runnable:
            states = [(j.version, j.state) for j in o.jobs_of(task.id)]
            raise Violation(
                "I2",
                f"{task.key} is active at {task.stage} v{task.version} with no queued job and no "
                f"lease; its jobs (version, state): {states}",
            )


# -- I3: no zombie ------------------------------------------------------------------------------


def check_i3(o: Observed, *, swept_at: float | None) -> None:
    """No job is still running with a lease that had already expired when the sweeper last
    ran (`swept_at`, sim time; the sweep requeues or dead-letters every job whose lease
    expired before it, so a job outlives its lease by at most one sweep), and no agent process
    lives for a task that no job is running."""
    for job in o.jobs:
        if job.state != JobState.RUNNING.value:
            continue
        if job.expires_at is None or job.owner is None:
            raise Violation("I3", f"job {job.id} is running without a lease")
        if swept_at is not None and job.expires_at < swept_at:
            raise Violation(
                "I3",
                f"job {job.id} (task {job.task_id}) still runs under {job.owner}, whose "
                f"lease expired at {job.expires_at}, before the sweep at {swept_at}",
            )
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
    for task in o.tasks:
        history = o.transitions.get(task.id, [])
        name = f"{task.key} (task {task.id})"
        if not history:
            raise Violation("I4", f"{name}: has no history")
        if [t.version for t in history] != list(range(1, len(history) + 1)):
            versions = [t.version for t in history]
            raise Violation("I4", f"{name}: versions {versions} are not 1..n")
        if history[-1].version != task.version:
            raise Violation(
                "I4", f"{name}: at version {task.version}, last history v{history[-1].version}"
            )
        last = history[-1]
        if (last.to_stage, last.to_status) != (task.stage, task.status):
            raise Violation(
                "I4",
                f"{name}: is {task.stage}/{task.status}, history ends at "
                f"{last.to_stage}/{last.to_status}",
            )
        pipeline = pl.from_dict(task.pipeline)
        first, start = history[0], pl.start(pipeline)
        if (first.from_stage, first.to_stage, first.to_status) != (
            start.stage.value,
            start.stage.value,
            start.status.value,
        ):
            raise Violation("I4", f"{name}: does not start at {start.stage}/{start.status}")
        for prev, nxt in itertools.pairwise(history):
            if prev.to_status in TERMINAL:
                raise Violation("I4", f"{name}: v{nxt.version} follows terminal {prev.to_status}")
            if (nxt.from_stage, nxt.from_status) != (prev.to_stage, prev.to_status):
                raise Violation(
                    "I4",
                    f"{name}: v{nxt.version} leaves {nxt.from_stage}/{nxt.from_status}, but "
                    f"v{prev.version} entered {prev.to_stage}/{prev.to_status}",
                )
        edges = pipeline.edges()
        for t in history:
            _check_edge(name, pipeline, edges, t)


def _check_edge(
    name: str, pipeline: pl.Pipeline, edges: frozenset[tuple[Stage, Stage]], t: Any
) -> None:
    src, dst = Stage(t.from_stage), Stage(t.to_stage)
    where = f"{name}: v{t.version} {src}/{t.from_status} -> {dst}/{t.to_status} by {t.actor}"
    if (src, dst) not in edges:
        raise Violation("I4", f"{where} is not an edge of the pipeline")
    for stage, status in ((Stage.DONE, TaskStatus.DONE), (Stage.CANCELLED, TaskStatus.CANCELLED)):
        if (dst == stage) != (t.to_status == status.value):
            raise Violation("I4", f"{where}: stage and status disagree")
    names = pipeline.stage_names
    if src in names and dst in names and names.index(dst) < names.index(src):
        # a step back is a rework, a checkpoint's rejection, or an operator's retry
        rework = pipeline.spec(src).rework_to == dst and t.from_status == TaskStatus.ACTIVE.value
        rejected = t.from_status == TaskStatus.WAITING.value and any(
            c.before == src and c.reject_to == dst for c in pipeline.checkpoints
        )
        retried = t.from_status == TaskStatus.NEEDS_OPERATOR.value
        if not (rework or rejected or retried):
            raise Violation(
                "I4", f"{where} goes back, but is no rework, rejection or operator's retry"
            )


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
