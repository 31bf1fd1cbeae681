"""runs.tokens_from and runs.usd_from: where a run's tokens and dollars came from (the
provider's usage read by orch's metering proxy, the agent's own account, or orch's estimate);
NULL for the runs before, whose figures were the agent's

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("tokens_from", sa.String(16)))
    op.add_column("runs", sa.Column("usd_from", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("usd_from")
        batch.drop_column("tokens_from")
