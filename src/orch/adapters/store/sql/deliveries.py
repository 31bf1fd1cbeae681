"""Webhook deliveries and tracker items, in the SQL store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import SqlBase, _insert_ignore
from orch.domain.errors import Conflict
from orch.domain.model import Delivery, ItemLink, Task, Ticket
from orch.domain.naming import branch_for
from orch.domain.pipeline import Decision
from orch.domain.states import TaskStatus


def _delivery(r: Any) -> Delivery:
    return Delivery(r.id, r.source, r.delivery, r.body, r.received_at, r.done_at, r.outcome)


def _link(r: Any) -> ItemLink:
    return ItemLink(r.key, r.tracker, r.project, r.ref, r.acted_on, r.seen_state)


class DeliveryRecords(SqlBase):
    def record_delivery(self, source: str, delivery: str, body: str) -> bool:
        def fn(conn: Connection) -> bool:
            inserted = conn.execute(
                _insert_ignore(conn, t.deliveries)
                .values(source=source, delivery=delivery, body=body, received_at=self._db_now(conn))
                .returning(t.deliveries.c.id)
            ).first()
            return inserted is not None

        return bool(self._write(fn, shown=lambda _: False))

    def pending_deliveries(self, source: str, limit: int = 100) -> list[Delivery]:
        d = t.deliveries.c
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.deliveries)
                .where(d.source == source, d.done_at.is_(None))
                .order_by(d.id)
                .limit(limit)
            ).all()
        )
        return [_delivery(r) for r in rows]

    def deliveries(self, source: str, limit: int = 100) -> list[Delivery]:
        d = t.deliveries.c
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.deliveries).where(d.source == source).order_by(d.id.desc()).limit(limit)
            ).all()
        )
        return [_delivery(r) for r in reversed(rows)]

    def finish_delivery(self, delivery_id: int, outcome: str) -> None:
        def fn(conn: Connection) -> None:
            conn.execute(
                sa.update(t.deliveries)
                .where(t.deliveries.c.id == delivery_id, t.deliveries.c.done_at.is_(None))
                .values(done_at=self._now_sql, outcome=outcome[:2000])
            )

        self._write(fn, shown=lambda _: False)

    def item_link(self, tracker: str, ref: str) -> ItemLink | None:
        i = t.tracker_items.c
        row = self._read(
            lambda c: c.execute(
                sa.select(t.tracker_items).where(i.tracker == tracker, i.ref == ref)
            ).first()
        )
        return _link(row) if row is not None else None

    def link_of(self, key: str) -> ItemLink | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.tracker_items).where(t.tracker_items.c.key == key)
            ).first()
        )
        return _link(row) if row is not None else None

    def mark_seen(self, tracker: str, ref: str, state: str) -> None:
        i = t.tracker_items.c
        self._write(
            lambda conn: conn.execute(
                sa.update(t.tracker_items)
                .where(i.tracker == tracker, i.ref == ref)
                .values(seen_state=state)
            ),
            shown=lambda _: False,
        )

    def mark_acted(self, tracker: str, ref: str, stamp: str) -> None:
        i = t.tracker_items.c
        self._write(
            lambda conn: conn.execute(
                sa.update(t.tracker_items)
                .where(i.tracker == tracker, i.ref == ref)
                .values(acted_on=stamp)
            ),
            shown=lambda _: False,
        )

    def start_item(
        self,
        link: ItemLink,
        ticket: Ticket,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task:
        def fn(conn: Connection) -> int:
            known = conn.execute(
                sa.select(t.tracker_items).where(t.tracker_items.c.key == ticket.key)
            ).first()
            fields = {"repo": ticket.repo, "title": ticket.title, "body": ticket.body}
            if known is None:
                if conn.execute(
                    sa.select(t.tickets.c.key).where(t.tickets.c.key == ticket.key)
                ).first():
                    raise Conflict(f"{ticket.key} is a ticket on the built-in board already")
                conn.execute(
                    sa.insert(t.tickets).values(
                        key=ticket.key, url=ticket.url, created_at=self._db_now(conn), **fields
                    )
                )
                conn.execute(
                    sa.insert(t.tracker_items).values(
                        key=ticket.key,
                        tracker=link.tracker,
                        project=link.project,
                        ref=link.ref,
                        acted_on=link.acted_on,
                        seen_state=link.seen_state,
                    )
                )
            elif (known.tracker, known.ref) != (link.tracker, link.ref):
                raise Conflict(f"{ticket.key} is another {known.tracker} item already")
            else:
                conn.execute(
                    sa.update(t.tickets)
                    .where(t.tickets.c.key == ticket.key)
                    .values(url=ticket.url, **fields)
                )
                conn.execute(
                    sa.update(t.tracker_items)
                    .where(t.tracker_items.c.key == ticket.key)
                    .values(
                        project=link.project, acted_on=link.acted_on, seen_state=link.seen_state
                    )
                )
            return self._create_task(conn, ticket, branch_for(ticket.key), pipeline, first, actor)

        task_id = self._write(
            fn,
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
        raise NotImplementedError  # orch.adapters.store.sql.tasks provides it

    def get_task(self, task_id: int) -> Task:
        raise NotImplementedError  # orch.adapters.store.sql.tasks provides it
