"""The interfaces the core needs. Adapters implement them; services depend only on these."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from orch.changes import Changes, Hearing
from orch.domain.access import ApiToken, Role
from orch.domain.failures import Trouble
from orch.domain.integrity import DEFAULT_PROTECTED
from orch.domain.ledger import NO_BUDGET, Budget, Metered, Usage, UsageFrom
from orch.domain.machine import TaskChange
from orch.domain.metrics import MetricsSnapshot
from orch.domain.model import (
    BoardComment,
    BoardItem,
    Claim,
    Delivery,
    Effect,
    Event,
    GateRecord,
    ItemLink,
    Job,
    Run,
    Task,
    Ticket,
    Transition,
)
from orch.domain.news import News
from orch.domain.periods import Period
from orch.domain.pipeline import Decision
from orch.domain.states import EffectState, RunOutcome, Stage, TaskStatus


@dataclass(frozen=True)
class SweepResult:
    requeued: int = 0
    dead: int = 0


@dataclass(frozen=True)
class OverdueCancel:
    """A task whose STOP has waited longer than its bound."""

    task_id: int
    key: str
    version: int
    parked: bool  # it is in needs_operator already
    held: bool  # a live lease holds it, or a queued job will run it
    in_flight: bool  # an effect of it is still unresolved


@dataclass(frozen=True)
class RunUsage:
    """What one agent run spent, for the ledger."""

    task_id: int
    run_id: int
    usage: Usage
    usage_from: UsageFrom | None = None  # where its figures came from


@dataclass(frozen=True)
class StateSummary:
    by_stage: dict[str, int]
    by_status: dict[str, int]
    running: list[dict[str, Any]]
    recent: list[dict[str, Any]]
    spent: Usage = field(default_factory=Usage)
    spent_by_repo: dict[str, Usage] = field(default_factory=dict)


class Store(Protocol):
    """Durable state. Every write under a lease checks the claim's fencing token."""

    url: str  # where it keeps its records, as a SQLAlchemy URL, or memory://

    @property
    def display_url(self) -> str:
        """Its URL without a password, to show people."""
        ...

    def now(self) -> float: ...
    def migrate(self) -> None: ...
    def close(self) -> None: ...
    def add_listener(self, listener: Callable[[], None]) -> None: ...
    @property
    def changes(self) -> Changes:
        """Moves on after each write this store commits that changes what a person is shown (not
        a lease renewed, nor a claim or sweep that found nothing), and, where the database can
        say so, after another process's writes."""
        ...

    @property
    def hearing(self) -> Hearing:
        """The one thread of this process that runs `watch_changes` while someone needs it."""
        ...

    def watch_changes(self, stop: threading.Event) -> None:
        """Until `stop` is set, move `changes` for the changes other processes commit that a
        person would see. Blocks: a thread of its own runs it."""
        ...

    # tickets on the built-in board
    def file_ticket(self, repo: str, prefix: str, title: str, body: str) -> Ticket: ...
    def get_ticket(self, key: str) -> Ticket | None: ...
    def file_and_create(
        self,
        repo: str,
        prefix: str,
        title: str,
        body: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task: ...

    # where the built-in board's tickets stand, and what is said on them
    def board_tickets(self, repo: str) -> list[tuple[Ticket, BoardItem | None]]:
        """The repository's tickets by key, each with where it stands (None: never moved)."""
        ...

    def board_item(self, key: str) -> BoardItem | None:
        """Where the ticket stands; None if it was never moved."""
        ...

    def move_board_item(
        self, key: str, state: str, actor: str, expect_version: int
    ) -> BoardItem | None:
        """Put the ticket in `state` if its board item is still at `expect_version` (0: it was
        never moved), one version on; None if it is not (it moved since). NotFound if there
        is no such ticket."""
        ...

    def add_board_comment(
        self, key: str, comment_key: str, html: str, actor: str, own: bool
    ) -> bool:
        """Comment on the ticket; False if a comment with that `comment_key` is there already
        ("" is a person's, never one already). NotFound if there is no such ticket."""
        ...

    def board_comments(self, key: str) -> list[BoardComment]:
        """The ticket's comments, oldest first."""
        ...

    # webhook deliveries: stored once by the provider's id before they are answered
    def record_delivery(self, source: str, delivery: str, body: str) -> bool:
        """Store a delivery unless one with its id is stored already (False)."""
        ...

    def pending_deliveries(self, source: str, limit: int = 100) -> list[Delivery]:
        """Deliveries not yet worked, oldest first."""
        ...

    def deliveries(self, source: str, limit: int = 100) -> list[Delivery]:
        """The latest deliveries, worked or not, oldest first."""
        ...

    def finish_delivery(self, delivery_id: int, outcome: str) -> None: ...

    # tickets that are items in a hosted tracker
    def item_link(self, tracker: str, ref: str) -> ItemLink | None: ...
    def link_of(self, key: str) -> ItemLink | None: ...
    def mark_seen(self, tracker: str, ref: str, state: str) -> None:
        """Remember the state orch last saw the item in."""
        ...

    def mark_acted(self, tracker: str, ref: str, stamp: str) -> None:
        """Remember the item's stamp at which orch acted on its state."""
        ...

    def start_item(
        self,
        link: ItemLink,
        ticket: Ticket,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task:
        """File (or update) the tracker item's ticket, remember the link with its stamp, and
        start a task for it, in one transaction; Conflict if the ticket has a live task, or its
        key is another ticket's."""
        ...

    # tasks
    def create_task(
        self, ticket: Ticket, branch: str, pipeline: dict[str, Any], first: Decision, actor: str
    ) -> Task: ...
    def get_task(self, task_id: int) -> Task: ...
    def find_task(self, key: str) -> Task | None: ...
    def list_tasks(self, limit: int = 100, status: TaskStatus | None = None) -> list[Task]: ...
    def transitions(self, task_id: int) -> list[Transition]: ...
    def gate_records(self, task_id: int) -> list[GateRecord]: ...
    def effects(self, task_id: int) -> list[Effect]: ...
    def runs(self, task_id: int) -> list[Run]: ...
    def jobs(self, task_id: int) -> list[Job]: ...
    def slot_holders(self) -> dict[str, list[str]]:
        """Per repository, the keys of the tasks holding its slots, oldest holder first."""
        ...

    def events(self, task_id: int) -> list[Event]: ...
    def summary(self, recent: int = 20) -> StateSummary: ...
    def metrics(self) -> MetricsSnapshot:
        """What `GET /metrics` reports, as aggregates over every record, read at once."""
        ...

    def spend_over_time(self, since: float, bucket_s: float) -> dict[float, Usage]:
        """What agent runs started since `since` spent, per interval of `bucket_s` seconds from
        the epoch, keyed by the interval's start."""
        ...

    # api tokens (orch.domain.access): only their digests are kept
    def add_token(self, name: str, role: Role, token_hash: str) -> ApiToken:
        """Conflict if a token of that name exists, revoked or not."""
        ...

    def tokens(self) -> list[ApiToken]: ...
    def revoke_token(self, name: str) -> bool:
        """Whether this call revoked it (False: it was already); NotFound if there is none."""
        ...

    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        """The live token with that digest."""
        ...

    def has_tokens(self) -> bool:
        """Whether a token was ever made (revoked or not): until then the API is open to whoever
        reaches it; from then on it needs a live one, even once every token is revoked."""
        ...

    # leases
    def claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None: ...
    def renew(self, claim: Claim, ttl_s: float) -> bool:
        """Extend the claim's lease; whether a STOP is asked for its task."""
        ...

    def sweep(self, max_attempts: int) -> SweepResult: ...
    def lease_owners(self) -> list[str]: ...
    def live_jobs(self) -> list[Job]:
        """Every job queued or running, by id: what an observer follows while orch runs."""
        ...

    def unaccounted_runs(self) -> list[Run]: ...
    def void_leases(self, owner: str) -> int: ...
    def next_run_after(self) -> float | None: ...
    def overdue_cancels(self, bound_s: float) -> list[OverdueCancel]: ...
    def park(self, task_id: int, version: int, reason: str, actor: str) -> bool: ...

    # writes under a lease
    def apply(self, claim: Claim, change: TaskChange) -> None:
        """Write what the domain decided (see orch.domain.machine), atomically."""
        ...

    def record_gate(self, claim: Claim, record: GateRecord) -> GateRecord: ...
    def find_gate(
        self, task_id: int, version: int, gate: str, head_sha: str
    ) -> GateRecord | None: ...
    def begin_effect(
        self, claim: Claim, key: str, kind: str, repo: str, precondition: str
    ) -> Effect: ...
    def finish_effect(
        self, claim: Claim, key: str, state: EffectState, result: Mapping[str, Any]
    ) -> Effect: ...
    def get_effect(self, key: str) -> Effect | None: ...
    def unsettled_merges(self) -> list[Effect]:
        """Merges whose outcome is unknown (INITIATED, UNKNOWN) of tasks no job runs: each
        holds its repository's merge slot until someone asks the forge."""
        ...

    def settle_effect(self, key: str, state: EffectState, result: Mapping[str, Any]) -> bool:
        """Record what the forge says of an unresolved effect, unless it was resolved
        meanwhile or a job of its task runs now (its worker settles it): whether this did."""
        ...

    def failed_effects(self, kind: str) -> list[Effect]:
        """The effects of `kind` that FAILED, of every task, oldest first."""
        ...

    def mark_redone(self, key: str, result: Mapping[str, Any]) -> bool:
        """Record that an effect that FAILED was done since, by a try outside any job: it
        SUCCEEDED with `result`, unless it is no longer FAILED (re-armed by its job, or done
        already): whether this did."""
        ...

    def latest_effect(
        self, repo: str, kinds: Sequence[str], state: EffectState = EffectState.SUCCEEDED
    ) -> Effect | None:
        """The repository's effect of one of `kinds` in `state` that changed last."""
        ...

    def start_run(self, claim: Claim, agent: str, pid: int | None, log_path: str) -> int: ...
    def finish_run(
        self,
        claim: Claim,
        run_id: int,
        exit_code: int | None,
        usage: Usage,
        outcome: RunOutcome = RunOutcome.EXITED,
        *,
        session: str | None = None,
        detail: str = "",
        tools: Sequence[str] = (),
        reported: Usage | None = None,
        usage_from: UsageFrom | None = None,
    ) -> None: ...
    def record_usage(
        self, task_id: int, run_id: int, usage: Usage, usage_from: UsageFrom | None = None
    ) -> None:
        """The usage of a run whose lease was lost: the ledger is not fenced."""
        ...

    def record_usages(self, spent: Sequence[RunUsage]) -> None:
        """The usage of many runs (of dead workers, say) in one transaction, each counted once
        as `record_usage` counts it."""
        ...

    def note_spending(self, run_id: int, usage: Usage, retrying: str = "") -> None:
        """What a run in flight has spent so far, for the budgets over time that every process
        reads: kept on the run until its usage is counted (which replaces it), and in no task's
        totals; and what it is retrying now ("" for nothing), for any process to show. Not
        fenced: the money is spent whoever holds the task."""
        ...

    def retrying_runs(self) -> dict[int, str]:
        """What the runs in flight are retrying, by task id, as their supervisors last noted:
        only those retrying something."""
        ...

    def open_circuit(self, name: str, until: float, cooldown_s: float, reason: str) -> None:
        """A circuit breaker opened for `cooldown_s`, until `until` (the store's clock), for
        every process to honour; a later `until` already noted stands."""
        ...

    def close_circuit(self, name: str) -> None:
        """A probe got through: the circuit is closed for every process."""
        ...

    def circuits(self) -> dict[str, tuple[float, float, str]]:
        """The circuits opened and not closed since (their cooldown may be over): until when,
        for how long, and why."""
        ...

    def spending(self, task_id: int) -> dict[Stage, Usage]: ...
    def spent_since(self, since: float, repo: str | None = None) -> Usage:
        """What the agent runs started since `since` spent: all of them, or one repository's."""
        ...

    # the inbox
    def append_event(
        self,
        task_id: int,
        key: str,
        kind: str,
        actor: str,
        payload: Mapping[str, Any],
        *,
        cancel: bool = False,
    ) -> bool: ...
    def cancel_requested(self, task_id: int) -> bool: ...
    def cancels_asked(self, task_ids: Sequence[int]) -> list[int]:
        """Those of `task_ids` with a STOP asked for, in one read."""
        ...

    def pending_events(self, task_id: int) -> list[Event]: ...
    def mark_events(self, claim: Claim, event_ids: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class Candidate:
    """A merge commit built for a task's head, to be tested before it lands."""

    sha: str
    base: str  # the default branch's head it was built on
    head: str  # the task branch's head it merges
    landed: bool = False  # the head is on the default branch already; `sha` brought it there
    # files that do not merge cleanly: `sha` holds them with git's conflict markers, and is
    # never landed
    conflicts: tuple[str, ...] = ()


class Forge(Protocol):
    """Where code lives: worktrees, task branches, the default branch and merges into it."""

    # how long after a request whose answer was lost (a timeout, a dropped connection, a dead
    # worker) the forge may still carry it out: until then "not merged" is no answer yet
    settle_after_s: float

    def prepare_worktree(self, repo: str, branch: str, fresh: bool = False) -> Path:
        """The branch's worktree, as the remote has the branch. `fresh`: the task's first
        attempt, nothing of which was pushed: a worktree made ahead may be used as it is."""
        ...

    def keep_spares(self, count: int, stop: threading.Event, interval_s: float) -> None:
        """Until `stop`, keep worktrees made ahead for new tasks, so that a task's first
        attempt starts without git. Blocks: a thread of its own runs it."""
        ...

    def commit_and_push(self, repo: str, worktree: Path, branch: str, message: str) -> str: ...
    def branch_head(self, repo: str, branch: str) -> str | None: ...
    def merge_candidate(
        self, repo: str, branch: str, expected_head: str, message: str
    ) -> Candidate:
        """The merge of exactly `expected_head` onto the default branch's current head, built
        but not pushed; one that has landed already says so, and one that does not merge
        cleanly names its conflicts. Raises HeadMoved if the branch is not at `expected_head`."""
        ...

    def adopt(self, repo: str, branch: str, candidate: Candidate) -> None:
        """Move the task branch from the candidate's head to the candidate (a fast-forward):
        the default branch's changes join the task's, for its next round to work on."""
        ...

    def land(self, repo: str, candidate: Candidate) -> str:
        """Push the candidate to the default branch if, and only if, the default branch is
        still the candidate's base; DefaultMoved otherwise."""
        ...

    def find_merge(self, repo: str, head_sha: str) -> str | None: ...
    def read_default_file(self, repo: str, path: str) -> str | None: ...
    def read_file(self, repo: str, sha: str, path: str) -> str | None: ...
    def diff(self, repo: str, head: str) -> str:
        """`git diff` of `head` against where it left the default branch (their merge base)."""
        ...

    def is_ancestor(self, repo: str, ancestor: str, descendant: str) -> bool:
        """True if `ancestor` is `descendant` or in its history."""
        ...

    def round_base(self, repo: str, head: str, marker: str) -> str:
        """The commit a round began from: the nearest first-parent ancestor of `head` that is
        not one of orch's commits whose message ends with the round's `marker`."""
        ...

    def checkout(self, repo: str, worktree: Path, sha: str) -> None:
        """Make the worktree exactly `sha`'s tree, untracked and ignored files removed."""
        ...

    def remove_worktree(self, repo: str, branch: str) -> None: ...
    def delete_branch(self, repo: str, branch: str) -> None:
        """Delete a task branch on the remote; refuses the default branch."""
        ...


DEFAULT_OUTPUT_CAP = 64 * 1024 * 1024  # bytes of a run's output its log keeps


@dataclass(frozen=True)
class Confinement:
    """How a run is confined. With `landlock`, it may write only in `write` (and to the
    `devices`), and read everything but `protect` (with `read` granted back inside it); with or
    without, every process it starts dies with it, and its log keeps at most `output_cap`
    bytes of what it prints, the tail."""

    landlock: bool = False
    write: tuple[Path, ...] = ()
    read: tuple[Path, ...] = ()
    protect: tuple[Path, ...] = ()
    devices: tuple[Path, ...] = ()
    output_cap: int = DEFAULT_OUTPUT_CAP

    def writing(self, *paths: Path) -> Confinement:
        """The same confinement, with more places it may write."""
        return replace(self, write=(*self.write, *paths))


@dataclass(frozen=True)
class AgentRequest:
    task_key: str
    stage: Stage
    role: str
    attempt: int
    prompt: str
    workdir: Path
    log_path: Path
    env: Mapping[str, str]
    timeout_s: float
    instructions: str = ""  # the role's standing instructions, for a system prompt
    budget: Budget = NO_BUDGET  # what this run may spend before orch stops it
    resume: str | None = None  # an earlier run's conversation to continue, where supported
    # what the agent itself reported at the end of that run: a resumed CLI counts it again
    carried: Usage = field(default_factory=Usage)
    confine: Confinement | None = None


@dataclass(frozen=True)
class AgentReport:
    """How an agent says its run ended, read from its own events; agents that say nothing
    (a plain command) have no report and their exit code decides."""

    ok: bool
    detail: str = ""  # in its own words: the result, the error, the limit it reached
    over_budget: str = ""  # the budget it crossed, whether orch or the agent's CLI stopped it
    session: str | None = None  # its conversation id, for resuming it
    tools: tuple[str, ...] = ()  # the tool calls it made, in order
    # its own totals as it reported them (for a resumed session: since the session began)
    reported: Usage | None = None


class AgentProcess(Protocol):
    pid: int | None

    def wait(self, timeout_s: float) -> int | None: ...
    def kill(self, grace_s: float) -> int | None: ...
    def usage(self) -> Usage:
        """What it has spent so far, from its own usage events."""
        ...

    def usage_from(self) -> UsageFrom | None:
        """Where the figures of `usage` come from; None: it reports none."""
        ...

    def limit(self, budget: Budget) -> None:
        """Hold the rest of the run to `budget` (what it may spend in all, from its start)
        instead of the one it started with: runs elsewhere have spent a budget over time since.
        One that reports no usage cannot be held to it."""
        ...

    def retrying(self) -> bool:
        """Whether it is retrying model requests its provider failed: output that is not
        progress."""
        ...

    def trouble(self) -> Trouble | None:
        """How its provider has failed it since its last good answer, if it has."""
        ...

    def close(self) -> None:
        """The run is over: let go of what it held (its token at the metering proxy)."""
        ...

    def output_bytes(self) -> int:
        """How much it has printed so far: output that stops growing is a stall."""
        ...

    def dropped_bytes(self) -> int:
        """How much of its output the log cap dropped."""
        ...

    def tail(self, chars: int = 2000) -> str:
        """The end of what it printed."""
        ...

    def report(self) -> AgentReport | None: ...


class RunAs(Protocol):
    """Another user an agent runs as, and whatever it makes run in its worktree (the gates)."""

    uid: int
    gid: int

    def env(self, home: str | None = None) -> dict[str, str]: ...
    def grant(self, worktree: Path) -> None:
        """Hand the worktree to that user before something runs as them in it."""
        ...


class Agent(Protocol):
    name: str
    run_as: RunAs | None
    # the units its usage is reported in ("tokens", "usd"): a budget in another is unenforceable
    meters: frozenset[str]
    # names from orch's environment this agent may see beyond the common allowlist: its own API
    # key and endpoint variables, never a tracker's, a forge's or a notifier's
    env_names: frozenset[str]

    def start(self, request: AgentRequest) -> AgentProcess: ...
    def usage_from_log(self, log_path: Path) -> Metered | None:
        """What a run spent, read back from its log after its worker died; None if this agent
        reports no usage."""
        ...

    def preflight(self) -> str | None:
        """A cheap check that the agent can run at all (its command exists, its provider is
        reachable): None if so, else what is wrong."""
        ...


class Notifier(Protocol):
    def notify(self, key: str, text: str, news: News | None = None) -> None:
        """Tell people `text`, at most once per `key` where the channel can tell (a chat
        message, a tracker comment); `news` is the same, structured, for a channel that shows
        more than a line (buttons for a checkpoint, verdicts, links)."""
        ...


# -- trackers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkItem:
    """A ticket as its tracker holds it now: what orch acts on, never a webhook's copy of it."""

    project: str  # the tracker's id of its project
    ref: str  # the tracker's own id of the item
    key: str  # the key people know it by, e.g. ORCH-90
    title: str
    body: str  # plain text
    state: str  # its state's name
    url: str = ""
    updated: str = ""  # the tracker's stamp of its last change: it differs after any change


@dataclass(frozen=True)
class ItemHint:
    """What a tracker's webhook delivery points at: an item to read again, and whether orch's
    own write caused it (the delivery is then only an echo)."""

    project: str
    ref: str
    actor: str = ""  # who made the change, as the tracker names them
    own: bool = False
    moved: bool = False  # the change it reports is of the item's state
    state: str = ""  # the name of the state the change left the item in, if the body says


class Tracker(Protocol):
    """A hosted tracker: where tickets live, what people decide there, and where orch reports."""

    name: str  # as the settings name it, e.g. "plane"

    def item(self, project: str, ref: str) -> WorkItem | None:
        """The item as the tracker holds it now; None if it is gone."""
        ...

    def items(self, project: str) -> Iterator[WorkItem]:
        """Every open item of the project, page by page, as the tracker holds it now."""
        ...

    def state_names(self, project: str) -> list[str]:
        """The names of the project's states, for checking the settings against."""
        ...

    def move(self, item: WorkItem, state: str) -> bool:
        """Put the item in the state named `state`, unless it is there already or is not in
        the state `item` says any more (someone moved it since it was read: their move
        stands); whether it moved it."""
        ...

    def comment(self, item: WorkItem, key: str, html: str) -> bool:
        """Comment on the item at most once per `key` (looked up before it is created);
        False if that comment was there already."""
        ...

    def latest_comment(self, item: WorkItem) -> str:
        """The text of the newest comment a person (not orch) left on the item; "" if none."""
        ...

    def hint(self, payload: Mapping[str, Any]) -> ItemHint | None:
        """The item a webhook delivery's body points at; None if it is about nothing orch
        follows (another event, a deleted item)."""
        ...


# -- pull requests ----------------------------------------------------------------------------


class PullState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # closed without merging
    MERGED = "merged"


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    head: str  # the sha at its head
    state: PullState
    merge_sha: str = ""  # for a merged one, where it landed


class StatusState(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


class ReactionKind(StrEnum):
    CI_FAILED = "ci_failed"  # a commit status of the repository's own CI failed
    CHANGES_REQUESTED = "changes_requested"  # a reviewer asked for changes, or commented
    MERGED = "merged"  # a person merged the pull request
    CLOSED = "closed"  # a person closed it without merging
    PUSHED = "pushed"  # a branch moved (`branch`, to `head`): its pipeline file may have changed


@dataclass(frozen=True)
class Reaction:
    """What a forge's webhook delivery says happened to a task's pull request, or to a branch."""

    kind: ReactionKind
    repo: str  # orch's name of the repository
    head: str  # the commit it is about
    branch: str = ""  # the pull request's head branch; "" when the event does not say (a status)
    actor: str = ""
    source: str = ""  # what it came from, unique per reaction (a status, a review)
    feedback: str = ""  # what to tell the agent
    number: int = 0  # the pull request's number, where the event names it


@runtime_checkable
class PullRequests(Protocol):
    """A forge with pull requests (Gitea): a task's branch is shown to people as one, each gate
    as a commit status, and the merge goes through it."""

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        """The open pull request of `branch` into the default branch: found, or else opened."""
        ...

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        """The newest pull request of `branch` into the default branch, open or not."""
        ...

    def describe_pull(self, repo: str, number: int, title: str, body: str) -> None: ...

    def set_status(
        self,
        repo: str,
        sha: str,
        context: str,
        state: StatusState,
        description: str = "",
        target_url: str = "",
    ) -> None:
        """One commit status; the same context again replaces what the forge shows."""
        ...

    def reaction(self, event: str, payload: Mapping[str, Any]) -> Reaction | None:
        """What a webhook delivery of event type `event` says happened to a pull request of one
        of orch's repositories; None if it is nothing orch reacts to."""
        ...


@dataclass(frozen=True)
class DeployTarget:
    command: str
    check: str = ""  # a command that exits 0 if the release is already deployed


@dataclass(frozen=True)
class RepoSettings:
    """What the core needs to know about one repository."""

    name: str
    default_branch: str = "main"
    test_command: str = "python -m pytest -q"
    key_prefix: str = ""
    max_active: int = 1
    deploy: Mapping[str, DeployTarget] = field(default_factory=dict)
    sandbox: str = "landlock"  # or "none": agents and gates run unconfined, by choice
    # gate integrity: "flag" shows what weakens the checks; "strict" also waits for a person
    protect: str = "flag"
    protected_paths: tuple[str, ...] = DEFAULT_PROTECTED
    # what its agent runs may spend per period (orch.domain.periods)
    budgets: Mapping[Period, Budget] = field(default_factory=dict)


class Repos(Protocol):
    def get(self, name: str) -> RepoSettings: ...


class WarmLaunchers(Protocol):
    """Launchers started ahead of the commands they will start (orch.adapters.process)."""

    def keep(self, count: int, incarnation: str, stop: threading.Event) -> None:
        """Until `stop`, hold `count` ready, started as `incarnation`'s. Blocks: a thread of
        its own runs it."""
        ...

    def wake(self) -> None:
        """Have `keep` look at `stop` at once."""
        ...


class ProcessTable(Protocol):
    """Process identity on this host: a pid plus its start time, never a pid alone."""

    def incarnation(self) -> str:
        """A name for this process that a later process with the same pid cannot share."""
        ...

    def is_dead(self, incarnation: str) -> bool:
        """True only if this host can prove that incarnation has ended."""
        ...

    def reap_orphans(self, live: str, grace_s: float) -> list[int]:
        """End the children that dead incarnations left behind; return their pids."""
        ...


# the exit status of a command a CommandRunner did not start, as it would have started past its
# `not_after` (the launcher's EXIT_LATE)
NOT_STARTED_LATE = 125


class CommandRunner(Protocol):
    """Starts a shell command as a supervised child (gate checks, deploy commands)."""

    def start(
        self,
        command: str,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        run_as: RunAs | None = None,
        confine: Confinement | None = None,
        not_after: float | None = None,
    ) -> AgentProcess:
        """`not_after` (seconds since the epoch): the command is not run at all if it would
        start later, for one that must not run twice (a deploy) under a lease that may be
        lost by then."""
        ...


class Sandbox(Protocol):
    """Where the runs of a repository's agents and gates may write and read."""

    def describe(self) -> str:
        """One line: the confinement in force on this host."""
        ...

    def confine(self, repo: RepoSettings, worktree: Path, home: Path, own: Path) -> Confinement:
        """The confinement of a run in `worktree` with its own `home` and log directory `own`.
        Raises AgentError when the repository needs a sandbox this host cannot apply."""
        ...
