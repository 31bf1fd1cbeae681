"""working time: a task's deadline counts only the time it held a repository slot

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("slot_since", sa.Float(), nullable=True))
        batch.add_column(sa.Column("worked_s", sa.Float(), nullable=False, server_default="0"))
    # a task in flight keeps the working time orch counted before: its time active, from its
    # history, up to its last change; one holding a slot works on from then
    op.execute(
        "UPDATE tasks SET worked_s = COALESCE((SELECT SUM(w.until - w.at) FROM"
        " (SELECT at, to_status, LEAD(at) OVER (ORDER BY version) AS until"
        " FROM transitions WHERE transitions.task_id = tasks.id) AS w"
        " WHERE w.to_status = 'active' AND w.until IS NOT NULL), 0)"
        " WHERE status NOT IN ('done', 'cancelled')"
    )
    op.execute("UPDATE tasks SET slot_since = updated_at WHERE slot IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("worked_s")
        batch.drop_column("slot_since")
