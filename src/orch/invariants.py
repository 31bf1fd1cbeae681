"""The invariants of DESIGN.md §4, implemented once, over an observation.

An `Observation` is what an observer saw: the store's `Record`, read through the Store port so
any store (memory, SQLite, PostgreSQL) is checked the same way, and the `World` beside it, the
evidence a check trusts over the store's own word (the merges a forge made, the deploys that
ran, the notifications sent, the agents alive). The model-based tests (tests/model) observe a
rig, `orch chaos` (orch.chaos.checks) observes bare remotes, deploy logs, log lines and the
process table; both run these checks. Each returns its violations in words a person can follow
up.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from orch.domain import pipeline as pl
from orch.domain.machine import TRANSITIONS, Happening
from orch.domain.model import Effect, Event, GateRecord, Job, Run, Task, Transition
from orch.domain.states import (
    DECISIONS,
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    EventKind,
    JobState,
    Stage,
    TaskStatus,
)
from orch.ports import Store

TERMINAL = (TaskStatus.DONE, TaskStatus.CANCELLED)
# every status-to-status move some happening may make (filing aside)
MOVES = frozenset((f, t) for h, f, t in TRANSITIONS if h not in (Happening.FILED, Happening.LANDED))
# ... and those only a person's merge by hand makes, which the transition's reason says
LANDINGS = frozenset((f, t) for h, f, t in TRANSITIONS if h == Happening.LANDED)
FIRST = frozenset(t for h, _, t in TRANSITIONS if h == Happening.FILED)
# why a STOPped task may be parked instead of cancelled: the STOP waits behind an effect whose
# outcome nobody can tell, or its clean-up failed; an operator decides
STOP_PARK_REASONS = ("an operator must decide", "outlived its bound", "stop could not be applied")


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

    def events_of(self, task_id: int, kind: str | None = None) -> list[Event]:
        return [e for e in self.events if e.task_id == task_id and kind in (None, e.kind)]

    def by_key(self, key: str) -> Task | None:
        """The newest task of a ticket (a ticket started again after a STOP has several)."""
        found = [t for t in self.tasks if t.key == key]
        return max(found, key=lambda t: t.id) if found else None


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


@dataclass(frozen=True)
class Agent:
    """An agent process the observer saw alive."""

    task_key: str
    stage: str


@dataclass(frozen=True)
class World:
    """What happened outside the store, as the observer saw it."""

    limits: Mapping[str, int]  # repository -> max_active
    # (repository, head) -> how many times the head was merged into the default branch
    merged: Counter[tuple[str, str]] = field(default_factory=Counter)
    # repository -> the commits on its default branch (or at least the merges the forge made)
    landed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    rewritten: tuple[str, ...] = ()  # repositories whose default branch lost its first commit
    # (repository, target, release) -> how many times a deploy ran to its end; None: not watched
    deploys: Counter[tuple[str, str, str]] | None = None
    sent: Counter[str] = field(default_factory=Counter)  # notification key -> times sent
    # a notifier that cannot be asked whether it sent (a log) sends again when its sender died
    # between sending and recording: at-least-once, so a repeat is not a violation
    notifies_at_least_once: bool = False
    agents: tuple[Agent, ...] = ()  # agent processes alive now
    run_ends: Mapping[int, float] = field(default_factory=dict)  # ends of runs not closed


@dataclass(frozen=True)
class Observation:
    record: Record
    world: World


def _twice(items: Iterable[object]) -> list[object]:
    return [item for item, n in Counter(items).items() if n > 1]


# -- I1: at most one merge per head and one deploy per release, ever; and each as recorded ------


def irreversible(o: Observation) -> list[str]:
    """Counted in the world (the forge, the deploy log), then matched against the effects the
    store says SUCCEEDED: a recorded merge or deploy the world does not show is a lie."""
    record, world = o.record, o.world
    out = [
        f"{repo}: head {head[:12]} merged {n} times"
        for (repo, head), n in sorted(world.merged.items())
        if n > 1
    ]
    out += [f"{repo}: its default branch was rewritten" for repo in world.rewritten]
    # an effect written before effects named their repository acts on its task's
    repo_of = {t.id: t.repo for t in record.tasks}
    succeeded = [
        replace(e, repo=e.repo or repo_of.get(e.task_id, ""))
        for e in record.effects
        if e.state == EffectState.SUCCEEDED
    ]
    production = EffectKind.DEPLOY.for_target("production")
    doubled = _twice((e.repo, e.precondition) for e in succeeded if e.kind == production)
    if doubled:
        out.append(f"production deploy recorded twice (repo, release): {doubled}")
    for effect in succeeded:
        if effect.kind != EffectKind.MERGE:
            continue
        sha = str(effect.result.get("merge_sha", ""))
        if sha not in world.landed.get(effect.repo, frozenset()):
            out.append(f"{effect.key}: SUCCEEDED, but {sha[:12] or 'no commit'} is not merged")
        elif not world.merged[(effect.repo, effect.precondition)]:
            out.append(
                f"{effect.key}: SUCCEEDED, but the head it was for, {effect.precondition[:12]},"
                " was never merged"
            )
    if world.deploys is None:
        return out
    out += [
        f"{repo}: release {release[:12]} deployed to {target} {n} times"
        for (repo, target, release), n in sorted(world.deploys.items())
        if n > 1
    ]
    for effect in succeeded:
        if EffectKind.DEPLOY.of(effect.kind):
            target = effect.kind.split(":", 1)[1]
            if not world.deploys[(effect.repo, target, effect.precondition)]:
                out.append(f"{effect.key}: SUCCEEDED, but the deploy never ran")
    return out


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


def agents(o: Observation) -> list[str]:
    """No two agents live for one task, and no agent lives for a task no job is running."""
    out = []
    live = Counter(a.task_key for a in o.world.agents)
    out += [f"{n} agents alive at once for {key}" for key, n in live.items() if n > 1]
    for agent in o.world.agents:
        task = o.record.by_key(agent.task_key)
        running = task is not None and any(
            j.state == JobState.RUNNING for j in o.record.jobs_of(task.id)
        )
        if not running:
            out.append(f"the {agent.stage} agent of {agent.task_key} lives, and no job runs it")
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
        elif (tr.from_status, tr.to_status) not in MOVES and not _by_hand(tr):
            out.append(
                f"{name} v{tr.version}: {tr.from_status} -> {tr.to_status} is no move of the"
                " state machine (docs/state-machine.md)"
            )
    edges = pipeline.edges()
    for tr in trs:
        out.extend(_step(name, pipeline, edges, tr))
    return out


def _by_hand(tr: Transition) -> bool:
    return (tr.from_status, tr.to_status) in LANDINGS and tr.reason.startswith(pl.MERGED_BY_HAND)


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
    if dst == Stage.DONE and src != names[-1] and not _by_hand(tr):
        return [f"{where} ends the task before its last stage, and no person merged it by hand"]
    if src in names and dst in names and names.index(dst) < names.index(src):
        rework = pipeline.spec(src).rework_to == dst and tr.from_status == TaskStatus.ACTIVE
        rejected = tr.from_status == TaskStatus.WAITING and any(
            c.before == src and c.reject_to == dst for c in pipeline.checkpoints
        )
        retried = tr.from_status == TaskStatus.NEEDS_OPERATOR
        if not (rework or rejected or retried):
            return [f"{where} goes back, but is no rework, rejection or operator's retry"]
    return []


# -- I5: per-repository limits hold at every instant --------------------------------------------


def limits(o: Observation) -> list[str]:
    """At the moment observed: the tasks holding a repository slot never exceed its
    `max_active`, each holds a distinct slot below it, and only an active task holds one (a
    wait holds nothing); a running job of an active task works under its task's slot, unless it
    only applies a STOP (which needs none); the repository's one merge in flight (an unresolved
    merge effect) belongs to an active task (rule 11). Over the whole history: at no instant
    more agent runs in flight than `max_active`, and never two runs of one task at once."""
    record, out = o.record, []
    for repo, limit in sorted(o.world.limits.items()):
        holders = [t for t in record.tasks if t.repo == repo and t.slot is not None]
        if len(holders) > limit:
            keys = [t.key for t in holders]
            out.append(f"{len(holders)} tasks {keys} hold slots of {repo}, max {limit}")
        slots = [t.slot for t in holders]
        if _twice(slots) or any(s is None or not 0 <= s < limit for s in slots):
            out.append(f"slots {slots} of {repo} are not distinct slots below {limit}")
        out += [
            f"{t.key} is {t.status} and still holds slot {t.slot}"
            for t in holders
            if t.status != TaskStatus.ACTIVE
        ]
    working = {j.task_id for j in record.jobs if j.state == JobState.RUNNING}
    out += [
        f"{t.key} runs a job of {t.repo} without a slot"
        for t in record.tasks
        if t.id in working
        and t.status == TaskStatus.ACTIVE
        and t.cancel_requested_at is None
        and t.slot is None
    ]
    status = {t.id: (t.key, t.status) for t in record.tasks}
    for e in record.effects:
        if e.kind == EffectKind.MERGE and e.state in UNRESOLVED_EFFECT_STATES:
            key, st = status[e.task_id]
            if st != TaskStatus.ACTIVE:
                out.append(f"{key} is {st} and holds {e.repo}'s merge slot: {e.key} is {e.state}")
    peaks = run_peaks(record, o.world.run_ends)
    for repo, (peak, at) in sorted(peaks.in_flight.items()):
        if peak > o.world.limits.get(repo, 0):
            out.append(
                f"{repo}: {peak} runs in flight at {at:.3f}, limit {o.world.limits.get(repo, 0)}"
            )
    out += [f"{key}: two runs at once at {at:.3f}" for key, at in peaks.overlaps]
    return out


@dataclass(frozen=True)
class Peaks:
    in_flight: dict[str, tuple[int, float]]  # repository -> (most runs at once, when)
    overlaps: list[tuple[str, float]]  # (task key, when) two runs of one task overlapped
    skipped: int  # runs with no end, recorded or observed


def run_peaks(record: Record, run_ends: Mapping[int, float]) -> Peaks:
    """The runs' intervals. A run whose supervisor was killed has no `ended_at`; `run_ends`
    gives the end the observer saw for some of them (the last moment its agent was seen
    alive); the others are skipped, and counted."""
    repo_of = {t.id: t.repo for t in record.tasks}
    key_of = {t.id: t.key for t in record.tasks}
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    skipped = 0
    for run in record.runs:
        end = run.ended_at if run.ended_at is not None else run_ends.get(run.id)
        if end is None:
            skipped += 1
            continue
        spans[repo_of.get(run.task_id, "?")].append((run.started_at, end, run.task_id))
    in_flight, overlaps = {}, []
    for repo, own in sorted(spans.items()):
        in_flight[repo] = _peak(own)
        overlaps += [(key_of.get(tid, str(tid)), at) for tid, at in _same_task_overlaps(own)]
    return Peaks(in_flight, overlaps, skipped)


def _peak(spans: Sequence[tuple[float, float, int]]) -> tuple[int, float]:
    # ends sort before starts at the same instant: a run that ends as another starts is not
    # concurrent with it
    points = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    current = best = 0
    best_at = 0.0
    for at, delta in points:
        current += delta
        if current > best:
            best, best_at = current, at
    return best, best_at


def _same_task_overlaps(spans: Sequence[tuple[float, float, int]]) -> list[tuple[int, float]]:
    by_task: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s, e, task_id in spans:
        by_task[task_id].append((s, e))
    out = []
    for task_id, own in by_task.items():
        own.sort()
        out += [(task_id, s2) for (_, e1), (s2, _) in itertools.pairwise(own) if s2 < e1]
    return out


# -- I6: after STOP the task is cancelled within a bound, and nothing of it runs ----------------


def stops(o: Observation, *, settled: bool, bound_s: float | None = None) -> list[str]:
    """No run starts after its task was cancelled, and a cancelled task's agent is dead. Once
    the system has `settled`, a STOPped task is cancelled (within `bound_s` of its STOP, if one
    is given), or finished first (the STOP lost the race to done), or is parked because the
    STOP waits on an effect whose outcome is unknown (or on a clean-up that failed)."""
    record, out = o.record, []
    for task in record.tasks:
        cancelled_at = cancelled(record.transitions.get(task.id, []))
        if cancelled_at is not None:
            out += [
                f"{task.key}: a {run.stage} run started after it was cancelled"
                for run in record.runs
                if run.task_id == task.id and run.started_at > cancelled_at
            ]
            alive = [a.stage for a in o.world.agents if a.task_key == task.key]
            if alive:
                out.append(f"{task.key} is cancelled, and its {alive} agent lives")
        asked = record.events_of(task.id, EventKind.STOP)
        if not asked:
            continue
        if cancelled_at is not None and bound_s is not None:
            took = cancelled_at - asked[0].created_at
            if took > bound_s:
                out.append(f"{task.key}: cancelled {took:.1f}s after its STOP")
        if not settled or task.status in TERMINAL:
            continue
        parked_on_purpose = task.status == TaskStatus.NEEDS_OPERATOR and any(
            why in task.status_reason for why in STOP_PARK_REASONS
        )
        if not parked_on_purpose:
            out.append(
                f"{task.key} was stopped and has settled at {task.stage}/{task.status}"
                f" ({task.status_reason!r})"
            )
    return out


def cancelled(trs: Sequence[Transition]) -> float | None:
    """When a task's history cancelled it, if it did."""
    for tr in trs:
        if tr.to_status == TaskStatus.CANCELLED or tr.to_stage == Stage.CANCELLED:
            return tr.at
    return None


