"""The store: can orch open it, and is its schema at the head of orch's migrations. Looked at
without changing anything: a SQLite file that does not exist is not created, and a store is
never migrated (that is `orch migrate`'s work)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from orch.adapters.store.revisions import read_only_engine, schema_at
from orch.adapters.store.sql.base import normalise_url, sqlite_path
from orch.doctor.report import Check, fail, ok

WHAT = "store"


def check_store(url: str, timeout_s: float) -> Check:
    url = normalise_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except SQLAlchemyError as exc:
        return fail(WHAT, f"the store URL cannot be read: {exc}")
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            return ok(WHAT, f"{shown}: in memory, made afresh by each process")
        return _sqlite(path, shown)
    if backend == "postgresql":
        return _postgres(url, shown, timeout_s)
    return fail(WHAT, f"unsupported store URL scheme: {parsed.drivername}")


def _sqlite(path: Path, shown: str) -> Check:
    if not path.exists():
        return fail(WHAT, f"no database at {path}: run `orch migrate`")
    return _revision(read_only_engine("sqlite://", path), shown)


def _postgres(url: str, shown: str, timeout_s: float) -> Check:
    try:
        engine = read_only_engine(url, None, timeout_s)
    except ImportError as exc:
        return fail(
            WHAT,
            f"{shown}: the PostgreSQL driver is not installed ({exc}): install psycopg"
            " (pip install 'psycopg[binary]')",
        )
    return _revision(engine, shown)


def _revision(engine: sa.Engine, shown: str) -> Check:
    try:
        schema = schema_at(engine)
    except SQLAlchemyError as exc:
        return fail(WHAT, f"{shown} cannot be read: {_first_line(exc)}")
    current = ", ".join(sorted(schema.current))
    if not schema.current:
        return fail(WHAT, f"{shown} has no orch schema: run `orch migrate`")
    if schema.latest:
        return ok(WHAT, f"{shown} (schema at revision {current}, the latest)")
    if schema.newer:
        return fail(
            WHAT,
            f"{shown} is at revision {current}, which this orch does not know: a newer orch"
            " migrated it",
        )
    return fail(
        WHAT,
        f"{shown} is at revision {current}, behind {', '.join(sorted(schema.heads))}: run"
        " `orch migrate`",
    )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
