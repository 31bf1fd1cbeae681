"""pipelines: each distinct pipeline tasks were filed with, once, keyed by the digest of its
canonical JSON; a task refers to its own by pipeline_id instead of holding a copy, so a task's row
is small for the reads that do not need its pipeline

On SQLite, tasks is rebuilt (batch mode copies it to a new table and drops the old): the rows that
refer to tasks must not be checked while it is gone, so this runs with foreign keys unenforced
(`orch migrate` runs it so, and checks every reference before it commits), and the tally triggers,
dropped with the old table, are made again.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from orch.adapters.store.migrations.tally_triggers import sqlite_triggers
from orch.adapters.store.schema import pipeline_digest

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# the tables as this migration reads and writes them, whatever schema.py says later
TASKS = sa.table(
    "tasks",
    sa.column("id", sa.Integer),
    sa.column("pipeline", sa.JSON),
    sa.column("pipeline_id", sa.Integer),
)
PIPELINES = sa.table(
    "pipelines", sa.column("id", sa.Integer), sa.column("digest"), sa.column("body", sa.JSON)
)
CHUNK = 500  # task ids to an UPDATE, well below SQLite's limit on bound parameters


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "pipelines",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.UniqueConstraint("digest", name="uq_pipelines_digest"),
    )
    op.add_column("tasks", sa.Column("pipeline_id", sa.Integer(), nullable=True))
    _move_to_pipelines(bind)
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("pipeline_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key("fk_tasks_pipeline_id", "pipelines", ["pipeline_id"], ["id"])
        batch.drop_column("pipeline")
    if bind.dialect.name == "sqlite":
        sqlite_triggers()


def downgrade() -> None:
    bind = op.get_bind()
    op.add_column("tasks", sa.Column("pipeline", sa.JSON(), nullable=True))
    body = (
        sa.select(PIPELINES.c.body).where(PIPELINES.c.id == TASKS.c.pipeline_id).scalar_subquery()
    )
    bind.execute(sa.update(TASKS).values(pipeline=body))
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("pipeline", existing_type=sa.JSON(), nullable=False)
        batch.drop_constraint("fk_tasks_pipeline_id", type_="foreignkey")
        batch.drop_column("pipeline_id")
    if bind.dialect.name == "sqlite":
        sqlite_triggers()
    op.drop_table("pipelines")


def _move_to_pipelines(bind: Connection) -> None:
    """Each task's pipeline into pipelines, one row for each distinct one (in the order of the
    first task that had it), and the task pointed at it."""
    tasks_of: dict[str, list[int]] = {}
    body_of: dict[str, Any] = {}
    rows = bind.execute(
        sa.select(TASKS.c.id, TASKS.c.pipeline)
        .order_by(TASKS.c.id)
        .execution_options(yield_per=CHUNK)  # streamed: every body need not be held at once
    )
    for task_id, body in rows:
        digest = pipeline_digest(body)
        if digest not in body_of:
            body_of[digest] = body
            tasks_of[digest] = []
        tasks_of[digest].append(task_id)
    for digest, body in body_of.items():
        pipeline_id = bind.execute(
            sa.insert(PIPELINES).values(digest=digest, body=body).returning(PIPELINES.c.id)
        ).scalar_one()
        ids = tasks_of[digest]
        for start in range(0, len(ids), CHUNK):
            bind.execute(
                sa.update(TASKS)
                .where(TASKS.c.id.in_(ids[start : start + CHUNK]))
                .values(pipeline_id=pipeline_id)
            )
