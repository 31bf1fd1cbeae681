"""The task state machine: what each thing that happens to a task changes, as one TaskChange.

A job's worker, the sweeper and the inbox each turn what happened (a decision, a retry, nothing
to do, a timer, an expired lease, an event) into a `TaskChange` with these functions. The store
writes a change atomically, under the claim's fencing token and, when the change moves the task,
a compare-and-set on the task's stage and version. The store evaluates the one condition a
change may name (an event that reached the inbox while the job ran) but decides nothing itself:
every rule is here, so every store applies the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from orch.domain import pipeline as pl
from orch.domain.errors import OrchError
from orch.domain.ledger import Budget, Limits, raised
from orch.domain.model import Effect, Event, Task
from orch.domain.pipeline import Decision, Move, Pipeline
from orch.domain.states import (
    DECISIONS,
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    EventKind,
    JobState,
    Stage,
    TaskStatus,
    is_terminal,
)

# a waiting or parked task has no runnable job: an event for it needs one to be read
READ_BY_A_NEW_JOB: frozenset[TaskStatus] = frozenset(
    {TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR}
)
ANY_EVENT: frozenset[str] = frozenset(k.value for k in EventKind)


@dataclass(frozen=True)
class JobEnd:
    """How the claimed job ends."""

    state: JobState
    due_in_s: float = 0.0  # QUEUED: how long until it runs again
    counts: bool = True  # QUEUED: whether the attempt it used counts toward the limit
    reset_attempts: bool = False  # QUEUED: a timer's job starts its attempts afresh
    error: str | None = None  # QUEUED: why it runs again, for its next attempt to read


@dataclass(frozen=True)
class StageWrite:
    """The compare-and-set that moves a task to its next version, and its history row."""

    from_stage: Stage
    from_status: TaskStatus
    stage: Stage
    status: TaskStatus
    reason: str
    actor: str
    waiting_for: str | None = None
    feedback: str = ""
    rework_rounds: int = 0
    budgets: dict[str, Any] | None = None  # None: the task's overrides are kept
    clear_cancel: bool = False  # a STOP that lost the race to done is dropped
    # the move is made only if no STOP is asked for when it is written: one asked while the
    # job worked is applied instead, and the task never moves on after its STOP
    unless_stopped: bool = False


@dataclass(frozen=True)
class TaskChange:
    """Everything one happening changes, written in one transaction."""

    job: JobEnd | None  # None: no job is held (the sweeper, an operator's park)
    write: StageWrite | None = None  # None: the task stays at its version
    next_job_in_s: float | None = None  # the new version's job, due this long from now
    free_slot: bool = False  # the task gives its repository slot back
    read: tuple[int, ...] = ()  # the inbox events this change answers
    # an unread event of one of these kinds when the change is written (it arrived while the
    # job ran) means the task's job runs again at once, so the event is not left unread
    rerun_if_unread: frozenset[str] = frozenset()

    @property
    def releases_slot(self) -> bool:
        return self.free_slot or (self.write is not None and self.write.status != TaskStatus.ACTIVE)


def _job_state(status: TaskStatus) -> JobState:
    if status == TaskStatus.NEEDS_OPERATOR:
        return JobState.DEAD
    if status == TaskStatus.CANCELLED:
        return JobState.CANCELLED
    return JobState.SUCCEEDED


def create(first: Decision, actor: str) -> StageWrite:
    """A task's first version: its first stage, or the wait before it."""
    return StageWrite(
        first.stage,
        first.status,
        first.stage,
        first.status,
        first.reason,
        actor,
        waiting_for=first.waiting_for,
    )


def first_job_in_s(first: Decision) -> float | None:
    return 0.0 if first.status == TaskStatus.ACTIVE else None


def advance(
    task: Task,
    decision: Decision,
    actor: str,
    read: tuple[int, ...] = (),
    *,
    unless_stopped: bool = False,
) -> TaskChange:
    """A decision that moves the task (Move.ADVANCE or Move.PARK) ends its job and writes the
    next version. An active task's next job is due now; a waiting one's is its checkpoint's
    timer, if it has one; a STOP unread when this is written gets a job due now. With
    `unless_stopped`, a STOP asked for by then refuses the move (the job applies the STOP)."""
    if decision.move == Move.RETRY:
        raise ValueError("a retry does not move the task: use retry()")
    rounds = 0 if decision.reset_rounds else task.rework_rounds
    feedback = task.feedback
    if decision.rework:
        rounds = task.rework_rounds + 1
        feedback = decision.feedback
    elif decision.status != TaskStatus.NEEDS_OPERATOR:
        # feedback answers one round; it must not leak past a wait or into the next stage
        feedback = decision.feedback
    write = StageWrite(
        task.stage,
        task.status,
        decision.stage,
        decision.status,
        decision.reason,
        actor,
        waiting_for=decision.waiting_for,
        feedback=feedback,
        rework_rounds=rounds,
        budgets=decision.budgets,
        clear_cancel=decision.status == TaskStatus.DONE,
        unless_stopped=unless_stopped and decision.status != TaskStatus.CANCELLED,
    )
    due: float | None = None
    if decision.status == TaskStatus.ACTIVE:
        due = 0.0
    elif decision.timer_s:
        due = decision.timer_s
    terminal = is_terminal(decision.status)
    return TaskChange(
        JobEnd(_job_state(decision.status)),
        write,
        next_job_in_s=due,
        read=read,
        rerun_if_unread=frozenset() if terminal else frozenset({EventKind.STOP.value}),
    )


