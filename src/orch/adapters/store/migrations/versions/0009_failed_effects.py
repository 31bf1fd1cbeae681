"""ix_effects_failed: the effects that failed, by kind, for the tracker poll that sends them again

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_effects_failed",
        "effects",
        ["kind", "id"],
        sqlite_where=sa.text("state = 'FAILED'"),
        postgresql_where=sa.text("state = 'FAILED'"),
    )


def downgrade() -> None:
    op.drop_index("ix_effects_failed", table_name="effects")
