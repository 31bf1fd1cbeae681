"""task_tallies: the tasks by stage, by status and by repository (with what each repository's
tasks spent), kept by triggers in the transaction that changes a task, so /state reads them
instead of counting every task; and indexes for the lookups the sweep and the API make each time
they run: a task by its key, the STOPs still to apply, running jobs by lease expiry, the runs not
in the ledger yet, a job's open runs

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orch.adapters.store.migrations.tally_triggers import (
    NO_SPEND,
    SPEND,
    TALLY_ARGS,
    TRIGGERS,
    postgresql_triggers,
    sqlite_triggers,
)

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_tallies",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("tasks", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens_in", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens_out", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cache_read", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cache_write", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.CheckConstraint(
            "kind IN ('repo', 'stage', 'status')", name="ck_task_tallies_kind_known"
        ),
    )
    # the triggers before the count: on PostgreSQL creating one locks tasks against writes until
    # this transaction commits, so no change falls between the count and the triggers
    if op.get_bind().dialect.name == "postgresql":
        postgresql_triggers()
    else:
        sqlite_triggers()
    for kind, spend in (
        ("repo", tuple(f"SUM({c})" for c in SPEND)),
        ("stage", NO_SPEND),
        ("status", NO_SPEND),
    ):
        op.execute(
            f"INSERT INTO task_tallies (kind, name, tasks, {', '.join(SPEND)})"
            f" SELECT '{kind}', {kind}, COUNT(*), {', '.join(spend)} FROM tasks GROUP BY {kind}"
        )

    op.create_index("ix_tasks_key", "tasks", ["key", "id"])
    op.create_index(
        "ix_tasks_cancel_pending",
        "tasks",
        ["cancel_requested_at"],
        sqlite_where=sa.text(
            "cancel_requested_at IS NOT NULL AND status NOT IN ('cancelled', 'done')"
        ),
        postgresql_where=sa.text(
            "cancel_requested_at IS NOT NULL AND status NOT IN ('cancelled', 'done')"
        ),
    )
    op.create_index("ix_jobs_lease_expiry", "jobs", ["state", "lease_expires_at"])
    op.create_index(
        "ix_runs_unaccounted",
        "runs",
        ["id"],
        sqlite_where=sa.text("accounted_at IS NULL"),
        postgresql_where=sa.text("accounted_at IS NULL"),
    )
    op.create_index(
        "ix_runs_open",
        "runs",
        ["job_id"],
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_open", table_name="runs")
    op.drop_index("ix_runs_unaccounted", table_name="runs")
    op.drop_index("ix_jobs_lease_expiry", table_name="jobs")
    op.drop_index("ix_tasks_cancel_pending", table_name="tasks")
    op.drop_index("ix_tasks_key", table_name="tasks")
    if op.get_bind().dialect.name == "postgresql":
        for name in (*TRIGGERS, "tasks_tally_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON tasks")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
        op.execute(f"DROP FUNCTION IF EXISTS orch_tally({TALLY_ARGS})")
    else:
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("task_tallies")