# -- I7: every idempotency key succeeds at most once --------------------------------------------


def keys(o: Observation) -> list[str]:
    """The store holds each effect key once; each notification was sent once under its key (a
    notifier that sends at least once may repeat one), and a notification recorded SUCCEEDED
    was sent."""
    record, world = o.record, o.world
    out = [
        f"effect key {key} recorded {n} times" for key, n in _counts(e.key for e in record.effects)
    ]
    if not world.notifies_at_least_once:
        out += [f"notified {n} times under key {key}" for key, n in _counts(world.sent.elements())]
    out += [
        f"notification {e.key} SUCCEEDED, and was never sent"
        for e in record.effects
        if e.kind == EffectKind.NOTIFY
        and e.state == EffectState.SUCCEEDED
        and not world.sent[e.key]
    ]
    return out


def _counts(items: Iterable[str]) -> list[tuple[str, int]]:
    return sorted((k, n) for k, n in Counter(items).items() if n > 1)


# -- I8: after the last fault, every task converges ---------------------------------------------


def converged(o: Observation, *, every_wait_answered: bool, idle: bool) -> list[str]:
    """Every task is done, cancelled, parked for an operator, or waits for a person's decision
    nobody has given: a decision recorded for its wait (an event keyed to its version, as
    intake keys them) must have moved it on; with `every_wait_answered` (the people of a chaos
    run answer every wait) it must not wait at all. `idle`: no job is running or due either."""
    record, out = o.record, []
    # what answers each kind of wait: an approval means nothing to a parked task, and is ignored
    answers = {
        TaskStatus.WAITING: DECISIONS,
        TaskStatus.NEEDS_OPERATOR: frozenset({EventKind.RETRY}),
    }
    for task in record.tasks:
        where = f"{task.key} is {task.status} at {task.stage} v{task.version}"
        if task.status in answers:
            given = [
                e
                for e in record.events_of(task.id)
                if e.kind in answers[task.status]
                and e.key.startswith(f"{task.id}:v{task.version}:")
            ]
            if given:
                ev = given[0]
                done = "read" if ev.processed_at is not None else "not read"
                out.append(
                    f"{where}, though {ev.actor}'s {ev.kind} for it was recorded ({done}):"
                    " the decision is lost"
                )
                continue
        if task.status == TaskStatus.WAITING and every_wait_answered:
            out.append(f"{where}, waiting for {task.waiting_for} though every wait is answered")
        if task.status == TaskStatus.ACTIVE:
            jobs = [
                (j.version, j.state.value, round(j.run_after - record.now, 1))
                for j in record.jobs_of(task.id)
            ]
            out.append(
                f"{task.key} is still active at {task.stage} v{task.version} after the faults"
                f" ended; its jobs (version, state, due in s): {jobs}"
            )
    if idle:
        out += [
            f"job {job.id} of task {job.task_id} is still {job.state}"
            for job in record.jobs
            if job.state == JobState.RUNNING
            or (job.state == JobState.QUEUED and job.run_after <= record.now)
        ]
    return out


def _compact(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values[:12]) + (",…" if len(values) > 12 else "")
