"""deliveries: webhook deliveries stored once before they are answered; tracker_items: which
tracker item a ticket is

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("delivery", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("done_at", sa.Float),
        sa.Column("outcome", sa.Text, nullable=False, server_default=""),
        sa.UniqueConstraint("source", "delivery", name="uq_deliveries_source_delivery"),
    )
    op.create_index("ix_deliveries_pending", "deliveries", ["source", "done_at"])
    op.create_table(
        "tracker_items",
        sa.Column("key", sa.String(120), sa.ForeignKey("tickets.key"), primary_key=True),
        sa.Column("tracker", sa.String(40), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("acted_on", sa.Text, nullable=False, server_default=""),
        sa.Column("seen_state", sa.Text, nullable=False, server_default=""),
        sa.UniqueConstraint("tracker", "ref", name="uq_tracker_items_ref"),
    )


def downgrade() -> None:
    op.drop_table("tracker_items")
    op.drop_index("ix_deliveries_pending", table_name="deliveries")
    op.drop_table("deliveries")