def park(task: Task, reason: str, actor: str, effects_open: bool) -> TaskChange:
    """Park a task nobody holds (its job's lease expired too often, or its STOP waited too
    long). One with a merge or a deploy in flight gets a job that settles it, so the
    repository's merge slot or the target's deploy slot is not held by a task nobody drives."""
    write = StageWrite(
        task.stage,
        task.status,
        task.stage,
        TaskStatus.NEEDS_OPERATOR,
        reason,
        actor,
        waiting_for=task.waiting_for,
        feedback=task.feedback,
        rework_rounds=task.rework_rounds,
    )
    return TaskChange(None, write, next_job_in_s=0.0 if effects_open else None)


def dead_lettered(task: Task, attempts: int, effects_open: bool) -> TaskChange:
    """The sweeper parks a task whose job's lease expired `attempts` times. A STOP the job was
    to apply is named: it waits for an operator now, as the task does."""
    why = f"lease expired {attempts} times"
    if task.cancel_requested_at is not None:
        why += "; its stop could not be applied: an operator must decide"
    return park(task, why, "sweeper", effects_open)


def retry(
    reason: str, backoff_s: float, *, counts: bool = True, read: tuple[int, ...] = ()
) -> TaskChange:
    """Run the same job again after `backoff_s`; an attempt that was not the task's failure
    (a shutdown, a busy merge slot, an open circuit) does not count."""
    return TaskChange(
        JobEnd(JobState.QUEUED, due_in_s=backoff_s, counts=counts, error=reason), read=read
    )


def budget_wait(reason: str, wait_s: float, *, counts: bool = False) -> TaskChange:
    """A budget over time is spent: the job runs again when its period ends, and meanwhile the
    task holds no repository slot (its working time stops, and another task may work); a STOP
    that arrived while the job ran is read at once. A run that the budget stopped `counts` as
    an attempt: a stage too big for its period ends parked, not waiting forever."""
    return TaskChange(
        JobEnd(JobState.QUEUED, due_in_s=wait_s, counts=counts, error=reason),
        free_slot=True,
        rerun_if_unread=frozenset({EventKind.STOP.value}),
    )


def nothing_to_do(task: Task) -> TaskChange:
    """The job found nothing to act on: it ends, a task that is not active gives its slot back,
    and an event that reached a waiting or parked task's inbox meanwhile is read by a job run
    again at once."""
    return TaskChange(
        JobEnd(JobState.SUPERSEDED),
        free_slot=task.status != TaskStatus.ACTIVE,
        rerun_if_unread=ANY_EVENT if task.status in READ_BY_A_NEW_JOB else frozenset(),
    )


def timer(task: Task, delay_s: float, read: tuple[int, ...] = ()) -> TaskChange:
    """End the job and run it again after `delay_s` (a checkpoint's timeout), holding no lease
    and no slot meanwhile; an event that arrived while it ran is read at once."""
    return TaskChange(
        JobEnd(JobState.QUEUED, due_in_s=delay_s, reset_attempts=True),
        free_slot=task.status != TaskStatus.ACTIVE,
        read=read,
        rerun_if_unread=ANY_EVENT,
    )


def lease_expired(attempt: int, max_attempts: int) -> JobEnd:
    """A job whose worker's lease expired runs again, or is dead-lettered when its attempts
    are used up (its task is then parked with `park`)."""
    if attempt >= max_attempts:
        return JobEnd(JobState.DEAD, error="lease expired")
    return JobEnd(JobState.QUEUED, error="lease expired")


def needs_slot(status: TaskStatus, cancel_requested: bool) -> bool:
    """Whether a claim of the task's job takes a repository slot: reading a waiting or parked
    task's inbox, or applying a STOP, is not work on the repository, so a full repository never
    delays it."""
    return status == TaskStatus.ACTIVE and not cancel_requested


@dataclass(frozen=True)
class EventEffect:
    """What an event appended to a task's inbox does beyond being stored."""

    raise_cancel: bool  # a STOP raises the cancel flag, seen by a running job's heartbeat
    wake: bool  # the task needs a job at its version to read it, due now
    # a STOP to an active task brings its job forward if it waits for later (a backoff, an open
    # circuit, a spent budget over time): the STOP is applied now, not when that ends
    hurry: bool = False


def on_event(status: TaskStatus, cancel: bool) -> EventEffect:
    raise_cancel = cancel and not is_terminal(status)
    return EventEffect(
        raise_cancel=raise_cancel,
        wake=status in READ_BY_A_NEW_JOB,
        hurry=raise_cancel and status == TaskStatus.ACTIVE,
    )


