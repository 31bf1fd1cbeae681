"""Where a database's schema stands against orch's migrations, read without changing anything:
what `orch migrate` would do, told by the commands that only read and by `orch doctor`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from orch.domain.errors import StoreUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@dataclass(frozen=True)
class Schema:
    current: frozenset[str]  # the revisions the database is at; empty if never migrated
    heads: frozenset[str]  # this orch's latest
    unknown: tuple[str, ...]  # revisions of the database this orch has no migration for

    @property
    def latest(self) -> bool:
        return self.current == self.heads

    @property
    def newer(self) -> bool:
        """Migrated by a newer orch: this one cannot say what its schema holds."""
        return bool(self.unknown)


def schema_of(conn: Connection) -> Schema:
    scripts = ScriptDirectory.from_config(alembic_config())
    current = frozenset(MigrationContext.configure(conn).get_current_heads())
    known = {rev.revision for rev in scripts.walk_revisions()}
    return Schema(current, frozenset(scripts.get_heads()), tuple(sorted(current - known)))


def read_only_engine(url: str, sqlite_file: Path | None, timeout_s: float = 10.0) -> sa.Engine:
    """An engine that reads the database at `url` and changes nothing: a SQLite file (which
    must exist) is opened read-only, so it is neither switched to WAL nor given a -shm file;
    `immutable` takes no lock, unless a -wal file says a process has it open and the file alone
    may be behind."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreUnavailable(f"unsupported store URL scheme: {parsed.drivername}")
    if sqlite_file is None:
        if parsed.get_backend_name() == "sqlite":
            return sa.create_engine(url, poolclass=NullPool)  # in memory: new, and empty
        return sa.create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": max(1, int(timeout_s))}
        )
    live = sqlite_file.with_name(sqlite_file.name + "-wal").exists()
    target = f"file:{quote(str(sqlite_file.resolve()))}?{'mode=ro' if live else 'immutable=1'}"
    return sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(target, uri=True, check_same_thread=False),
        poolclass=NullPool,
    )


def schema_at(engine: sa.Engine) -> Schema:
    """`schema_of` the database `engine` reaches, on a connection of its own."""
    try:
        with engine.connect() as conn:
            return schema_of(conn)
    finally:
        engine.dispose()
