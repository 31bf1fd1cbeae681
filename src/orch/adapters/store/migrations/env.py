"""Alembic environment: orch hands in an open connection; there is no alembic.ini to edit."""

from __future__ import annotations

from alembic import context

from orch.adapters.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=False,
)
with context.begin_transaction():
    context.run_migrations()
