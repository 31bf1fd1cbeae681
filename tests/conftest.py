"""Shared fixtures: the stores every contract test runs on, and a PostgreSQL database to use.

PostgreSQL comes from `ORCH_TEST_PG_URL`, or else from a throwaway database created on the local
server (postgresql://postgres@127.0.0.1:5432/postgres) and dropped when the session ends. Without
a reachable server the postgres tests are skipped, unless `CI` is set, where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from orch.adapters.store.sql import SqlStore
from orch.testing import memory_store, sql_memory_store

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

# every table the store writes, emptied between postgres tests
TABLES = (
    "tasks",
    "pipelines",
    "jobs",
    "transitions",
    "effects",
    "events",
    "gate_verdicts",
    "runs",
    "tickets",
    "ticket_sequences",
    "api_tokens",
    "counters",
    "deliveries",
    "board_comments",
    "board_items",
    "tracker_items",
)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _unreachable(reason: str) -> None:
    message = f"no PostgreSQL reachable at {LOCAL_PG} ({reason}); set ORCH_TEST_PG_URL"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose database this session may fill and empty at will."""
    configured = os.environ.get("ORCH_TEST_PG_URL")
    if configured:
        yield configured
        return
    try:
        admin = psycopg.connect(LOCAL_PG, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unreachable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(LOCAL_PG, name)
    finally:
        with psycopg.connect(LOCAL_PG, autocommit=True, connect_timeout=3) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_migrated(pg_url: str) -> str:
    """The postgres database with the schema in place, migrated once per session."""
    store = SqlStore(pg_url)
    try:
        store.migrate()
    finally:
        store.close()
    return pg_url


def _truncate_all(url: str) -> None:
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
            )
        )


@pytest.fixture
def pg_empty(pg_migrated: str) -> str:
    """The postgres database, migrated and emptied, for a test that opens its own stores."""
    _truncate_all(pg_migrated)
    return pg_migrated


STORE_KINDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """Every store implementation, migrated and empty."""
    kind = request.param
    if kind == "memory":
        s = memory_store()
    elif kind == "sqlite":
        s = SqlStore(f"sqlite:///{tmp_path}/orch.db")
        s.migrate()
    else:
        url = request.getfixturevalue("pg_migrated")
        _truncate_all(url)
        s = SqlStore(url)
        s.migrate()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """Each SQL store, migrated and empty: SQLite in memory, and PostgreSQL."""
    if request.param == "sqlite":
        s = sql_memory_store()
    else:
        s = SqlStore(request.getfixturevalue("pg_empty"))
    try:
        yield s
    finally:
        s.close()
