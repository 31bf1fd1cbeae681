"""Webhook deliveries and tracker items, in the memory store."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orch.adapters.store.memory.base import MemoryBase, _Tables
from orch.domain.errors import Conflict
from orch.domain.model import Delivery, ItemLink, Task, Ticket
from orch.domain.naming import branch_for
from orch.domain.pipeline import Decision
from orch.domain.states import TaskStatus


class DeliveryRecords(MemoryBase):
    def record_delivery(self, source: str, delivery: str, body: str) -> bool:
        with self._write(shown=False) as t:
            if any(d.source == source and d.delivery == delivery for d in t.deliveries.values()):
                return False
            new = Delivery(t.next_id("deliveries"), source, delivery, body, self.now())
            t.deliveries[new.id] = new
            return True

    def pending_deliveries(self, source: str, limit: int = 100) -> list[Delivery]:
        found = [d for d in self._t.deliveries.values() if d.source == source and d.done_at is None]
        return sorted(found, key=lambda d: d.id)[:limit]

    def deliveries(self, source: str, limit: int = 100) -> list[Delivery]:
        found = sorted(
            (d for d in self._t.deliveries.values() if d.source == source), key=lambda d: d.id
        )
        return found[-limit:]

    def finish_delivery(self, delivery_id: int, outcome: str) -> None:
        with self._write(shown=False) as t:
            known = t.deliveries.get(delivery_id)
            if known is not None and known.done_at is None:
                t.deliveries[delivery_id] = replace(
                    known, done_at=self.now(), outcome=outcome[:2000]
                )

    def item_link(self, tracker: str, ref: str) -> ItemLink | None:
        return next(
            (x for x in self._t.links.values() if (x.tracker, x.ref) == (tracker, ref)), None
        )

    def link_of(self, key: str) -> ItemLink | None:
        return self._t.links.get(key)

    def mark_seen(self, tracker: str, ref: str, state: str) -> None:
        with self._write(shown=False) as t:
            for key, link in t.links.items():
                if (link.tracker, link.ref) == (tracker, ref):
                    t.links[key] = replace(link, seen_state=state)

    def mark_acted(self, tracker: str, ref: str, stamp: str) -> None:
        with self._write(shown=False) as t:
            for key, link in t.links.items():
                if (link.tracker, link.ref) == (tracker, ref):
                    t.links[key] = replace(link, acted_on=stamp)

    def start_item(
        self,
        link: ItemLink,
        ticket: Ticket,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task:
        with self._write(wakes=first.status == TaskStatus.ACTIVE) as t:
            known = t.links.get(ticket.key)
            if known is None and ticket.key in t.tickets:
                raise Conflict(f"{ticket.key} is a ticket on the built-in board already")
            if known is not None and (known.tracker, known.ref) != (link.tracker, link.ref):
                raise Conflict(f"{ticket.key} is another {known.tracker} item already")
            if any(
                x.ref == link.ref and x.tracker == link.tracker and x.key != ticket.key
                for x in t.links.values()
            ):
                raise Conflict(f"{link.tracker} item {link.ref} is another ticket already")
            t.tickets[ticket.key] = ticket
            t.links[ticket.key] = replace(link, key=ticket.key)
            task_id = self._create(t, ticket, branch_for(ticket.key), pipeline, first, actor)
        return self.get_task(task_id)

    def _create(
        self,
        t: _Tables,
        ticket: Ticket,
        branch: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> int:
        raise NotImplementedError  # orch.adapters.store.memory.tasks provides it

    def get_task(self, task_id: int) -> Task:
        raise NotImplementedError  # orch.adapters.store.memory.tasks provides it
