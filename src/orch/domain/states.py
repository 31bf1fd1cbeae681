"""The one definition of stages, statuses and what counts as terminal.

Everything that needs the stage set imports it from here, and the store's CHECK constraints are
built from these enums, so a stage can never be spelt two ways.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    ANALYSIS = "analysis"
    ARCHITECTURE = "architecture"
    DEVELOPMENT = "development"
    REVIEW = "review"
    TESTING = "testing"
    DEPLOY_STAGING = "deploy-staging"
    DEPLOY = "deploy"
    DONE = "done"
    CANCELLED = "cancelled"


WORK_STAGES: tuple[Stage, ...] = (
    Stage.ANALYSIS,
    Stage.ARCHITECTURE,
    Stage.DEVELOPMENT,
    Stage.REVIEW,
    Stage.TESTING,
    Stage.DEPLOY_STAGING,
    Stage.DEPLOY,
)
TERMINAL_STAGES: frozenset[Stage] = frozenset({Stage.DONE, Stage.CANCELLED})


class TaskStatus(StrEnum):
    ACTIVE = "active"  # has a queued or running job
    WAITING = "waiting"  # waits for a person at a checkpoint; holds nothing
    NEEDS_OPERATOR = "needs_operator"  # parked: retries or rework rounds exhausted
    DONE = "done"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset({TaskStatus.DONE, TaskStatus.CANCELLED})


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SUPERSEDED = "superseded"  # the task moved on before this job ran
    DEAD = "dead"  # attempts exhausted
    CANCELLED = "cancelled"  # the task was stopped


class EffectState(StrEnum):
    INITIATED = "INITIATED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


UNRESOLVED_EFFECT_STATES: frozenset[EffectState] = frozenset(
    {EffectState.INITIATED, EffectState.UNKNOWN}
)


class EventKind(StrEnum):
    """What reaches a task's inbox."""

    APPROVE = "approve"  # a person answers a checkpoint: go on
    REJECT = "reject"  # ... or go back, with a comment
    STOP = "stop"  # cancel the task, at any stage
    RETRY = "retry"  # an operator runs a parked task again
    ALERT = "alert"  # the sweeper's note that a STOP waits too long
    # the forge: the repository's own CI failed on the pull request, or a reviewer asked for
    # changes; the task goes back to be reworked with it as feedback
    REWORK = "rework"
    # the forge: a person merged the task's pull request by hand; the task ends done there
    LANDED = "landed"


DECISIONS: frozenset[EventKind] = frozenset({EventKind.APPROVE, EventKind.REJECT})


class EffectKind(StrEnum):
    """What orch does outside its store. Deploys, rollbacks and skipped deploys are per target:
    their stored kind is `<kind>:<target>` (see `for_target`)."""

    MERGE = "merge"
    NOTIFY = "notify"
    DELETE_BRANCH = "delete-branch"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    SUPERSEDED = "superseded"

    def for_target(self, target: str) -> str:
        return f"{self.value}:{target}"

    def of(self, stored: str) -> bool:
        """Whether a stored kind is this one (for a target, or not)."""
        return stored == self.value or stored.startswith(f"{self.value}:")


def holds_a_slot(kind: str) -> bool:
    """Whether an effect of the stored `kind` holds a slot others wait for: a merge (one in
    flight per repository) or a deploy (one starting per target)."""
    return kind == EffectKind.MERGE or EffectKind.DEPLOY.of(kind)


class RunOutcome(StrEnum):
    """How a supervised child ended. Each clock that can end it records its own outcome."""

    EXITED = "exited"  # it ended by itself; its exit code says how
    TIMED_OUT = "timed_out"  # the attempt's wall-clock limit
    STALLED = "stalled"  # no output for the stage's stall timeout
    DEADLINE = "deadline"  # the task's deadline (working time, not human waits) ran out
    STOPPED = "stopped"  # a STOP
    LEASE_LOST = "lease_lost"  # this worker lost the job's lease
    SHUTDOWN = "shutdown"  # orch shut down
    BUDGET = "budget"  # it crossed its stage's or its task's budget
    ERROR = "error"  # the supervisor itself failed


def is_terminal(status: TaskStatus) -> bool:
    return status in TERMINAL_STATUSES
