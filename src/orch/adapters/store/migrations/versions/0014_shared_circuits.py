"""circuits: the circuit breakers every orch process takes as its own (one opened by a worker
holds back the others' attempts, until a probe in any of them gets through); runs.retrying: what
a run in flight is retrying, so any process can say a task is in provider retries

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "circuits",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("open_until", sa.Float, nullable=False),
        sa.Column("cooldown_s", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.add_column("runs", sa.Column("retrying", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("retrying")
    op.drop_table("circuits")
