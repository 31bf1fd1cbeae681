"""The invariants of DESIGN.md §4 that the store's record alone can prove, implemented once.

`read(store)` observes what orch recorded, through the Store port, so any store (memory, SQLite,
PostgreSQL) can be checked the same way. The checks take that `Record` and return violations in
words a person can follow up. The model-based tests (tests/model) and `orch chaos`
(orch.chaos.checks) both use them; each adds the evidence only it has (a memory forge's merges,
a remote's history, the process table).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from orch.domain import pipeline as pl
from orch.domain.machine import TRANSITIONS, Happening
from orch.domain.model import Effect, Event, GateRecord, Job, Run, Task, Transition
from orch.domain.states import JobState, Stage, TaskStatus
from orch.ports import Store

TERMINAL = (TaskStatus.DONE, TaskStatus.CANCELLED)
# every status-to-status move some happening may make (filing aside)
MOVES = frozenset((f, t) for h, f, t in TRANSITIONS if h != Happening.FILED)
FIRST = frozenset(t for h, _, t in TRANSITIONS if h == Happening.FILED)


@dataclass(frozen=True)
class Record:
    """Everything the store recorded, read at one moment (`now`, in the store's clock)."""

    tasks: list[Task]
    transitions: dict[int, list[Transition]]
    jobs: list[Job]
    runs: list[Run]
    effects: list[Effect]
    events: list[Event]
    now: float
    gates: list[GateRecord] = field(default_factory=list)

    def jobs_of(self, task_id: int) -> list[Job]:
        return [j for j in self.jobs if j.task_id == task_id]


def read(store: Store) -> Record:
    """Read through the store's own port, so the checks see exactly what orch wrote."""
    tasks = sorted(store.list_tasks(limit=10_000_000), key=lambda t: t.id)
    record = Record(tasks, {}, [], [], [], [], store.now())
    for task in tasks:
        record.transitions[task.id] = store.transitions(task.id)
        record.jobs.extend(store.jobs(task.id))
        record.runs.extend(store.runs(task.id))
        record.effects.extend(store.effects(task.id))
        record.events.extend(store.events(task.id))
        record.gates.extend(store.gate_records(task.id))
    record.jobs.sort(key=lambda j: j.id)
    record.events.sort(key=lambda e: e.id)
    return record


# -- I2: no lost task ----------------------------------------------------------------------------


def stranded(record: Record) -> list[str]:
    """An active task has a job of its current version that is queued, or running under a
    lease (expired or not: the sweeper bounds that, see I3); a waiting task waits at a
    checkpoint."""
    out = []
    for task in record.tasks:
        if task.status == TaskStatus.WAITING and not task.waiting_for:
            out.append(f"{task.key} is waiting, but at no checkpoint")
        if task.status != TaskStatus.ACTIVE:
            continue
        current = [j for j in record.jobs_of(task.id) if j.version == task.version]
        runnable = [
            j
            for j in current
            if j.state == JobState.QUEUED
            or (j.state == JobState.RUNNING and j.owner is not None and j.expires_at is not None)
        ]
        if not runnable:
            states = ", ".join(f"v{j.version} {j.state}" for j in record.jobs_of(task.id))
            out.append(
                f"{task.key} is active at {task.stage} v{task.version} with no queued job and"
                f" no lease (its jobs: {states or 'none'})"
            )
    return out


# -- I3: no zombie job ---------------------------------------------------------------------------


def past_leases(record: Record, expired_before: float | None) -> list[str]:
    """No job still runs under a lease that expired before `expired_before` (the last sweep, or
    now less a sweep's grace; None: before no sweep yet), for the sweeper requeues or
    dead-letters every such job; and none runs without a lease."""
    out = []
    for job in record.jobs:
        if job.state != JobState.RUNNING:
            continue
        if job.expires_at is None or job.owner is None:
            out.append(f"job {job.id} (task {job.task_id}) is running without a lease")
        elif expired_before is not None and job.expires_at < expired_before:
            out.append(
                f"job {job.id} (task {job.task_id} v{job.version}) still runs under {job.owner},"
                f" whose lease expired {expired_before - job.expires_at:.1f}s before it should"
                " have been swept"
            )
    return out


# -- I4: history is gap-free and every transition is an edge of the pipeline ---------------------


def history(record: Record) -> list[str]:
    out: list[str] = []
    for task in record.tasks:
        out.extend(task_history(task, record.transitions.get(task.id, [])))
    return out


def task_history(task: Task, trs: Sequence[Transition]) -> list[str]:
    """What is wrong with one task's history: a gap, an end that is not where the task is, a
    step from somewhere it was not, a step after the end, a move the state machine does not
    make, a stage change that is no edge of its pipeline, a step back that is no rework,
    rejection or operator's retry."""
    name = task.key
    if not trs:
        return [f"{name}: has no history"]
    out: list[str] = []
    versions = [tr.version for tr in trs]
    if versions != list(range(1, len(trs) + 1)):
        out.append(f"{name}: versions {_compact(versions)} are not 1..{len(trs)}")
    last = trs[-1]
    if task.version != last.version:
        out.append(f"{name}: at version {task.version}, history ends at {last.version}")
    if (task.stage, task.status) != (last.to_stage, last.to_status):
        out.append(
            f"{name}: is {task.stage}/{task.status}, history ends at"
            f" {last.to_stage}/{last.to_status}"
        )
    try:
        pipeline = pl.from_dict(task.pipeline)
    except (KeyError, TypeError, ValueError) as exc:
        return [*out, f"{name}: its pipeline snapshot is unreadable: {exc!r}"]
    first, start = trs[0], pl.start(pipeline)
    if (first.from_stage, first.to_stage) != (start.stage, start.stage) or (
        first.to_status not in FIRST
    ):
        out.append(f"{name}: does not start at {start.stage}")
    for prev, tr in itertools.pairwise(trs):
        if prev.to_status in TERMINAL:
            out.append(f"{name} v{tr.version}: a transition after {prev.to_status}")
        elif (tr.from_stage, tr.from_status) != (prev.to_stage, prev.to_status):
            out.append(
                f"{name} v{tr.version}: starts at {tr.from_stage}/{tr.from_status}, but"
                f" v{prev.version} ended at {prev.to_stage}/{prev.to_status}"
            )
        elif (tr.from_status, tr.to_status) not in MOVES:
            out.append(
                f"{name} v{tr.version}: {tr.from_status} -> {tr.to_status} is no move of the"
                " state machine (docs/state-machine.md)"
            )
    edges = pipeline.edges()
    for tr in trs:
        out.extend(_step(name, pipeline, edges, tr))
    return out


def _step(
    name: str, pipeline: pl.Pipeline, edges: frozenset[tuple[Stage, Stage]], tr: Transition
) -> list[str]:
    src, dst = tr.from_stage, tr.to_stage
    where = f"{name} v{tr.version}: {src} -> {dst}"
    if (src, dst) not in edges:
        return [f"{where} is not an edge of its pipeline"]
    for stage, status in ((Stage.DONE, TaskStatus.DONE), (Stage.CANCELLED, TaskStatus.CANCELLED)):
        if (dst == stage) != (tr.to_status == status):
            return [f"{where} ({tr.to_status}): stage and status disagree"]
    names = pipeline.stage_names
    if src in names and dst in names and names.index(dst) < names.index(src):
        rework = pipeline.spec(src).rework_to == dst and tr.from_status == TaskStatus.ACTIVE
        rejected = tr.from_status == TaskStatus.WAITING and any(
            c.before == src and c.reject_to == dst for c in pipeline.checkpoints
        )
        retried = tr.from_status == TaskStatus.NEEDS_OPERATOR
        if not (rework or rejected or retried):
            return [f"{where} goes back, but is no rework, rejection or operator's retry"]
    return []


def _compact(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values[:12]) + (",…" if len(values) > 12 else "")
