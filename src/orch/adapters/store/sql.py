"""The store on SQLAlchemy Core: one implementation for SQLite and PostgreSQL.

Every expiry is computed in SQL with the database's clock. Every write under a lease goes through
a guarded UPDATE on the job row (state='running' AND lease_token=:t) in the same transaction, so a
worker that lost its lease writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from orch import crashpoints
from orch.adapters.store import schema as t
from orch.domain import machine
from orch.domain.errors import Busy, Conflict, LeaseLost, NotFound, StoreUnavailable
from orch.domain.ledger import Usage
from orch.domain.machine import TaskChange
from orch.domain.model import (
    Claim,
    Effect,
    Event,
    GateRecord,
    Job,
    Run,
    Task,
    Ticket,
    Transition,
)
from orch.domain.naming import branch_for
from orch.domain.pipeline import Decision
from orch.domain.states import (
    TERMINAL_STATUSES,
    UNRESOLVED_EFFECT_STATES,
    EffectState,
    JobState,
    RunOutcome,
    Stage,
    TaskStatus,
)
from orch.ports import OverdueCancel, StateSummary, SweepResult

_MIGRATIONS = Path(__file__).with_name("migrations")
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


def _transient(exc: BaseException) -> bool:
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


class SqlStore:
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
                self.url, echo=echo, pool_pre_ping=True, pool_size=pool_size, max_overflow=20
            )
            self._now_sql = sa.literal_column(
                "CAST(extract(epoch from clock_timestamp()) AS double precision)"
            )
        else:
            raise StoreUnavailable(f"unsupported store URL scheme: {parsed.drivername}")
        self.engine = self.engine.execution_options()
        try:
            # the first connection to a new SQLite file switches it to WAL, which waits for
            # processes migrating it at the same moment: a lock is worth a few more tries
            _when_free(lambda: self._probe())
        except OperationalError as exc:
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

    def _write(self, fn: Callable[[Connection], Any], *, wakes: bool = False) -> Any:
        """Run fn in one write transaction, retried at the transaction boundary when busy."""
        delay = 0.005
        for attempt in range(12):
            try:
                with self._turn(), self._write_lock, self.engine.connect() as conn:
                    conn.execution_options(orch_write=True)
                    with conn.begin():
                        result = fn(conn)
                if wakes:
                    self._notify()
                return result
            except (OperationalError, IntegrityError) as exc:
                if not _transient(exc) or attempt == 11:
                    if isinstance(exc, OperationalError):
                        raise StoreUnavailable(f"store write failed: {_first_line(exc)}") from exc
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        raise AssertionError("unreachable")

    def _read(self, fn: Callable[[Connection], Any]) -> Any:
        try:
            with self._turn(), self.engine.connect() as conn, conn.begin():
                return fn(conn)
        except OperationalError as exc:
            raise StoreUnavailable(f"store read failed: {_first_line(exc)}") from exc

    def _turn(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock if self._serial else contextlib.nullcontext()

    def now(self) -> float:
        return float(self._read(lambda c: c.execute(sa.select(self._now_sql)).scalar_one()))

    def _db_now(self, conn: Connection) -> float:
        return float(conn.execute(sa.select(self._now_sql)).scalar_one())

    def migrate(self) -> None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))

        def upgrade() -> None:
            with self.engine.connect() as conn:
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
                    alembic_command.upgrade(cfg, "head")

        with self._lock:
            try:
                _when_free(upgrade)
            except (OperationalError, IntegrityError) as exc:
                raise StoreUnavailable(
                    f"cannot migrate {self.display_url}: {_first_line(exc)}"
                ) from exc

    def close(self) -> None:
        self.engine.dispose()

    # -- tickets -----------------------------------------------------------------------------

    def _new_ticket(
        self, conn: Connection, repo: str, prefix: str, title: str, body: str
    ) -> Ticket:
        now = self._db_now(conn)
        n = conn.execute(
            _upsert(conn, t.ticket_sequences)
            .values(prefix=prefix, last=1)
            .on_conflict_do_update(
                index_elements=[t.ticket_sequences.c.prefix],
                set_={"last": t.ticket_sequences.c.last + 1},
            )
            .returning(t.ticket_sequences.c.last)
        ).scalar_one()
        key = f"{prefix}-{n}"
        conn.execute(
            sa.insert(t.tickets).values(
                key=key, repo=repo, title=title, body=body, url="", created_at=now
            )
        )
        return Ticket(key=key, repo=repo, title=title, body=body)

    def file_ticket(self, repo: str, prefix: str, title: str, body: str) -> Ticket:
        return self._write(  # type: ignore[no-any-return]
            lambda conn: self._new_ticket(conn, repo, prefix, title, body)
        )

    def file_and_create(
        self,
        repo: str,
        prefix: str,
        title: str,
        body: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task:
        """File a ticket and start its task in one transaction: both or neither."""

        def fn(conn: Connection) -> int:
            ticket = self._new_ticket(conn, repo, prefix, title, body)
            return self._create_task(conn, ticket, branch_for(ticket.key), pipeline, first, actor)

        return self.get_task(self._write(fn, wakes=first.status == TaskStatus.ACTIVE))

    def get_ticket(self, key: str) -> Ticket | None:
        row = self._read(
            lambda c: c.execute(sa.select(t.tickets).where(t.tickets.c.key == key)).first()
        )
        if row is None:
            return None
        return Ticket(key=row.key, repo=row.repo, title=row.title, body=row.body, url=row.url)

    # -- tasks -------------------------------------------------------------------------------

    def create_task(
        self, ticket: Ticket, branch: str, pipeline: dict[str, Any], first: Decision, actor: str
    ) -> Task:
        try:
            task_id = self._write(
                lambda conn: self._create_task(conn, ticket, branch, pipeline, first, actor),
                wakes=first.status == TaskStatus.ACTIVE,
            )
        except IntegrityError as exc:
            raise Conflict(f"ticket {ticket.key} already has a task that is not cancelled") from exc
        return self.get_task(task_id)

    def _create_task(
        self,
        conn: Connection,
        ticket: Ticket,
        branch: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> int:
        now = self._db_now(conn)
        write = machine.create(first, actor)
        task_id = conn.execute(
            sa.insert(t.tasks)
            .values(
                key=ticket.key,
                repo=ticket.repo,
                title=ticket.title,
                body=ticket.body,
                stage=write.stage.value,
                status=write.status.value,
                version=1,
                branch=branch,
                pipeline=pipeline,
                waiting_for=write.waiting_for,
                created_at=now,
                updated_at=now,
            )
            .returning(t.tasks.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(t.transitions).values(
                task_id=task_id,
                version=1,
                from_stage=write.from_stage.value,
                to_stage=write.stage.value,
                from_status=write.from_status.value,
                to_status=write.status.value,
                actor=write.actor,
                reason=write.reason,
                at=now,
            )
        )
        due = machine.first_job_in_s(first)
        if due is not None:
            self._enqueue(conn, task_id, ticket.repo, 1, write.stage, now, now + due)
        return int(task_id)

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
        stmt = _insert_ignore(conn, t.jobs).values(
            task_id=task_id,
            repo=repo,
            version=version,
            stage=stage.value,
            state=JobState.QUEUED.value,
            attempt=0,
            lease_token=0,
            run_after=now if run_after is None else run_after,
            created_at=now,
            updated_at=now,
        )
        conn.execute(stmt)

    def get_task(self, task_id: int) -> Task:
        row = self._read(
            lambda c: c.execute(sa.select(t.tasks).where(t.tasks.c.id == task_id)).first()
        )
        if row is None:
            raise NotFound(f"no task with id {task_id}")
        return _task(row)

    def find_task(self, key: str) -> Task | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.tasks)
                .where(t.tasks.c.key == key)
                .order_by(t.tasks.c.id.desc())
                .limit(1)
            ).first()
        )
        return _task(row) if row is not None else None

    def list_tasks(self, limit: int = 100, status: TaskStatus | None = None) -> list[Task]:
        query = sa.select(t.tasks).order_by(t.tasks.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(t.tasks.c.status == status.value)
        rows = self._read(lambda c: c.execute(query).all())
        return [_task(r) for r in rows]

    def _for_task(self, table: sa.Table, task_id: int, order: str = "id") -> list[Any]:
        return self._read(  # type: ignore[no-any-return]
            lambda c: c.execute(
                sa.select(table).where(table.c.task_id == task_id).order_by(table.c[order])
            ).all()
        )

    def transitions(self, task_id: int) -> list[Transition]:
        return [_transition(r) for r in self._for_task(t.transitions, task_id, "version")]

    def gate_records(self, task_id: int) -> list[GateRecord]:
        return [_gate(r) for r in self._for_task(t.gate_verdicts, task_id)]

    def effects(self, task_id: int) -> list[Effect]:
        return [_effect(r) for r in self._for_task(t.effects, task_id)]

    def runs(self, task_id: int) -> list[Run]:
        return [_run(r) for r in self._for_task(t.runs, task_id)]

    def events(self, task_id: int) -> list[Event]:
        return [_event(r) for r in self._for_task(t.events, task_id)]

    def jobs(self, task_id: int) -> list[Job]:
        return [_job(r) for r in self._for_task(t.jobs, task_id)]

    def summary(self, recent: int = 20) -> StateSummary:
        def fn(c: Connection) -> StateSummary:
            by_stage = {
                r[0]: int(r[1])
                for r in c.execute(
                    sa.select(t.tasks.c.stage, sa.func.count()).group_by(t.tasks.c.stage)
                )
            }
            by_status = {
                r[0]: int(r[1])
                for r in c.execute(
                    sa.select(t.tasks.c.status, sa.func.count()).group_by(t.tasks.c.status)
                )
            }
            running = [
                {
                    "task": r.key,
                    "stage": r.stage,
                    "attempt": r.attempt,
                    "owner": r.lease_owner,
                    "expires_at": r.lease_expires_at,
                }
                for r in c.execute(
                    sa.select(
                        t.tasks.c.key,
                        t.jobs.c.stage,
                        t.jobs.c.attempt,
                        t.jobs.c.lease_owner,
                        t.jobs.c.lease_expires_at,
                    )
                    .join(t.tasks, t.tasks.c.id == t.jobs.c.task_id)
                    .where(t.jobs.c.state == JobState.RUNNING.value)
                    .order_by(t.jobs.c.id)
                    .limit(200)
                )
            ]
            recent_rows = [
                {
                    "task": r.key,
                    "version": r.version,
                    "from": f"{r.from_stage}/{r.from_status}",
                    "to": f"{r.to_stage}/{r.to_status}",
                    "actor": r.actor,
                    "reason": r.reason,
                    "at": r.at,
                }
                for r in c.execute(
                    sa.select(
                        t.tasks.c.key,
                        t.transitions.c.version,
                        t.transitions.c.from_stage,
                        t.transitions.c.to_stage,
                        t.transitions.c.from_status,
                        t.transitions.c.to_status,
                        t.transitions.c.actor,
                        t.transitions.c.reason,
                        t.transitions.c.at,
                    )
                    .join(t.tasks, t.tasks.c.id == t.transitions.c.task_id)
                    .order_by(t.transitions.c.id.desc())
                    .limit(recent)
                )
            ]
            by_repo = {
                r.repo: Usage(
                    int(r.tokens_in),
                    int(r.tokens_out),
                    int(r.cache_read),
                    int(r.cache_write),
                    float(r.cost_usd),
                )
                for r in c.execute(
                    sa.select(
                        t.tasks.c.repo,
                        sa.func.sum(t.tasks.c.tokens_in).label("tokens_in"),
                        sa.func.sum(t.tasks.c.tokens_out).label("tokens_out"),
                        sa.func.sum(t.tasks.c.cache_read).label("cache_read"),
                        sa.func.sum(t.tasks.c.cache_write).label("cache_write"),
                        sa.func.sum(t.tasks.c.cost_usd).label("cost_usd"),
                    ).group_by(t.tasks.c.repo)
                )
            }
            return StateSummary(
                by_stage=by_stage,
                by_status=by_status,
                running=running,
                recent=recent_rows,
                spent=sum(by_repo.values(), Usage()),
                spent_by_repo=by_repo,
            )

        return self._read(fn)  # type: ignore[no-any-return]

    # -- leases ------------------------------------------------------------------------------

    def claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None:
        def fn(conn: Connection) -> Claim | None:
            now = self._db_now(conn)
            candidates = conn.execute(
                sa.select(
                    t.jobs.c.id,
                    t.jobs.c.repo,
                    t.jobs.c.task_id,
                    t.tasks.c.slot,
                    t.tasks.c.status,
                    t.tasks.c.cancel_requested_at,
                )
                .join(t.tasks, t.tasks.c.id == t.jobs.c.task_id)
                .where(t.jobs.c.state == JobState.QUEUED.value, t.jobs.c.run_after <= now)
                .order_by(t.jobs.c.run_after, t.jobs.c.id)
                .limit(64)
                .with_for_update(skip_locked=True, of=t.jobs)
            ).all()
            if not candidates:
                return None
            repos = {c.repo for c in candidates}
            used: dict[str, set[int]] = {r: set() for r in repos}
            for r in conn.execute(
                sa.select(t.tasks.c.repo, t.tasks.c.slot).where(
                    t.tasks.c.slot.is_not(None), t.tasks.c.repo.in_(repos)
                )
            ):
                used[r.repo].add(r.slot)
            for cand in candidates:
                # reading a waiting or parked task's inbox, or applying a STOP, is not work on
                # the repository: it needs no slot, so a full repository never delays it
                needs_slot = machine.needs_slot(
                    TaskStatus(cand.status), cand.cancel_requested_at is not None
                )
                if needs_slot and cand.slot is None:
                    # a task takes a repository slot at its first claim and keeps it while
                    # active; the unique index on (repo, slot) makes a race fail closed
                    limit = max(repo_limit(cand.repo), 0)
                    free = next((s for s in range(limit) if s not in used[cand.repo]), None)
                    if free is None:
                        continue
                    took = conn.execute(
                        sa.update(t.tasks)
                        .where(t.tasks.c.id == cand.task_id, t.tasks.c.slot.is_(None))
                        .values(slot=free, slot_since=now)
                    )
                    if took.rowcount != 1:
                        continue
                    used[cand.repo].add(free)
                    crashpoints.hit("slot.acquired")
                row = conn.execute(
                    sa.update(t.jobs)
                    .where(t.jobs.c.id == cand.id, t.jobs.c.state == JobState.QUEUED.value)
                    .values(
                        state=JobState.RUNNING.value,
                        attempt=t.jobs.c.attempt + 1,
                        lease_token=t.jobs.c.lease_token + 1,
                        lease_owner=owner,
                        lease_expires_at=self._now_sql + ttl_s,
                        updated_at=now,
                    )
                    .returning(
                        t.jobs.c.id,
                        t.jobs.c.task_id,
                        t.jobs.c.version,
                        t.jobs.c.stage,
                        t.jobs.c.attempt,
                        t.jobs.c.lease_token,
                        t.jobs.c.last_error,
                    )
                ).first()
                if row is not None:
                    return Claim(
                        job_id=row.id,
                        task_id=row.task_id,
                        version=row.version,
                        stage=Stage(row.stage),
                        attempt=row.attempt,
                        token=row.lease_token,
                        owner=owner,
                        last_error=row.last_error,
                    )
            return None

        return self._write(fn)  # type: ignore[no-any-return]

    def _guard(self, conn: Connection, claim: Claim, **values: Any) -> None:
        """The fencing check: touch the job row only while this claim still holds it."""
        res = conn.execute(
            sa.update(t.jobs)
            .where(
                t.jobs.c.id == claim.job_id,
                t.jobs.c.state == JobState.RUNNING.value,
                t.jobs.c.lease_token == claim.token,
            )
            .values(updated_at=self._now_sql, **values)
        )
        if res.rowcount != 1:
            # counted by the chaos harness: a worker that lost its lease tried to write
            log.warning(
                "write fenced: job %s token %s of %s", claim.job_id, claim.token, claim.owner
            )
            raise LeaseLost(f"job {claim.job_id} is no longer held with token {claim.token}")

    def _end_job(self, conn: Connection, claim: Claim, now: Any, **values: Any) -> None:
        """The last fenced write of a job: it gives the lease back, and closes any run of the
        job its worker could not close (a store outage, say), so no run stays open."""
        self._guard(conn, claim, lease_owner=None, lease_expires_at=None, **values)
        _close_runs(conn, claim.job_id, RunOutcome.ERROR, "its worker could not record it", now)

    def renew(self, claim: Claim, ttl_s: float) -> None:
        self._write(lambda c: self._guard(c, claim, lease_expires_at=self._now_sql + ttl_s))

    def unaccounted_runs(self) -> list[Run]:
        """Runs not in the ledger: running now, or their worker died mid-run (and the run may
        have been closed for it since)."""
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.runs).where(t.runs.c.accounted_at.is_(None)).order_by(t.runs.c.id)
            ).all()
        )
        return [_run(r) for r in rows]

    def lease_owners(self) -> list[str]:
        """The incarnations holding running jobs."""
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.jobs.c.lease_owner)
                .where(t.jobs.c.state == JobState.RUNNING.value)
                .distinct()
            ).all()
        )
        return sorted(r[0] for r in rows if r[0])

    def void_leases(self, owner: str) -> int:
        """Expire every lease `owner` holds now: it is known dead, so its jobs need not wait out
        their TTL. The sweep that follows requeues them (or dead-letters them)."""

        def fn(conn: Connection) -> int:
            now = self._db_now(conn)
            res = conn.execute(
                sa.update(t.jobs)
                .where(
                    t.jobs.c.state == JobState.RUNNING.value,
                    t.jobs.c.lease_owner == owner,
                    t.jobs.c.lease_expires_at >= now,
                )
                .values(lease_expires_at=now - 1.0, updated_at=now)
            )
            return int(res.rowcount)

        return self._write(fn)  # type: ignore[no-any-return]

    def sweep(self, max_attempts: int) -> SweepResult:
        def fn(conn: Connection) -> SweepResult:
            now = self._db_now(conn)
            expired = conn.execute(
                sa.select(
                    t.jobs.c.id,
                    t.jobs.c.task_id,
                    t.jobs.c.version,
                    t.jobs.c.lease_token,
                    t.jobs.c.attempt,
                ).where(t.jobs.c.state == JobState.RUNNING.value, t.jobs.c.lease_expires_at < now)
            ).all()
            requeued = dead = 0
            for job in expired:
                end = machine.lease_expired(job.attempt, max_attempts)
                res = conn.execute(
                    sa.update(t.jobs)
                    .where(
                        t.jobs.c.id == job.id,
                        t.jobs.c.state == JobState.RUNNING.value,
                        t.jobs.c.lease_token == job.lease_token,
                        t.jobs.c.lease_expires_at < now,
                    )
                    .values(
                        state=end.state.value,
                        lease_owner=None,
                        lease_expires_at=None,
                        run_after=now,
                        last_error=end.error or "",
                        updated_at=now,
                    )
                )
                if res.rowcount != 1:
                    continue
                _close_runs(conn, job.id, RunOutcome.LEASE_LOST, "its worker's lease expired", now)
                if end.state == JobState.DEAD:
                    dead += 1
                    why = f"lease expired {job.attempt} times"
                    self._park_in_txn(conn, job.task_id, job.version, why, "sweeper")
                else:
                    requeued += 1
            return SweepResult(requeued=requeued, dead=dead)

        result: SweepResult = self._write(fn)
        if result.requeued or result.dead:
            self._notify()
        return result

    def _park_in_txn(
        self, conn: Connection, task_id: int, version: int, reason: str, actor: str
    ) -> bool:
        row = conn.execute(
            sa.select(t.tasks).where(t.tasks.c.id == task_id, t.tasks.c.version == version)
        ).first()
        if row is None:
            return False
        effects = conn.execute(sa.select(t.effects).where(t.effects.c.task_id == task_id)).all()
        held = any(machine.holds_a_slot(_effect(e)) for e in effects)
        self._apply(conn, task_id, version, machine.park(_task(row), reason, actor, held))
        return True

    def overdue_cancels(self, bound_s: float) -> list[OverdueCancel]:
        """Tasks whose STOP has waited longer than `bound_s`."""

        def fn(conn: Connection) -> list[OverdueCancel]:
            now = self._db_now(conn)
            # a live lease holds it, or a queued job (one just requeued from a dead worker, say)
            # will: either applies the STOP once the effect resolves
            held = (
                sa.select(t.jobs.c.id)
                .where(
                    t.jobs.c.task_id == t.tasks.c.id,
                    sa.or_(
                        sa.and_(
                            t.jobs.c.state == JobState.RUNNING.value,
                            t.jobs.c.lease_expires_at >= now,
                        ),
                        t.jobs.c.state == JobState.QUEUED.value,
                    ),
                )
                .exists()
            )
            in_flight = (
                sa.select(t.effects.c.id)
                .where(
                    t.effects.c.task_id == t.tasks.c.id,
                    t.effects.c.state.in_([st.value for st in UNRESOLVED_EFFECT_STATES]),
                    t.effects.c.kind != "notify",
                )
                .exists()
            )
            rows = conn.execute(
                sa.select(
                    t.tasks.c.id,
                    t.tasks.c.key,
                    t.tasks.c.version,
                    t.tasks.c.status,
                    held,
                    in_flight,
                ).where(
                    t.tasks.c.cancel_requested_at < now - bound_s,
                    t.tasks.c.status.not_in([st.value for st in TERMINAL_STATUSES]),
                )
            ).all()
            return [
                OverdueCancel(
                    r[0],
                    r[1],
                    r[2],
                    r[3] == TaskStatus.NEEDS_OPERATOR.value,
                    bool(r[4]),
                    bool(r[5]),
                )
                for r in rows
            ]

        return self._read(fn)  # type: ignore[no-any-return]

    def park(self, task_id: int, version: int, reason: str, actor: str) -> bool:
        """Park a task no worker holds (a guarded write on its version)."""

        return self._write(  # type: ignore[no-any-return]
            lambda conn: self._park_in_txn(conn, task_id, version, reason, actor), wakes=True
        )

    def next_run_after(self) -> float | None:
        value = self._read(
            lambda c: c.execute(
                sa.select(sa.func.min(t.jobs.c.run_after)).where(
                    t.jobs.c.state == JobState.QUEUED.value
                )
            ).scalar()
        )
        return float(value) if value is not None else None

    # -- writes under a lease ----------------------------------------------------------------

    def apply(self, claim: Claim, change: TaskChange) -> None:
        """Write what the domain decided, in one transaction: the job's end under the claim's
        fencing token, the stage write as a compare-and-set on (task, stage, version) with its
        history row, the events it answers, and the next job."""
        self._write(
            lambda conn: self._apply(conn, claim.task_id, claim.version, change, claim), wakes=True
        )
        if change.write is not None:
            crashpoints.hit("next_job.enqueued")
        if change.releases_slot:
            crashpoints.hit("slot.released")

    def _apply(
        self,
        conn: Connection,
        task_id: int,
        version: int,
        change: TaskChange,
        claim: Claim | None = None,
    ) -> None:
        now = self._db_now(conn)
        if change.read:
            conn.execute(
                sa.update(t.events)
                .where(t.events.c.id.in_(list(change.read)), t.events.c.processed_at.is_(None))
                .values(processed_at=now)
            )
        # only a job of the task's current version runs again for its events: a stale one that
        # did would find the task moved on, and run again, for ever
        rerun = (
            bool(change.rerun_if_unread)
            and conn.execute(
                sa.select(t.tasks.c.version).where(t.tasks.c.id == task_id)
            ).scalar_one()
            == version
            and conn.execute(
                sa.select(t.events.c.id)
                .where(
                    t.events.c.task_id == task_id,
                    t.events.c.processed_at.is_(None),
                    t.events.c.kind.in_(sorted(change.rerun_if_unread)),
                )
                .limit(1)
            ).first()
            is not None
        )
        if claim is not None and change.job is not None:
            self._end_job(conn, claim, now, **_job_values(change, rerun, now))
        write = change.write
        if write is None:
            if change.free_slot:
                conn.execute(
                    sa.update(t.tasks)
                    .where(t.tasks.c.id == task_id, t.tasks.c.version == version)
                    .values(**_slot_freed(now))
                )
            return
        values: dict[str, Any] = {
            "stage": write.stage.value,
            "status": write.status.value,
            "version": version + 1,
            "waiting_for": write.waiting_for,
            "status_reason": write.reason,
            "feedback": write.feedback,
            "rework_rounds": write.rework_rounds,
            "updated_at": now,
        }
        if write.status != TaskStatus.ACTIVE:
            values.update(_slot_freed(now))  # a waiting or parked task holds no slot
        if write.clear_cancel:
            values["cancel_requested_at"] = None
        if write.budgets is not None:
            values["budgets"] = write.budgets
        res = conn.execute(
            sa.update(t.tasks)
            .where(
                t.tasks.c.id == task_id,
                t.tasks.c.stage == write.from_stage.value,
                t.tasks.c.version == version,
            )
            .values(**values)
            .returning(t.tasks.c.repo)
        ).first()
        if res is None:
            raise Conflict(f"task {task_id} is not at {write.from_stage} version {version}")
        crashpoints.hit("stage.cas")  # inside the transaction: a crash here rolls it back
        conn.execute(
            sa.insert(t.transitions).values(
                task_id=task_id,
                version=version + 1,
                from_stage=write.from_stage.value,
                to_stage=write.stage.value,
                from_status=write.from_status.value,
                to_status=write.status.value,
                actor=write.actor,
                reason=write.reason,
                at=now,
            )
        )
        due = 0.0 if rerun else change.next_job_in_s
        if due is not None:
            self._enqueue(conn, task_id, res.repo, version + 1, write.stage, now, now + due)

    def record_gate(self, claim: Claim, record: GateRecord) -> GateRecord:
        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            conn.execute(
                _insert_ignore(conn, t.gate_verdicts).values(
                    task_id=record.task_id,
                    version=record.version,
                    gate=record.gate,
                    head_sha=record.head_sha,
                    stage=record.stage.value,
                    passed=record.passed,
                    reason=record.reason,
                    at=self._now_sql,
                )
            )

        self._write(fn)
        found = self.find_gate(record.task_id, record.version, record.gate, record.head_sha)
        assert found is not None
        return found

    def find_gate(self, task_id: int, version: int, gate: str, head_sha: str) -> GateRecord | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.gate_verdicts).where(
                    t.gate_verdicts.c.task_id == task_id,
                    t.gate_verdicts.c.version == version,
                    t.gate_verdicts.c.gate == gate,
                    t.gate_verdicts.c.head_sha == head_sha,
                )
            ).first()
        )
        return _gate(row) if row is not None else None

    def begin_effect(
        self, claim: Claim, key: str, kind: str, repo: str, precondition: str
    ) -> Effect:
        """Record the intent to act. An effect that FAILED (known not to have happened) is
        re-armed for another try; one that exists in any other state is returned as it is."""

        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            inserted = conn.execute(
                _insert_ignore(conn, t.effects)
                .values(
                    key=key,
                    task_id=claim.task_id,
                    repo=repo,
                    kind=str(kind),  # an EffectKind is stored as its value
                    state=EffectState.INITIATED.value,
                    precondition=precondition,
                    result={},
                    lease_token=claim.token,
                    created_at=self._now_sql,
                    updated_at=self._now_sql,
                )
                .returning(t.effects.c.id)
            ).first()
            if inserted is not None:
                return
            existing = conn.execute(
                sa.select(t.effects.c.state).where(t.effects.c.key == key)
            ).scalar()
            if existing is None:
                raise Busy(f"another {kind} is in flight for {repo}")
            if existing == EffectState.FAILED.value:
                conn.execute(
                    sa.update(t.effects)
                    .where(t.effects.c.key == key, t.effects.c.state == EffectState.FAILED.value)
                    .values(
                        state=EffectState.INITIATED.value,
                        precondition=precondition,
                        result={},
                        lease_token=claim.token,
                        updated_at=self._now_sql,
                    )
                )

        try:
            self._write(fn)
        except IntegrityError as exc:
            raise Busy(f"another {kind} is in flight for {repo}") from exc
        crashpoints.hit("effect.initiated")
        found = self.get_effect(key)
        assert found is not None
        return found

    def finish_effect(
        self, claim: Claim, key: str, state: EffectState, result: Mapping[str, Any]
    ) -> Effect:
        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            res = conn.execute(
                sa.update(t.effects)
                .where(
                    t.effects.c.key == key,
                    t.effects.c.state.in_([st.value for st in UNRESOLVED_EFFECT_STATES]),
                )
                .values(
                    state=state.value,
                    result=dict(result),
                    lease_token=claim.token,
                    updated_at=self._now_sql,
                )
            )
            if res.rowcount != 1:
                raise Conflict(f"effect {key} is already resolved")

        self._write(fn)
        if state == EffectState.SUCCEEDED:
            crashpoints.hit("effect.succeeded")
        found = self.get_effect(key)
        assert found is not None
        return found

    def latest_effect(
        self, repo: str, kinds: Sequence[str], state: EffectState = EffectState.SUCCEEDED
    ) -> Effect | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.effects)
                .where(
                    t.effects.c.repo == repo,
                    t.effects.c.kind.in_(list(kinds)),
                    t.effects.c.state == state.value,
                )
                .order_by(t.effects.c.updated_at.desc(), t.effects.c.id.desc())
                .limit(1)
            ).first()
        )
        return _effect(row) if row is not None else None

    def get_effect(self, key: str) -> Effect | None:
        row = self._read(
            lambda c: c.execute(sa.select(t.effects).where(t.effects.c.key == key)).first()
        )
        return _effect(row) if row is not None else None

    def start_run(self, claim: Claim, agent: str, pid: int | None, log_path: str) -> int:
        def fn(conn: Connection) -> int:
            self._guard(conn, claim)
            return int(
                conn.execute(
                    sa.insert(t.runs)
                    .values(
                        task_id=claim.task_id,
                        job_id=claim.job_id,
                        stage=claim.stage.value,
                        attempt=claim.attempt,
                        agent=agent,
                        pid=pid,
                        log_path=log_path,
                        owner=claim.owner,
                        started_at=self._now_sql,
                    )
                    .returning(t.runs.c.id)
                ).scalar_one()
            )

        return self._write(fn)  # type: ignore[no-any-return]

    def finish_run(
        self,
        claim: Claim,
        run_id: int,
        exit_code: int | None,
        usage: Usage,
        outcome: RunOutcome = RunOutcome.EXITED,
        *,
        session: str | None = None,
        detail: str = "",
        tools: Sequence[str] = (),
        reported: Usage | None = None,
    ) -> None:
        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            conn.execute(
                sa.update(t.runs)
                .where(t.runs.c.id == run_id)
                .values(
                    exit_code=exit_code,
                    outcome=outcome.value,
                    ended_at=self._now_sql,
                    session=session,
                    detail=detail[:2000],
                    tools=list(tools)[:500] or None,
                    reported=reported.as_dict() if reported else None,
                )
            )
            self._account(conn, claim.task_id, run_id, usage)

        self._write(fn)

    def record_usage(self, task_id: int, run_id: int, usage: Usage) -> None:
        """The ledger of a run whose worker lost its lease, or died (read back from its log).
        Not fenced, because the money was spent whoever holds the task now; the run itself
        stays open, as its worker lost it."""
        self._write(lambda conn: self._account(conn, task_id, run_id, usage))

    def _account(self, conn: Connection, task_id: int, run_id: int, usage: Usage) -> None:
        # a run's usage is counted once, into the run and into its task's totals
        res = conn.execute(
            sa.update(t.runs)
            .where(t.runs.c.id == run_id, t.runs.c.accounted_at.is_(None))
            .values(
                accounted_at=self._now_sql,
                tokens_in=usage.tokens_in,
                tokens_out=usage.tokens_out,
                cache_read=usage.cache_read,
                cache_write=usage.cache_write,
                cost_usd=usage.cost_usd,
            )
        )
        if res.rowcount != 1:
            return
        conn.execute(
            sa.update(t.tasks)
            .where(t.tasks.c.id == task_id)
            .values(
                tokens_in=t.tasks.c.tokens_in + usage.tokens_in,
                tokens_out=t.tasks.c.tokens_out + usage.tokens_out,
                cache_read=t.tasks.c.cache_read + usage.cache_read,
                cache_write=t.tasks.c.cache_write + usage.cache_write,
                cost_usd=t.tasks.c.cost_usd + usage.cost_usd,
            )
        )

    def spending(self, task_id: int) -> dict[Stage, Usage]:
        """What the task's agent runs have spent, per stage, over all versions and attempts."""
        rows = self._read(
            lambda c: c.execute(
                sa.select(
                    t.runs.c.stage,
                    sa.func.sum(t.runs.c.tokens_in),
                    sa.func.sum(t.runs.c.tokens_out),
                    sa.func.sum(t.runs.c.cache_read),
                    sa.func.sum(t.runs.c.cache_write),
                    sa.func.sum(t.runs.c.cost_usd),
                )
                .where(t.runs.c.task_id == task_id)
                .group_by(t.runs.c.stage)
            ).all()
        )
        return {
            Stage(r[0]): Usage(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))
            for r in rows
        }

    # -- the inbox ---------------------------------------------------------------------------

    def append_event(
        self,
        task_id: int,
        key: str,
        kind: str,
        actor: str,
        payload: Mapping[str, Any],
        *,
        cancel: bool = False,
    ) -> bool:
        """Put an event in the task's inbox, once per key, and make sure a worker will read it.
        With `cancel`, also raise the task's cancel flag, which a running job sees on its next
        heartbeat."""

        def fn(conn: Connection) -> bool:
            now = self._db_now(conn)
            inserted = conn.execute(
                _insert_ignore(conn, t.events)
                .values(
                    task_id=task_id,
                    key=key,
                    kind=str(kind),  # an EventKind is stored as its value
                    actor=actor,
                    payload=dict(payload),
                    created_at=now,
                )
                .returning(t.events.c.id)
            ).first()
            if inserted is None:
                return False
            task = conn.execute(
                sa.select(
                    t.tasks.c.repo, t.tasks.c.status, t.tasks.c.version, t.tasks.c.stage
                ).where(t.tasks.c.id == task_id)
            ).one()
            effect = machine.on_event(TaskStatus(task.status), cancel)
            if effect.raise_cancel:
                conn.execute(
                    sa.update(t.tasks)
                    .where(t.tasks.c.id == task_id, t.tasks.c.cancel_requested_at.is_(None))
                    .values(cancel_requested_at=now)
                )
            if cancel:
                # inside the transaction: a crash here loses the STOP, and its caller sees an error
                crashpoints.hit("cancel.flag")
            # give the task a job so a worker reads the inbox, or wake the one an earlier event
            # at this version had and that found nothing to act on, or bring a timer set for
            # later forward to now
            if effect.wake:
                self._enqueue(conn, task_id, task.repo, task.version, Stage(task.stage), now)
                conn.execute(
                    sa.update(t.jobs)
                    .where(
                        t.jobs.c.task_id == task_id,
                        t.jobs.c.version == task.version,
                        sa.or_(
                            t.jobs.c.state == JobState.SUPERSEDED.value,
                            sa.and_(
                                t.jobs.c.state == JobState.QUEUED.value, t.jobs.c.run_after > now
                            ),
                        ),
                    )
                    .values(state=JobState.QUEUED.value, run_after=now, updated_at=now)
                )
            return True

        stored: bool = self._write(fn, wakes=True)
        if stored:
            crashpoints.hit("inbox.event")
        return stored

    def cancel_requested(self, task_id: int) -> bool:
        return bool(
            self._read(
                lambda c: c.execute(
                    sa.select(t.tasks.c.cancel_requested_at.is_not(None)).where(
                        t.tasks.c.id == task_id
                    )
                ).scalar()
            )
        )

    def pending_events(self, task_id: int) -> list[Event]:
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.events)
                .where(t.events.c.task_id == task_id, t.events.c.processed_at.is_(None))
                .order_by(t.events.c.id)
            ).all()
        )
        return [_event(r) for r in rows]

    def mark_events(self, claim: Claim, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return

        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            conn.execute(
                sa.update(t.events)
                .where(t.events.c.id.in_(list(event_ids)), t.events.c.processed_at.is_(None))
                .values(processed_at=self._now_sql)
            )

        self._write(fn)


# -- helpers -------------------------------------------------------------------------------------


def _upsert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def _job_values(change: TaskChange, rerun: bool, now: float) -> dict[str, Any]:
    """The job row's values as a change ends it; a job whose task gets no new version runs
    again at once when an event it should read arrived while it ran."""
    end = change.job
    assert end is not None
    state, due = end.state, end.due_in_s
    if rerun and change.write is None:
        state, due = JobState.QUEUED, 0.0
    values: dict[str, Any] = {"state": state.value}
    if state == JobState.QUEUED:
        values["run_after"] = now + due
        if end.reset_attempts:
            values["attempt"] = 0
        elif not end.counts:
            values["attempt"] = t.jobs.c.attempt - 1
    if end.error is not None:
        values["last_error"] = end.error[:2000]
    return values


def _slot_freed(now: Any) -> dict[str, Any]:
    """A task's values as it gives its repository slot back: the time it held it is work."""
    held = sa.func.coalesce(now - t.tasks.c.slot_since, 0.0)
    return {"slot": None, "slot_since": None, "worked_s": t.tasks.c.worked_s + held}


def _close_runs(conn: Connection, job_id: int, outcome: RunOutcome, why: str, now: Any) -> None:
    """Close the runs of a job that ended without its worker closing them; their usage is
    read back from their logs once their worker is known dead."""
    conn.execute(
        sa.update(t.runs)
        .where(t.runs.c.job_id == job_id, t.runs.c.ended_at.is_(None))
        .values(ended_at=now, outcome=outcome.value, detail=f"closed for its worker: {why}")
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


def _task(r: Any) -> Task:
    return _record(  # type: ignore[no-any-return]
        Task, r, stage=Stage(r.stage), status=TaskStatus(r.status), budgets=r.budgets or {}
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
