"""board_items: where the built-in board's tickets stand; board_comments: what is said on them

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "board_items",
        sa.Column("key", sa.String(120), sa.ForeignKey("tickets.key"), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "board_comments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(120), sa.ForeignKey("tickets.key"), nullable=False),
        sa.Column("comment_key", sa.Text, nullable=False, server_default=""),
        sa.Column("html", sa.Text, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("own", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_board_comments_key", "board_comments", ["key", "id"])
    op.create_index(
        "uq_board_comments_key",
        "board_comments",
        ["key", "comment_key"],
        unique=True,
        sqlite_where=sa.text("comment_key != ''"),
        postgresql_where=sa.text("comment_key != ''"),
    )


def downgrade() -> None:
    op.drop_index("uq_board_comments_key", table_name="board_comments")
    op.drop_index("ix_board_comments_key", table_name="board_comments")
    op.drop_table("board_comments")
    op.drop_table("board_items")
