"""Tables. CHECK constraints come from the enums in `orch.domain.states`, the one definition."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from orch.domain.access import Role
from orch.domain.states import (
    TERMINAL_STATUSES,
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    JobState,
    RunOutcome,
    Stage,
    TaskStatus,
)

metadata = sa.MetaData()


def _literals(values: Iterable[StrEnum]) -> str:
    return ", ".join(f"'{v.value}'" for v in sorted(values))


# a task that has not ended, its values written out: a partial index serves a query only when the
# query states the index's condition as the index does (a bound parameter never matches it)
LIVE_TASK = f"status NOT IN ({_literals(TERMINAL_STATUSES)})"
# a merge whose outcome is not known yet, likewise written out
MERGE_IN_FLIGHT = (
    f"kind = '{EffectKind.MERGE.value}' AND state IN ({_literals(UNRESOLVED_EFFECT_STATES)})"
)


def _one_of(table: str, column: str, values: type) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)  # type: ignore[attr-defined]
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=f"ck_{table}_{column}_known")


tickets = sa.Table(
    "tickets",
    metadata,
    sa.Column("key", sa.String(120), primary_key=True),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False, server_default=""),
    sa.Column("url", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
)

ticket_sequences = sa.Table(
    "ticket_sequences",
    metadata,
    sa.Column("prefix", sa.String(60), primary_key=True),
    sa.Column("last", sa.Integer, nullable=False),
)


def pipeline_digest(pipeline: dict[str, Any]) -> str:
    """What tells one pipeline from another: the SHA-256 of its canonical JSON (keys sorted, no
    spaces), so equal pipelines share one row whatever order their keys came in."""
    canonical = json.dumps(pipeline, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# the pipelines tasks were filed with, each distinct one once: most tasks of a repository share
# one, and a task's row stays small for the reads that do not need it. Never updated or deleted
pipelines = sa.Table(
    "pipelines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("digest", sa.String(64), nullable=False),  # pipeline_digest of the body
    sa.Column("body", sa.JSON, nullable=False),
    sa.UniqueConstraint("digest", name="uq_pipelines_digest"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(120), nullable=False),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False, server_default=""),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("branch", sa.String(300), nullable=False),
    # the pipeline it was filed with, as it was then
    sa.Column(
        "pipeline_id",
        sa.Integer,
        sa.ForeignKey("pipelines.id", name="fk_tasks_pipeline_id"),
        nullable=False,
    ),
    sa.Column("waiting_for", sa.String(120)),
    sa.Column("feedback", sa.Text, nullable=False, server_default=""),
    sa.Column("rework_rounds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested_at", sa.Float),
    sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("tokens_in", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_read", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_write", sa.BigInteger, nullable=False, server_default="0"),
    # an operator's budget overrides: {"task": {"usd", "tokens"}, "stages": {stage: {...}}}
    sa.Column("budgets", sa.JSON),
    sa.Column("slot", sa.Integer),  # the repository slot an active task holds
    sa.Column("slot_since", sa.Float),  # when it took that slot
    # working time: how long it held a repository slot, over every period it held one
    sa.Column("worked_s", sa.Float, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    _one_of("tasks", "stage", Stage),
    _one_of("tasks", "status", TaskStatus),
    sa.Index(
        "uq_tasks_live_key",
        "key",
        unique=True,
        sqlite_where=sa.text("status != 'cancelled'"),
        postgresql_where=sa.text("status != 'cancelled'"),
    ),
    sa.Index("ix_tasks_status", "status"),
    # a task by its ticket's key, the latest first (the unique index above holds live ones only)
    sa.Index("ix_tasks_key", "key", "id"),
    # the STOPs not yet applied, which every sweep looks at
    sa.Index(
        "ix_tasks_cancel_pending",
        "cancel_requested_at",
        sqlite_where=sa.text(f"cancel_requested_at IS NOT NULL AND {LIVE_TASK}"),
        postgresql_where=sa.text(f"cancel_requested_at IS NOT NULL AND {LIVE_TASK}"),
    ),
    # the per-repository limit on active tasks is kept by the store, not by the scheduler: each
    # active task holds a distinct slot below its repository's limit, and a race fails closed here
    sa.Index(
        "uq_tasks_repo_slot",
        "repo",
        "slot",
        unique=True,
        sqlite_where=sa.text("slot IS NOT NULL"),
        postgresql_where=sa.text("slot IS NOT NULL"),
    ),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("run_after", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    _one_of("jobs", "state", JobState),
    sa.UniqueConstraint("task_id", "version", name="uq_jobs_task_version"),
    sa.Index("ix_jobs_runnable", "state", "run_after"),
    # the running jobs whose lease expired, which every sweep takes back
    sa.Index("ix_jobs_lease_expiry", "state", "lease_expires_at"),
    _one_of("jobs", "stage", Stage),
)


transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("from_stage", sa.String(32), nullable=False),
    sa.Column("to_stage", sa.String(32), nullable=False),
    sa.Column("from_status", sa.String(32), nullable=False),
    sa.Column("to_status", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("task_id", "version", name="uq_transitions_task_version"),
    _one_of("transitions", "from_stage", Stage),
    _one_of("transitions", "to_stage", Stage),
    _one_of("transitions", "from_status", TaskStatus),
    _one_of("transitions", "to_status", TaskStatus),
)

effects = sa.Table(
    "effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(400), nullable=False, unique=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("precondition", sa.Text, nullable=False, server_default=""),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("lease_token", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    _one_of("effects", "state", EffectState),
    # one merge in flight per repository; also how the sweep finds the merges left unsettled
    sa.Index(
        "uq_effects_merge_in_flight",
        "repo",
        unique=True,
        sqlite_where=sa.text(MERGE_IN_FLIGHT),
        postgresql_where=sa.text(MERGE_IN_FLIGHT),
    ),
    # one deploy to a target starting at a time per repository: what a target runs is read
    # before deploying, and two deploys racing would each read the same
    sa.Index(
        "uq_effects_deploy_in_flight",
        "repo",
        "kind",
        unique=True,
        sqlite_where=sa.text("kind LIKE 'deploy:%' AND state = 'INITIATED'"),
        postgresql_where=sa.text("kind LIKE 'deploy:%' AND state = 'INITIATED'"),
    ),
    sa.Index("ix_effects_task", "task_id"),
    sa.Index("ix_effects_repo_kind", "repo", "kind"),
    # the few that failed, which each tracker poll sends again, found without reading the rest
    sa.Index(
        "ix_effects_failed",
        "kind",
        "id",
        sqlite_where=sa.text("state = 'FAILED'"),
        postgresql_where=sa.text("state = 'FAILED'"),
    ),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("key", sa.String(400), nullable=False, unique=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("processed_at", sa.Float),
    sa.Index("ix_events_pending", "task_id", "processed_at"),
)

gate_verdicts = sa.Table(
    "gate_verdicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("gate", sa.String(120), nullable=False),
    sa.Column("head_sha", sa.String(64), nullable=False),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("at", sa.Float, nullable=False),
    sa.UniqueConstraint("task_id", "version", "gate", "head_sha", name="uq_gate_verdicts_once"),
    _one_of("gate_verdicts", "stage", Stage),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("stage", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("agent", sa.String(120), nullable=False),
    sa.Column("pid", sa.Integer),
    sa.Column("exit_code", sa.Integer),
    sa.Column("outcome", sa.String(16)),  # how it ended; NULL while running or after a crash
    sa.Column("log_path", sa.Text, nullable=False, server_default=""),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("tokens_in", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("cache_read", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_write", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("session", sa.String(120)),  # the agent's conversation, resumed by a retry
    sa.Column("detail", sa.Text, nullable=False, server_default=""),  # the agent's own account
    sa.Column("accounted_at", sa.Float),  # when its usage entered the ledger, once
    sa.Column("tools", sa.JSON),  # the tool calls the agent reported, in order
    sa.Column("reported", sa.JSON),  # the agent's own totals, which a resumed run counts again
    sa.Column("owner", sa.String(200)),  # the incarnation that supervised it
    # where its tokens and its dollars came from (a ledger.Figure); NULL: the agent's, as before
    sa.Column("tokens_from", sa.String(16)),
    sa.Column("usd_from", sa.String(16)),
    # what it is retrying, while in flight, as its supervisor last noted: "" or NULL when nothing
    sa.Column("retrying", sa.Text),
    sa.Index("ix_runs_task", "task_id"),
    sa.Index("ix_runs_started", "started_at"),  # spending over time
    # the few runs not in the ledger yet, whose dead workers every sweep looks for
    sa.Index(
        "ix_runs_unaccounted",
        "id",
        sqlite_where=sa.text("accounted_at IS NULL"),
        postgresql_where=sa.text("accounted_at IS NULL"),
    ),
    # a job's runs still open, which its end (or its lease's) closes
    sa.Index(
        "ix_runs_open",
        "job_id",
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    ),
    _one_of("runs", "stage", Stage),
    _one_of("runs", "outcome", RunOutcome),
)


# the circuit breakers (orch.services.breaker) opened in any process, which every process takes as
# its own: until when (the store's clock), for how long, and why. A row stays after its cooldown,
# until a probe gets through (the circuit closes: its row goes) or fails (open again, for longer)
circuits = sa.Table(
    "circuits",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("open_until", sa.Float, nullable=False),
    sa.Column("cooldown_s", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
)

# running totals of what leaves no record of its own: leases the sweep took back, writes fencing
# refused; only ever incremented
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False, server_default="0"),
)

# the tasks by stage, by status and by repository, with what each repository's tasks spent: what
# /state shows, read without counting every task. Triggers on tasks (migration 0010) keep them in
# the transaction that inserts, moves, charges or deletes a task, so no write in Python keeps
# them; a rebuild of tasks (a batch migration on SQLite) must make those triggers again (as 0011
# does, from migrations/tally_triggers.py)
task_tallies = sa.Table(
    "task_tallies",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # repo, stage or status
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("tasks", sa.BigInteger, nullable=False, server_default="0"),
    # what the tasks spent: kept for repositories only
    sa.Column("tokens_in", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tokens_out", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_read", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_write", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.CheckConstraint("kind IN ('repo', 'stage', 'status')", name="ck_task_tallies_kind_known"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    _one_of("api_tokens", "role", Role),
)

# webhook deliveries, each stored once by its provider's delivery id before it is answered, and
# worked from here: a delivery is a hint to read the tracker or forge again, never the truth
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Column("delivery", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float),
    sa.Column("outcome", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("source", "delivery", name="uq_deliveries_source_delivery"),
    sa.Index("ix_deliveries_pending", "source", "done_at"),
)

# tickets that live in a hosted tracker: which item each is, and the item's stamp when orch last
# acted on its state (the same state seen again at that stamp is not asked again)
tracker_items = sa.Table(
    "tracker_items",
    metadata,
    sa.Column("key", sa.String(120), sa.ForeignKey("tickets.key"), primary_key=True),
    sa.Column("tracker", sa.String(40), nullable=False),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("ref", sa.String(200), nullable=False),
    sa.Column("acted_on", sa.Text, nullable=False, server_default=""),
    # the state orch last saw the item in: a start is a move into the start state
    sa.Column("seen_state", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("tracker", "ref", name="uq_tracker_items_ref"),
)

# the built-in board: where each of its tickets stands, once moved (a ticket never moved is in
# the board's first state), moved only by a compare-and-set on its version
board_items = sa.Table(
    "board_items",
    metadata,
    sa.Column("key", sa.String(120), sa.ForeignKey("tickets.key"), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# comments on the built-in board's tickets: orch's are keyed, once per ticket and key, as its
# comments in a hosted tracker are
board_comments = sa.Table(
    "board_comments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(120), sa.ForeignKey("tickets.key"), nullable=False),
    sa.Column("comment_key", sa.Text, nullable=False, server_default=""),
    sa.Column("html", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("own", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_board_comments_key", "key", "id"),
    sa.Index(
        "uq_board_comments_key",
        "key",
        "comment_key",
        unique=True,
        sqlite_where=sa.text("comment_key != ''"),
        postgresql_where=sa.text("comment_key != ''"),
    ),
)
