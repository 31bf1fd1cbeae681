"""Records the core passes around. Times are epoch seconds read from the database clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orch.domain.ledger import Usage, UsageFrom
from orch.domain.states import EffectState, JobState, Stage, TaskStatus


@dataclass(frozen=True)
class Ticket:
    key: str
    repo: str
    title: str
    body: str = ""
    url: str = ""


@dataclass(frozen=True)
class Task:
    id: int
    key: str
    repo: str
    title: str
    body: str
    stage: Stage
    status: TaskStatus
    version: int
    branch: str
    pipeline: dict[str, Any]
    waiting_for: str | None = None
    feedback: str = ""
    rework_rounds: int = 0
    cancel_requested_at: float | None = None
    status_reason: str = ""
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0
    cache_write: int = 0
    budgets: dict[str, Any] = field(default_factory=dict)  # an operator's budget overrides
    created_at: float = 0.0
    updated_at: float = 0.0
    slot: int | None = None  # the repository slot it holds while active
    slot_since: float | None = None  # when it took that slot
    worked_s: float = 0.0  # time it held a repository slot before that

    def worked(self, now: float) -> float:
        """Working time: how long it has held a repository slot, now included. Time waiting
        for people, parked, or queued behind other tasks for a slot is not work."""
        held = now - self.slot_since if self.slot_since is not None else 0.0
        return self.worked_s + max(0.0, held)

    @property
    def spent(self) -> Usage:
        return Usage(
            self.tokens_in, self.tokens_out, self.cache_read, self.cache_write, self.cost_usd
        )


@dataclass(frozen=True)
class Claim:
    """A job held under a lease. Every write made under it is checked against `token`."""

    job_id: int
    task_id: int
    version: int
    stage: Stage
    attempt: int
    token: int
    owner: str
    last_error: str = ""  # why the previous attempt of this job failed, if it did
    # read in the claim's own transaction, so the job starts without reading again: the task,
    # its unread events and its latest agent run (None when a claim is made by hand)
    task: Task | None = None
    events: tuple[Event, ...] = ()
    last_run: Run | None = None


@dataclass(frozen=True)
class Job:
    id: int
    task_id: int
    repo: str
    version: int
    stage: Stage
    state: JobState
    attempt: int
    token: int
    owner: str | None
    expires_at: float | None
    run_after: float
    last_error: str = ""


@dataclass(frozen=True)
class Transition:
    task_id: int
    version: int
    from_stage: Stage
    to_stage: Stage
    from_status: TaskStatus
    to_status: TaskStatus
    actor: str
    reason: str
    at: float = 0.0


@dataclass(frozen=True)
class Effect:
    key: str
    task_id: int
    kind: str
    state: EffectState
    precondition: str
    result: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    repo: str = ""  # the repository it acts on: its merge and deploy slots are per repository


@dataclass(frozen=True)
class Event:
    id: int
    task_id: int
    key: str
    kind: str
    actor: str
    payload: dict[str, Any]
    created_at: float = 0.0
    processed_at: float | None = None


@dataclass(frozen=True)
class GateRecord:
    task_id: int
    version: int
    gate: str
    head_sha: str
    stage: Stage
    passed: bool
    reason: str
    at: float = 0.0


@dataclass(frozen=True)
class Run:
    id: int
    task_id: int
    job_id: int
    stage: Stage
    attempt: int
    agent: str
    pid: int | None
    exit_code: int | None
    log_path: str
    started_at: float
    ended_at: float | None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    outcome: str | None = None  # a RunOutcome; None while it runs, or if its worker died
    cache_read: int = 0
    cache_write: int = 0
    session: str | None = None  # the agent's conversation id, for resuming it
    detail: str = ""  # the agent's own account of how the run ended
    tools: list[str] = field(default_factory=list)  # the tool calls it made, in order
    reported: Usage | None = None  # the agent's own totals (a resumed session's since it began)
    owner: str | None = None  # the incarnation that supervised it
    accounted_at: float | None = None  # when its usage entered the ledger
    usage_from: UsageFrom | None = None  # where its figures came from; None: not counted yet
    retrying: str = ""  # in flight: what its supervisor last noted it retrying, if anything

    @property
    def usage(self) -> Usage:
        return Usage(
            self.tokens_in, self.tokens_out, self.cache_read, self.cache_write, self.cost_usd
        )


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery as it was stored, before anything was done with it."""

    id: int
    source: str  # plane, gitea, telegram
    delivery: str  # the provider's id for it
    body: str  # the raw body, as received and verified
    received_at: float
    done_at: float | None = None
    outcome: str = ""


@dataclass(frozen=True)
class ItemLink:
    """A ticket that is an item in a hosted tracker."""

    key: str
    tracker: str
    project: str
    ref: str
    # the item's stamp (its last change) when orch last acted on its state: the same state seen
    # again at the same stamp is not a new request (a start, an approval)
    acted_on: str = ""
    seen_state: str = ""  # the state orch last saw it in: a start is a move into the start state


@dataclass(frozen=True)
class BoardItem:
    """Where a ticket stands on the built-in board, once someone has moved it."""

    key: str  # the ticket's
    state: str
    version: int  # 1 after its first move, one more after each
    actor: str  # who made its last move
    updated_at: float


@dataclass(frozen=True)
class BoardComment:
    """A comment on a ticket on the built-in board."""

    id: int
    key: str  # the ticket's
    comment_key: str  # orch's key for it, unique per ticket; "" for a person's
    html: str
    actor: str
    own: bool  # orch wrote it
    created_at: float
