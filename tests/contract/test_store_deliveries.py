"""The store contract for webhook deliveries and tracker items, on every store."""

from __future__ import annotations

import pytest

from orch.adapters.store.sql import SqlStore
from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.errors import Conflict
from orch.domain.model import ItemLink, Ticket
from orch.domain.states import TaskStatus

PIPELINE = pl.default_pipeline()


def start(store: SqlStore, key: str = "ORCH-7", ref: str = "item-7", stamp: str = "s1") -> int:
    link = ItemLink(key, "plane", "proj", ref, stamp)
    ticket = Ticket(key=key, repo="app", title="Fix it", body="body", url=f"http://p/{ref}")
    task = store.start_item(link, ticket, pl.to_dict(PIPELINE), pl.start(PIPELINE), "plane:ann")
    return task.id


def test_a_delivery_is_stored_once_by_its_id(store: SqlStore) -> None:
    assert store.record_delivery("plane", "d-1", '{"a": 1}') is True
    assert store.record_delivery("plane", "d-1", '{"a": 2}') is False
    assert store.record_delivery("gitea", "d-1", "{}") is True  # another source's id space
    pending = store.pending_deliveries("plane")
    assert [(d.delivery, d.body) for d in pending] == [("d-1", '{"a": 1}')]


def test_a_finished_delivery_leaves_the_pending_ones_and_keeps_its_outcome(
    store: SqlStore,
) -> None:
    for n in range(3):
        store.record_delivery("plane", f"d-{n}", "{}")
    first = store.pending_deliveries("plane")[0]
    store.finish_delivery(first.id, "started ORCH-7")
    store.finish_delivery(first.id, "a second outcome is not recorded")
    assert [d.delivery for d in store.pending_deliveries("plane")] == ["d-1", "d-2"]
    done = store.deliveries("plane")[0]
    assert done.outcome == "started ORCH-7" and done.done_at is not None


def test_deliveries_do_not_move_the_change_count(store: SqlStore) -> None:
    before = store.changes.count
    store.record_delivery("plane", "d-1", "{}")
    store.finish_delivery(store.pending_deliveries("plane")[0].id, "nothing to do")
    assert store.changes.count == before


def test_starting_an_item_files_its_ticket_links_it_and_starts_a_task(store: SqlStore) -> None:
    task = store.get_task(start(store))
    assert (task.key, task.repo, task.status) == ("ORCH-7", "app", TaskStatus.ACTIVE)
    ticket = store.get_ticket("ORCH-7")
    assert ticket is not None and ticket.url == "http://p/item-7"
    link = store.item_link("plane", "item-7")
    assert link == ItemLink("ORCH-7", "plane", "proj", "item-7", "s1")
    assert store.link_of("ORCH-7") == link


def test_an_item_with_a_live_task_is_not_started_twice(store: SqlStore) -> None:
    start(store)
    with pytest.raises(Conflict):
        start(store, stamp="s2")
    assert store.item_link("plane", "item-7").acted_on == "s1"  # type: ignore[union-attr]


def test_an_item_is_started_again_once_its_task_is_cancelled(store: SqlStore) -> None:
    first = start(store)
    task = store.get_task(first)
    c = store.claim("host:1:test", 60.0, lambda _repo: 1)
    assert c is not None and c.task_id == task.id
    store.apply(c, machine.advance(task, pl.on_stop(task.stage, "ann", ""), "ann"))
    assert store.get_task(first).status == TaskStatus.CANCELLED
    second = start(store, stamp="s2")
    assert second != first
    assert store.item_link("plane", "item-7").acted_on == "s2"  # type: ignore[union-attr]


def test_the_stamp_orch_acted_on_is_remembered(store: SqlStore) -> None:
    start(store)
    store.mark_acted("plane", "item-7", "s9")
    store.mark_acted("plane", "unknown", "s9")
    assert store.link_of("ORCH-7").acted_on == "s9"  # type: ignore[union-attr]


def test_an_item_may_not_take_a_board_tickets_key(store: SqlStore) -> None:
    board = store.file_ticket("app", "ORCH", "on the board", "")
    with pytest.raises(Conflict):
        start(store, key=board.key)
    assert store.item_link("plane", "item-7") is None
