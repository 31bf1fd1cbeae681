"""The store on SQLAlchemy Core, one implementation for SQLite and PostgreSQL: its connection,
its transactions, and where the database's errors become orch's.

Every expiry is computed in SQL with the database's clock. Every write under a lease goes through
a guarded UPDATE on the job row (state='running' AND lease_token=:t) in the same transaction, so a
worker that lost its lease writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.pool import StaticPool

from orch.adapters.store import schema as t
from orch.adapters.store.revisions import alembic_config
from orch.adapters.store.sql.hearing import CHANGES_CHANNEL, listen, watch_file
from orch.adapters.store.sql.statements import Statements, insert_ignore
from orch.changes import Changes, Hearing
from orch.domain.errors import (
    Conflict,
    LeaseLost,
    OrchError,
    StoreUnavailable,
)
from orch.domain.ledger import Figure, Usage, UsageFrom
from orch.domain.machine import TaskChange
from orch.domain.metrics import FENCED_WRITES
from orch.domain.model import (
    Claim,
    Effect,
    Event,
    GateRecord,
    Job,
    Run,
    Task,
    Transition,
)
from orch.domain.states import (
    EffectState,
    JobState,
    RunOutcome,
    Stage,
    TaskStatus,
)

log = logging.getLogger("orch.store")
_MIGRATE_LOCK = 0x6F726368  # "orch": the advisory lock key migrations hold on PostgreSQL


def normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def sqlite_path(url: str) -> Path | None:
    u = sa.engine.make_url(normalise_url(url))
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


# what a connection the server dropped says when it is used, besides being invalidated: its
# rollback may fail before the pool learns it is gone
_DROPPED = (
    "terminating connection",
    "server closed the connection",
    "connection socket closed",
    "connection is closed",
    "another command is already in progress",
)


def _disconnected(exc: BaseException) -> bool:
    if getattr(exc, "connection_invalidated", False):
        return True
    text = str(exc).lower()
    return any(s in text for s in _DROPPED)


def _transient(exc: BaseException) -> bool:
    if _disconnected(exc):
        return True  # the server dropped a pooled connection: a fresh one will do
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "database is locked",
            "database is busy",
            "could not serialize",
            "deadlock detected",
            "uq_tasks_repo_slot",
        )
    )


class SqlBase:
    """The store. `url` is a SQLAlchemy URL: sqlite:///path, sqlite:// (memory), postgresql://..."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 10_000,
        synchronous: str = "NORMAL",
        echo: bool = False,
        pool_size: int = 10,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` (SQLite only) replaces the database's clock: a simulated one, for tests that
        move time forward past leases and timers without waiting."""
        self.url = normalise_url(url)
        self._listeners: list[Callable[[], None]] = []
        self.changes = Changes()
        self.hearing = Hearing(self.watch_changes)
        self._id = secrets.token_hex(8)  # tells this store's announcements from others'
        self._heard_count = 0  # the last count of announced changes this store knows of
        self._lock = threading.RLock()
        # an in-memory database is one shared connection: its users take turns
        self._serial = False
        # SQLite has one writer at a time; this process's writers queue on a lock rather than in
        # SQLite's busy handler, which sleeps in steps of up to 100 ms
        self._write_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        parsed = sa.engine.make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            kwargs: dict[str, Any] = {
                "connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
            }
            if path is None:
                kwargs["poolclass"] = StaticPool
                self._serial = True
            else:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot create {path.parent}: {exc.strerror}") from exc
            self.engine: Engine = sa.create_engine(self.url, echo=echo, **kwargs)
            self._write_lock = threading.Lock()
            self._install_sqlite_hooks(
                busy_timeout_ms, synchronous, in_memory=path is None, clock=clock
            )
            self._now_sql = sa.literal_column(
                "orch_now()" if clock else "((julianday('now') - 2440587.5) * 86400.0)"
            )
        elif self.dialect == "postgresql":
            if clock is not None:
                raise StoreUnavailable("a simulated clock needs SQLite")
            self.engine = sa.create_engine(
                self.url,
                echo=echo,
                # no ping before every checkout (a second round trip per transaction): pooled
                # connections are recycled, and a transaction that finds its connection dropped
                # is tried again on a fresh one (see _transient)
                pool_pre_ping=False,
                pool_recycle=300,
                pool_size=pool_size,
                max_overflow=20,
            )
            self._now_sql = sa.literal_column(
                "CAST(extract(epoch from clock_timestamp()) AS double precision)"
            )
        else:
            raise StoreUnavailable(f"unsupported store URL scheme: {parsed.drivername}")
        self.engine = self.engine.execution_options()
        self.sql = Statements(self._now_sql, self.dialect)
        try:
            # the first connection to a new SQLite file switches it to WAL, which waits for
            # processes migrating it at the same moment: a lock is worth a few more tries
            _when_free(lambda: self._probe())
        except DatabaseError as exc:  # unreachable, or a file that is not a database
            raise StoreUnavailable(
                f"cannot open the store at {self.display_url}: {_first_line(exc)}"
            ) from exc

    def _probe(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    @property
    def display_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def _install_sqlite_hooks(
        self,
        busy_timeout_ms: int,
        synchronous: str,
        in_memory: bool,
        clock: Callable[[], float] | None,
    ) -> None:
        @sa_event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # let SQLAlchemy's begin hook below issue BEGIN itself, so writes can be IMMEDIATE
            dbapi_conn.isolation_level = None
            if clock is not None:
                dbapi_conn.create_function("orch_now", 0, clock)
            cur = dbapi_conn.cursor()
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa_event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("orch_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    # -- plumbing ----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _write(
        self,
        fn: Callable[[Connection], Any],
        *,
        wakes: bool = False,
        duplicate: Callable[[], OrchError] | None = None,
        shown: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Run fn in one write transaction, retried at the transaction boundary when busy. The
        database's errors become orch's here, and only here: one it cannot reach or write is
        StoreUnavailable; a unique index refusing the write is `duplicate()` (what the caller
        says a second one means), or a Conflict. `shown(result)` says whether the write changed
        what a person is shown (default: it did); only those move `changes`."""
        delay = 0.005
        for attempt in range(12):
            committing = False
            try:
                with self._turn(), self._write_lock, self.engine.connect() as conn:
                    conn.execution_options(orch_write=True)
                    with conn.begin():
                        result = fn(conn)
                        shows = shown is None or shown(result)
                        announced = self._announce(conn) if shows else None
                        committing = True  # the block's end commits
                if announced is not None:
                    self._heard_count = max(self._heard_count, announced)
                if shows:
                    self.changes.bump()
                if wakes:
                    self._notify()
                return result
            except (OperationalError, IntegrityError) as exc:
                # a connection lost while committing may have committed: never written twice
                ambiguous = committing and _disconnected(exc)
                if _transient(exc) and not ambiguous and attempt < 11:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.25)
                    continue
                if isinstance(exc, OperationalError):
                    raise StoreUnavailable(f"store write failed: {_first_line(exc)}") from exc
                if duplicate is not None:
                    raise duplicate() from exc
                raise Conflict(f"the store refused the write: {_first_line(exc)}") from exc
            except DatabaseError as exc:  # a damaged file, say: nothing a retry mends
                raise StoreUnavailable(f"store write failed: {_first_line(exc)}") from exc
            except LeaseLost:
                self._count_apart(FENCED_WRITES)
                raise
        raise AssertionError("unreachable")

    def _announce(self, conn: Connection) -> int | None:
        """Let other processes hear that a change they would show is committing (see
        orch.adapters.store.sql.hearing); on SQLite, the count of such changes it makes."""
        if self.dialect == "postgresql":
            conn.execute(self.sql.notify, {"b_channel": CHANGES_CHANNEL, "b_id": self._id})
            return None
        return int(conn.execute(self.sql.count_change).scalar_one())

    def watch_changes(self, stop: threading.Event) -> None:
        """Until `stop`, move `changes` when another process commits a change a person would
        see. Blocks: run it on a thread of its own."""
        if self.dialect == "postgresql":
            dsn = sa.engine.make_url(self.url).set(drivername="postgresql")
            listen(dsn.render_as_string(hide_password=False), self._id, stop, self._heard)
            return
        path = sqlite_path(self.url)
        if path is not None:
            self._hear(quietly=True)  # what was announced before: already shown
            watch_file(path, stop, self._hear)

    def _heard(self) -> None:
        self.changes.bump(heard=True)

    def _hear(self, quietly: bool = False) -> None:
        """The SQLite file changed: a change to show if its count moved past what this store
        knows (its own writes, and renewals, do not move it)."""
        try:
            count = self._read(lambda conn: conn.execute(self.sql.change_count).scalar())
        except StoreUnavailable:
            return
        if count is not None and int(count) > self._heard_count:
            self._heard_count = int(count)
            if not quietly:
                self.changes.bump(heard=True)

    def _count_apart(self, name: str) -> None:
        """Add one to a counter in a transaction of its own: the one that was refused rolled
        back. Best effort: a store too far gone to count in does not hide what was refused."""
        try:
            self._write(lambda conn: self._count(conn, name, 1), shown=lambda _: False)
        except StoreUnavailable:
            log.warning("could not count %s", name)

    def _count(self, conn: Connection, name: str, n: int) -> None:
        upsert = _upsert(conn, t.counters).values(name=name, value=n)
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["name"], set_={"value": t.counters.c.value + upsert.excluded.value}
            )
        )

    def _read(self, fn: Callable[[Connection], Any]) -> Any:
        for attempt in range(3):
            try:
                with self._turn(), self.engine.connect() as conn, conn.begin():
                    return fn(conn)
            except (OperationalError, InterfaceError) as exc:
                if _disconnected(exc) and attempt < 2:
                    continue  # a dropped pooled connection: read again on a fresh one
                raise StoreUnavailable(f"store read failed: {_first_line(exc)}") from exc
            except DatabaseError as exc:
                raise StoreUnavailable(f"store read failed: {_first_line(exc)}") from exc
        raise AssertionError("unreachable")

    def _turn(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock if self._serial else contextlib.nullcontext()

    def now(self) -> float:
        return float(self._read(lambda c: c.execute(self.sql.now).scalar_one()))

    def _db_now(self, conn: Connection) -> float:
        return float(conn.execute(self.sql.now).scalar_one())

    def migrate(self) -> None:
        cfg = alembic_config()

        def upgrade() -> None:
            with self.engine.connect() as conn, _references_unchecked(conn):
                # processes that start together on a new store take turns: the first migrates,
                # the others then find it at head (SQLite: a write transaction from the start,
                # and more tries past the busy timeout; PostgreSQL: an advisory lock)
                conn.execution_options(orch_write=True)
                with conn.begin():
                    if self.dialect == "postgresql":
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK}
                        )
                    cfg.attributes["connection"] = conn
                    at = MigrationContext.configure(conn).get_current_heads()
                    alembic_command.upgrade(cfg, "head")
                    moved = MigrationContext.configure(conn).get_current_heads() != at
                    if self.dialect == "sqlite" and moved:
                        _check_references(conn)

        with self._lock:
            try:
                _when_free(upgrade)
            except (OperationalError, IntegrityError) as exc:
                raise StoreUnavailable(
                    f"cannot migrate {self.display_url}: {_first_line(exc)}"
                ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def _enqueue(
        self,
        conn: Connection,
        task_id: int,
        repo: str,
        version: int,
        stage: Stage,
        now: float,
        run_after: float | None = None,
    ) -> None:
        conn.execute(
            self.sql.enqueue,
            {
                "task_id": task_id,
                "repo": repo,
                "version": version,
                "stage": stage.value,
                "state": JobState.QUEUED.value,
                "attempt": 0,
                "lease_token": 0,
                "run_after": now if run_after is None else run_after,
                "created_at": now,
                "updated_at": now,
            },
        )

    def _for_task(self, table: sa.Table, task_id: int, order: str = "id") -> list[Any]:
        return self._read(  # type: ignore[no-any-return]
            lambda c: c.execute(
                sa.select(table).where(table.c.task_id == task_id).order_by(table.c[order])
            ).all()
        )

    def _guard(self, conn: Connection, claim: Claim) -> None:
        """The fencing check: touch the job row only while this claim still holds it."""
        self._fenced(
            conn.execute(self.sql.touch, {"b_job": claim.job_id, "b_token": claim.token}), claim
        )

    def _fenced(self, res: Any, claim: Claim) -> None:
        """A fenced write must touch its job's row: if it did not, the claim no longer holds
        the job, and nothing more is written under it."""
        if res.rowcount != 1:
            # counted by the chaos harness: a worker that lost its lease tried to write
            log.warning(
                "write fenced: job %s token %s of %s", claim.job_id, claim.token, claim.owner
            )
            raise LeaseLost(f"job {claim.job_id} is no longer held with token {claim.token}")

    def _end_job(
        self, conn: Connection, claim: Claim, now: float, values: dict[str, Any], uncount: bool
    ) -> None:
        """The last fenced write of a job: it gives the lease back, and closes any run of the
        job its worker could not close (a store outage, say), so no run stays open."""
        stmt = self.sql.end_job(tuple(sorted(values)), uncount)
        params = {f"b_{column}": value for column, value in values.items()}
        self._fenced(
            conn.execute(stmt, {"b_job": claim.job_id, "b_token": claim.token, **params}), claim
        )
        self._close_runs(
            conn, claim.job_id, RunOutcome.ERROR, "its worker could not record it", now
        )

    def _close_runs(
        self, conn: Connection, job_id: int, outcome: RunOutcome, why: str, now: float
    ) -> None:
        """Close the runs of a job that ended without its worker closing them; their usage is
        read back from their logs once their worker is known dead."""
        conn.execute(
            self.sql.close_runs,
            {
                "b_job": job_id,
                "b_now": now,
                "b_outcome": outcome.value,
                "b_detail": f"closed for its worker: {why}",
            },
        )


# -- helpers -------------------------------------------------------------------------------------


def _upsert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    return insert_ignore(conn.dialect.name, table)


def _job_end(change: TaskChange, rerun: bool, now: float) -> tuple[dict[str, Any], bool]:
    """The job row's values as a change ends it, and whether the attempt its claim counted is
    taken back; a job whose task gets no new version runs again at once when an event it should
    read arrived while it ran."""
    end = change.job
    assert end is not None
    state, due = end.state, end.due_in_s
    if rerun and change.write is None:
        state, due = JobState.QUEUED, 0.0
    values: dict[str, Any] = {"state": state.value}
    uncount = False
    if state == JobState.QUEUED:
        values["run_after"] = now + due
        if end.reset_attempts:
            values["attempt"] = 0
        else:
            uncount = not end.counts
    if end.error is not None:
        values["last_error"] = end.error[:2000]
    return values, uncount


@contextlib.contextmanager
def _references_unchecked(conn: Connection) -> Iterator[None]:
    """On SQLite, foreign keys unenforced on `conn` for what runs inside: a migration that
    rebuilds a table (batch mode: copy it, drop it, rename the copy) would otherwise fail on the
    rows that refer to it while it is dropped. SQLite's own way to alter a table; the pragma does
    nothing inside a transaction, so it is set on the driver's connection before one begins."""
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = conn.connection.dbapi_connection
    assert driver is not None
    driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        driver.execute("PRAGMA foreign_keys=ON")


def _check_references(conn: Connection) -> None:
    """Refuse to commit a migration that left a row referring to one that is not there."""
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
    if broken is not None:
        raise StoreUnavailable(
            f"migrating left {broken[0]} row {broken[1]} referring to a missing {broken[2]} row"
        )


def _when_free(fn: Callable[[], None], tries: int = 5) -> None:
    """Run fn, trying again with backoff while the database is locked by another process."""
    for attempt in range(tries):
        try:
            fn()
            return
        except OperationalError as exc:
            if not _transient(exc) or attempt == tries - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _record(cls: type[Any], row: Any, **converted: Any) -> Any:
    """A domain record from a row: columns that share a field's name, plus converted values."""
    data = row._mapping
    values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
    values.update(converted)
    return cls(**values)


def _task(r: Any, pipeline: dict[str, Any] | None = None) -> Task:
    """A task from its row and its pipeline: the row's own `pipeline` (joined from pipelines,
    see statements.tasks_with_pipelines), else `pipeline`, read apart for a list of rows."""
    return _record(  # type: ignore[no-any-return]
        Task,
        r,
        stage=Stage(r.stage),
        status=TaskStatus(r.status),
        budgets=r.budgets or {},
        **({} if pipeline is None else {"pipeline": pipeline}),
    )


def _transition(r: Any) -> Transition:
    return _record(  # type: ignore[no-any-return]
        Transition,
        r,
        from_stage=Stage(r.from_stage),
        to_stage=Stage(r.to_stage),
        from_status=TaskStatus(r.from_status),
        to_status=TaskStatus(r.to_status),
    )


def _gate(r: Any) -> GateRecord:
    return _record(GateRecord, r, stage=Stage(r.stage), passed=bool(r.passed))  # type: ignore[no-any-return]


def _effect(r: Any) -> Effect:
    return _record(Effect, r, state=EffectState(r.state), result=r.result or {})  # type: ignore[no-any-return]


def _event(r: Any) -> Event:
    return _record(Event, r, payload=r.payload or {})  # type: ignore[no-any-return]


def _run(r: Any) -> Run:
    return _record(  # type: ignore[no-any-return]
        Run,
        r,
        stage=Stage(r.stage),
        tools=r.tools or [],
        reported=Usage.from_dict(r.reported) if r.reported else None,
        retrying=r.retrying or "",
        usage_from=UsageFrom(Figure(r.tokens_from), Figure(r.usd_from or Figure.AGENT))
        if r.tokens_from
        else None,
    )


def _job(r: Any) -> Job:
    return _record(  # type: ignore[no-any-return]
        Job,
        r,
        stage=Stage(r.stage),
        state=JobState(r.state),
        token=r.lease_token,
        owner=r.lease_owner,
        expires_at=r.lease_expires_at,
    )
