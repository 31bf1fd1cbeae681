"""api tokens: who may use the API, and in which role; only the secrets' digests are kept

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.CheckConstraint(
            "role IN ('viewer', 'operator', 'admin')", name="ck_api_tokens_role_known"
        ),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
