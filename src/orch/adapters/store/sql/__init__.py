"""The store on SQLAlchemy Core: one implementation for SQLite and PostgreSQL, split by concern
(its connection and transactions; tasks; leases and the job's write; records; the inbox; API
tokens; the built-in board)."""

from __future__ import annotations

from orch.adapters.store.sql.access import AccessRecords
from orch.adapters.store.sql.base import normalise_url, sqlite_path
from orch.adapters.store.sql.board import BoardRecords
from orch.adapters.store.sql.inbox import InboxRecords
from orch.adapters.store.sql.leases import Leases
from orch.adapters.store.sql.metrics import MetricsRecords
from orch.adapters.store.sql.records import Records
from orch.adapters.store.sql.tasks import TaskRecords

__all__ = ["SqlStore", "normalise_url", "sqlite_path"]

from orch.adapters.store.sql.deliveries import DeliveryRecords


class SqlStore(
    TaskRecords,
    Leases,
    Records,
    InboxRecords,
    AccessRecords,
    MetricsRecords,
    DeliveryRecords,
    BoardRecords,
):
    """The store. `url` is a SQLAlchemy URL: sqlite:///path, sqlite:// (memory), postgresql://..."""