def holds_a_slot(effect: Effect) -> bool:
    """Whether an effect in flight holds a slot others wait for: the repository's one merge, or
    a target's one deploy. A parked task's job settles it (see `park`)."""
    if effect.state not in UNRESOLVED_EFFECT_STATES:
        return False
    if effect.kind == EffectKind.MERGE:
        return True
    return EffectKind.DEPLOY.of(effect.kind) and effect.state == EffectState.INITIATED


def answer(
    task: Task, pipeline: Pipeline, event: Event, limits: Callable[[], Limits]
) -> Decision | None:
    """What an event in the inbox of a waiting or parked task decides; None if it answers
    nothing the task waits for (it is then read and ignored). `limits` gives what the task may
    still spend, for an operator's retry that raises a budget."""
    if event.kind == EventKind.RETRY and task.status == TaskStatus.NEEDS_OPERATOR:
        try:
            stage = Stage(str(event.payload.get("stage") or task.stage))
            decision = pl.on_retry(pipeline, task.stage, stage, event.actor)
            budget = Budget.from_dict(event.payload.get("budget"))
        except (ValueError, TypeError, OrchError):
            return None
        if budget.unlimited:
            return decision
        # the operator raised the budget that stopped the task
        return replace(decision, budgets=raised(task.budgets, limits(), budget))
    if task.status != TaskStatus.WAITING or task.waiting_for is None:
        return None
    if event.kind not in DECISIONS or event.payload.get("checkpoint") not in (
        None,
        task.waiting_for,
    ):
        return None
    if event.kind == EventKind.APPROVE:
        return pl.on_approve(pipeline, task.stage, task.waiting_for, event.actor)
    comment = str(event.payload.get("comment", ""))
    return pl.on_reject(pipeline, task.waiting_for, event.actor, comment, task.rework_rounds)


# -- the transition table: what may move a task from which status to which --------------------


class Happening(StrEnum):
    """What can happen to a task, as docs/state-machine.md names it."""

    FILED = "filed"
    PASSED = "passed"  # the stage's agent, gates and actions all succeeded
    GATE_FAILED = "gate failed"
    RUN_FAILED = "run failed"  # the agent failed, timed out, stalled or could not start
    MERGE_FAILED = "merge failed"  # conflicts, a red candidate, conflict markers, a moved head
    HELD = "held"  # the change weakens the checks, under protect: strict
    PARKED = "parked"  # a budget, the deadline, a failed deploy check, a broken snapshot
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed out"  # a checkpoint's wait ran out
    REACTED = "reacted"  # the forge: the pull request's CI failed, or a reviewer asked for changes
    LANDED = "landed"  # the forge: a person merged the pull request by hand
    RETRIED = "retried"  # an operator's retry
    STOPPED = "stopped"
    LEASE_EXPIRED = "lease expired"
    STOP_OVERDUE = "stop overdue"  # a STOP nobody applied within its bound


_A, _W, _N = TaskStatus.ACTIVE, TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR
_LIVE = (_A, _W, _N)

# (happening, from, to): None is "no task yet". A move to the same status may keep the version
# (a retried attempt, a reminder, a requeued job) or write the next one (the next stage).
TRANSITIONS: frozenset[tuple[Happening, TaskStatus | None, TaskStatus]] = frozenset(
    {
        (Happening.FILED, None, _A),
        (Happening.FILED, None, _W),
        (Happening.PASSED, _A, _A),
        (Happening.PASSED, _A, _W),
        (Happening.PASSED, _A, TaskStatus.DONE),
        (Happening.GATE_FAILED, _A, _A),
        (Happening.GATE_FAILED, _A, _N),
        (Happening.RUN_FAILED, _A, _A),
        (Happening.RUN_FAILED, _A, _N),
        (Happening.MERGE_FAILED, _A, _A),
        (Happening.MERGE_FAILED, _A, _N),
        (Happening.HELD, _A, _W),
        (Happening.PARKED, _A, _N),
        (Happening.APPROVED, _W, _A),
        (Happening.REJECTED, _W, _A),
        (Happening.REJECTED, _W, _N),
        (Happening.REACTED, _A, _A),
        (Happening.REACTED, _A, _N),
        (Happening.REACTED, _W, _A),
        (Happening.REACTED, _W, _N),
        *((Happening.LANDED, s, TaskStatus.DONE) for s in _LIVE),
        (Happening.TIMED_OUT, _W, _W),
        (Happening.TIMED_OUT, _W, _N),
        (Happening.RETRIED, _N, _A),
        (Happening.RETRIED, _N, _W),
        *((Happening.STOPPED, s, TaskStatus.CANCELLED) for s in _LIVE),
        *((Happening.STOPPED, s, _N) for s in _LIVE),
        *((Happening.LEASE_EXPIRED, s, s) for s in _LIVE),
        *((Happening.LEASE_EXPIRED, s, _N) for s in _LIVE),
        (Happening.STOP_OVERDUE, _A, _N),
        (Happening.STOP_OVERDUE, _W, _N),
    }
)
