"""Tickets and tasks in the SQL store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import (
    SqlBase,
    _effect,
    _event,
    _gate,
    _job,
    _run,
    _task,
    _transition,
    _upsert,
)
from orch.adapters.store.sql.statements import tasks_with_pipelines
from orch.domain import machine
from orch.domain.errors import (
    Conflict,
    NotFound,
)
from orch.domain.ledger import Usage
from orch.domain.model import (
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
    JobState,
    TaskStatus,
)
from orch.ports import StateSummary

_IDS_AT_ONCE = 500  # ids to one IN list, well below SQLite's limit on bound parameters


class TaskRecords(SqlBase):
    """Tickets and tasks: filing, creating, and the reads of a task's records."""

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
        task_id = self._write(
            lambda conn: self._create_task(conn, ticket, branch, pipeline, first, actor),
            wakes=first.status == TaskStatus.ACTIVE,
            duplicate=lambda: Conflict(
                f"ticket {ticket.key} already has a task that is not cancelled"
            ),
        )
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
        pipeline_id = self._pipeline_id(conn, pipeline)
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
                pipeline_id=pipeline_id,
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

    def _pipeline_id(self, conn: Connection, pipeline: dict[str, Any]) -> int:
        """The row of pipelines that holds `pipeline`, added if none does yet. Two filings
        adding the same one at once both get the one that committed: the second's insert waits
        on the first's (PostgreSQL) and does nothing, or never overlaps it (SQLite's writers
        take turns)."""
        digest = {"b_digest": t.pipeline_digest(pipeline)}
        found = conn.execute(self.sql.pipeline_id, digest).scalar()
        if found is None:
            conn.execute(self.sql.add_pipeline, {"digest": digest["b_digest"], "body": pipeline})
            found = conn.execute(self.sql.pipeline_id, digest).scalar_one()
        return int(found)

    def _pipelines(self, conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The bodies of these pipelines, each read once, by id."""
        wanted = sorted(set(ids))
        bodies: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), _IDS_AT_ONCE):
            rows = conn.execute(
                sa.select(t.pipelines.c.id, t.pipelines.c.body).where(
                    t.pipelines.c.id.in_(wanted[start : start + _IDS_AT_ONCE])
                )
            )
            bodies.update((r.id, r.body) for r in rows)
        return bodies

    def get_task(self, task_id: int) -> Task:
        row = self._read(lambda c: c.execute(self.sql.task, {"b_task": task_id}).first())
        if row is None:
            raise NotFound(f"no task with id {task_id}")
        return _task(row)

    def find_task(self, key: str) -> Task | None:
        row = self._read(
            lambda c: c.execute(
                tasks_with_pipelines()
                .where(t.tasks.c.key == key)
                .order_by(t.tasks.c.id.desc())
                .limit(1)
            ).first()
        )
        return _task(row) if row is not None else None

    def list_tasks(self, limit: int = 100, status: TaskStatus | None = None) -> list[Task]:
        # the tasks' rows without their pipelines, then each distinct pipeline once: most tasks
        # of a repository share one
        query = sa.select(t.tasks).order_by(t.tasks.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(t.tasks.c.status == status.value)

        def fn(c: Connection) -> list[Task]:
            rows = c.execute(query).all()
            bodies = self._pipelines(c, (r.pipeline_id for r in rows))
            return [_task(r, bodies[r.pipeline_id]) for r in rows]

        return self._read(fn)  # type: ignore[no-any-return]

    def slot_holders(self) -> dict[str, list[str]]:
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.tasks.c.repo, t.tasks.c.key)
                .where(t.tasks.c.slot.is_not(None))
                .order_by(t.tasks.c.slot_since, t.tasks.c.id)
            ).all()
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r.repo, []).append(r.key)
        return out

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
            # the tallies the tasks' triggers keep, read instead of counting every task
            tallies = c.execute(
                sa.select(t.task_tallies)
                .where(t.task_tallies.c.tasks != 0)
                .order_by(t.task_tallies.c.kind, t.task_tallies.c.name)
            ).all()
            by_stage = {r.name: int(r.tasks) for r in tallies if r.kind == "stage"}
            by_status = {r.name: int(r.tasks) for r in tallies if r.kind == "status"}
            by_repo = {
                r.name: Usage(
                    int(r.tokens_in),
                    int(r.tokens_out),
                    int(r.cache_read),
                    int(r.cache_write),
                    float(r.cost_usd),
                )
                for r in tallies
                if r.kind == "repo"
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
            return StateSummary(
                by_stage=by_stage,
                by_status=by_status,
                running=running,
                recent=recent_rows,
                spent=sum(by_repo.values(), Usage()),
                spent_by_repo=by_repo,
            )

        return self._read(fn)  # type: ignore[no-any-return]
