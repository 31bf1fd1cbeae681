"""PostgreSQL without a ping before every transaction: a pooled connection the server dropped is
found by the transaction that uses it, which runs again on a fresh one."""

from __future__ import annotations

import psycopg
import pytest

from orch.adapters.store.sql import SqlStore

pytestmark = pytest.mark.postgres


def drop_connections(url: str) -> int:
    """End every server connection to the store's database but this one: a restart, say."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True, connect_timeout=3) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_reads_and_writes_survive_the_server_dropping_pooled_connections(pg_migrated: str) -> None:
    store = SqlStore(pg_migrated, pool_size=2)
    try:
        store.file_ticket("app", "RECON", "before", "")  # a connection is pooled
        assert drop_connections(pg_migrated) >= 1
        assert store.now() > 0  # a read on a dropped connection is read again
        assert drop_connections(pg_migrated) >= 1
        ticket = store.file_ticket("app", "RECON", "after", "")  # and a write written again
        assert store.get_ticket(ticket.key) is not None
    finally:
        store.close()
