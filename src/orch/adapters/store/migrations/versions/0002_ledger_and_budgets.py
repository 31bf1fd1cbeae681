"""ledger and budgets: cache tokens, agent sessions, budget overrides, the budget outcome

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_OUTCOMES = (
    "'exited', 'timed_out', 'stalled', 'deadline', 'stopped', 'lease_lost', 'shutdown', 'error'"
)
NEW_OUTCOMES = OLD_OUTCOMES + ", 'budget'"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("cache_read", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("cache_write", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("budgets", sa.JSON(), nullable=True))
    # SQLite cannot alter a CHECK constraint in place: batch mode copies the table
    with op.batch_alter_table("runs", recreate="auto") as batch:
        batch.add_column(
            sa.Column("cache_read", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("cache_write", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("session", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("detail", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("accounted_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("tools", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("reported", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch.drop_constraint("ck_runs_outcome_known", type_="check")
        batch.create_check_constraint("ck_runs_outcome_known", f"outcome IN ({NEW_OUTCOMES})")
    # the runs that ended before the ledger were counted into their tasks' totals already
    op.execute("UPDATE runs SET accounted_at = ended_at WHERE ended_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("runs", recreate="auto") as batch:
        batch.drop_constraint("ck_runs_outcome_known", type_="check")
        batch.create_check_constraint("ck_runs_outcome_known", f"outcome IN ({OLD_OUTCOMES})")
        for column in (
            "owner",
            "reported",
            "tools",
            "accounted_at",
            "detail",
            "session",
            "cache_write",
            "cache_read",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("tasks") as batch:
        for column in ("budgets", "cache_write", "cache_read"):
            batch.drop_column(column)
