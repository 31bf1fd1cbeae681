"""baseline schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), server_default="", nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("branch", sa.String(length=300), nullable=False),
        sa.Column("pipeline", sa.JSON(), nullable=False),
        sa.Column("waiting_for", sa.String(length=120), nullable=True),
        sa.Column("feedback", sa.Text(), server_default="", nullable=False),
        sa.Column("rework_rounds", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancel_requested_at", sa.Float(), nullable=True),
        sa.Column("status_reason", sa.Text(), server_default="", nullable=False),
        sa.Column("cost_usd", sa.Float(), server_default="0", nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "stage IN ('analysis', 'architecture', 'development', 'review', 'testing', 'deploy-staging', 'deploy', 'done', 'cancelled')",
            name="ck_tasks_stage_known",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'waiting', 'needs_operator', 'done', 'cancelled')",
            name="ck_tasks_status_known",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tasks_status", "tasks", ["status"], unique=False)
    op.create_index(
        "uq_tasks_live_key",
        "tasks",
        ["key"],
        unique=True,
        sqlite_where=sa.text("status != 'cancelled'"),
        postgresql_where=sa.text("status != 'cancelled'"),
    )
    op.create_index(
        "uq_tasks_repo_slot",
        "tasks",
        ["repo", "slot"],
        unique=True,
        sqlite_where=sa.text("slot IS NOT NULL"),
        postgresql_where=sa.text("slot IS NOT NULL"),
    )
    op.create_table(
        "ticket_sequences",
        sa.Column("prefix", sa.String(length=60), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("prefix"),
    )
    op.create_table(
        "tickets",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), server_default="", nullable=False),
        sa.Column("url", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "effects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("precondition", sa.Text(), server_default="", nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "state IN ('INITIATED', 'SUCCEEDED', 'FAILED', 'UNKNOWN')",
            name="ck_effects_state_known",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_effects_task", "effects", ["task_id"], unique=False)
    op.create_index(
        "uq_effects_merge_in_flight",
        "effects",
        ["repo"],
        unique=True,
        sqlite_where=sa.text("kind = 'merge' AND state IN ('INITIATED', 'UNKNOWN')"),
        postgresql_where=sa.text("kind = 'merge' AND state IN ('INITIATED', 'UNKNOWN')"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("processed_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_events_pending", "events", ["task_id", "processed_at"], unique=False)
    op.create_table(
        "gate_verdicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("gate", sa.String(length=120), nullable=False),
        sa.Column("head_sha", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "stage IN ('analysis', 'architecture', 'development', 'review', 'testing', 'deploy-staging', 'deploy', 'done', 'cancelled')",
            name="ck_gate_verdicts_stage_known",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "version", "gate", "head_sha", name="uq_gate_verdicts_once"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("run_after", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "stage IN ('analysis', 'architecture', 'development', 'review', 'testing', 'deploy-staging', 'deploy', 'done', 'cancelled')",
            name="ck_jobs_stage_known",
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'superseded', 'dead', 'cancelled')",
            name="ck_jobs_state_known",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "version", name="uq_jobs_task_version"),
    )
    op.create_index("ix_jobs_runnable", "jobs", ["state", "run_after"], unique=False)
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("from_stage", sa.String(length=32), nullable=False),
        sa.Column("to_stage", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=False),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "from_stage IN ('analysis', 'architecture', 'development', 'review', 'testing', 'deploy-staging', 'deploy', 'done', 'cancelled')",
            name="ck_transitions_from_stage_known",
        ),
        sa.CheckConstraint(
            "from_status IN ('active', 'waiting', 'needs_operator', 'done', 'cancelled')",
            name="ck_transitions_from_status_known",
        ),
        sa.CheckConstraint(
            "to_stage IN ('analysis', 'architecture', 'development', 'review', 'testing', 'deploy-staging', 'deploy', 'done', 'cancelled')",
            name="ck_transitions_to_stage_known",
        ),
        sa.CheckConstraint(
            "to_status IN ('active', 'waiting', 'needs_operator', 'done', 'cancelled')",
            name="ck_transitions_to_status_known",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "version", name="uq_transitions_task_version"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=120), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("log_path", sa.Text(), server_default="", nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("tokens_in", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_usd", sa.Float(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "stage IN ('analysis', 'architecture', 'development', 'review', 'testing', 'deploy-staging', 'deploy', 'done', 'cancelled')",
            name="ck_runs_stage_known",
        ),
        sa.CheckConstraint(
            "outcome IN ('exited', 'timed_out', 'stalled', 'deadline', 'stopped', 'lease_lost', 'shutdown', 'error')",
            name="ck_runs_outcome_known",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_runs_task", "runs", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_runs_task", table_name="runs")
    op.drop_table("runs")
    op.drop_table("transitions")
    op.drop_index("ix_jobs_runnable", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("gate_verdicts")
    op.drop_index("ix_events_pending", table_name="events")
    op.drop_table("events")
    op.drop_index(
        "uq_effects_merge_in_flight",
        table_name="effects",
        sqlite_where=sa.text("kind = 'merge' AND state IN ('INITIATED', 'UNKNOWN')"),
        postgresql_where=sa.text("kind = 'merge' AND state IN ('INITIATED', 'UNKNOWN')"),
    )
    op.drop_index("ix_effects_task", table_name="effects")
    op.drop_table("effects")
    op.drop_table("tickets")
    op.drop_table("ticket_sequences")
    op.drop_index(
        "uq_tasks_repo_slot",
        table_name="tasks",
        sqlite_where=sa.text("slot IS NOT NULL"),
        postgresql_where=sa.text("slot IS NOT NULL"),
    )
    op.drop_index(
        "uq_tasks_live_key",
        table_name="tasks",
        sqlite_where=sa.text("status != 'cancelled'"),
        postgresql_where=sa.text("status != 'cancelled'"),
    )
    op.drop_index("ix_tasks_status", table_name="tasks")
    op.drop_table("tasks")
