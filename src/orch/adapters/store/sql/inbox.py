"""Tasks' inboxes in the SQL store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch import crashpoints
from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import (
    SqlBase,
    _event,
    _insert_ignore,
)
from orch.domain import machine
from orch.domain.model import (
    Claim,
    Event,
)
from orch.domain.states import TERMINAL_STATUSES, JobState, Stage, TaskStatus


class InboxRecords(SqlBase):
    """A task's inbox: events appended once per key, read once."""

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
            # locked before it is read, as a job's write locks it: a job moving the task now
            # either sees this event, or is seen here having moved it
            task = conn.execute(
                sa.select(t.tasks.c.repo, t.tasks.c.status, t.tasks.c.version, t.tasks.c.stage)
                .where(t.tasks.c.id == task_id)
                .with_for_update()
            ).one()
            effect = machine.on_event(TaskStatus(task.status), cancel)
            if effect.raise_cancel:
                conn.execute(
                    sa.update(t.tasks)
                    .where(
                        t.tasks.c.id == task_id,
                        t.tasks.c.cancel_requested_at.is_(None),
                        t.tasks.c.status.not_in([s.value for s in TERMINAL_STATUSES]),
                    )
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
            elif effect.hurry:
                conn.execute(
                    sa.update(t.jobs)
                    .where(
                        t.jobs.c.task_id == task_id,
                        t.jobs.c.version == task.version,
                        t.jobs.c.state == JobState.QUEUED.value,
                        t.jobs.c.run_after > now,
                    )
                    .values(run_after=now, updated_at=now)
                )
            return True

        stored: bool = self._write(fn, wakes=True)
        if stored:
            crashpoints.hit("inbox.event")
        return stored

    def cancel_requested(self, task_id: int) -> bool:
        return bool(
            self._read(lambda c: c.execute(self.sql.cancel_flag, {"b_task": task_id}).scalar())
        )

    def cancels_asked(self, task_ids: Sequence[int]) -> list[int]:
        if not task_ids:
            return []
        query = sa.select(t.tasks.c.id).where(
            t.tasks.c.id.in_(sorted(set(task_ids))), t.tasks.c.cancel_requested_at.is_not(None)
        )
        return [int(r[0]) for r in self._read(lambda c: c.execute(query).all())]

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
