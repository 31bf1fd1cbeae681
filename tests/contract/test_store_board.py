"""The store contract for the built-in board: where each ticket stands, moved only by a
compare-and-set on its version, and its comments, orch's made once per key."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from orch.adapters.store.sql import SqlStore
from orch.domain.errors import NotFound
from orch.domain.model import BoardItem

T = TypeVar("T")


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls on threads of their own, let go together; their results, in order."""
    start = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = calls[n]()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results  # type: ignore[return-value]


def test_a_ticket_never_moved_has_no_place_on_the_board(store: SqlStore) -> None:
    ticket = store.file_ticket("app", "APP", "Never moved", "")
    assert store.board_item(ticket.key) is None
    assert store.board_tickets("app") == [(ticket, None)]


def test_each_move_is_one_version_on_with_who_made_it(store: SqlStore) -> None:
    ticket = store.file_ticket("app", "APP", "Move me", "")
    before = store.now()
    first = store.move_board_item(ticket.key, "To Analyse", "ann", 0)
    assert first is not None
    assert (first.key, first.state, first.version, first.actor) == (
        ticket.key,
        "To Analyse",
        1,
        "ann",
    )
    assert first.updated_at >= before
    second = store.move_board_item(ticket.key, "Analysing", "orch", 1)
    assert second is not None and (second.state, second.version, second.actor) == (
        "Analysing",
        2,
        "orch",
    )
    assert store.board_item(ticket.key) == second


def test_a_move_from_a_version_that_is_gone_changes_nothing(store: SqlStore) -> None:
    ticket = store.file_ticket("app", "APP", "Raced", "")
    moved = store.move_board_item(ticket.key, "STOP", "ann", 0)
    assert moved is not None
    shown = store.changes.count
    assert store.move_board_item(ticket.key, "Analysing", "orch", 0) is None
    assert store.move_board_item(ticket.key, "Analysing", "orch", 2) is None
    assert store.board_item(ticket.key) == moved
    assert store.changes.count == shown  # a lost move shows a person nothing new


def test_a_ticket_that_is_not_there_cannot_be_moved_or_commented(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.move_board_item("APP-404", "Approved", "ann", 0)
    with pytest.raises(NotFound):
        store.add_board_comment("APP-404", "", "<p>hello?</p>", "ann", False)
    assert store.board_item("APP-404") is None and store.board_comments("APP-404") == []


@pytest.mark.parametrize("moved_before", [0, 2])
def test_of_moves_made_at_once_from_one_version_exactly_one_wins(
    store: SqlStore, moved_before: int
) -> None:
    ticket = store.file_ticket("app", "APP", "Contended", "")
    for n in range(moved_before):
        assert store.move_board_item(ticket.key, f"Earlier {n}", "ann", n) is not None

    def racer(who: str) -> Callable[[], BoardItem | None]:
        return lambda: store.move_board_item(ticket.key, f"By {who}", who, moved_before)

    results = at_once([racer(f"racer-{n}") for n in range(6)])
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    [won] = winners
    assert won.version == moved_before + 1
    assert store.board_item(ticket.key) == won


def test_the_board_lists_a_repositorys_tickets_where_they_stand(store: SqlStore) -> None:
    first = store.file_ticket("app", "APP", "One", "the first")
    second = store.file_ticket("app", "APP", "Two", "")
    store.file_ticket("other", "OTH", "Elsewhere", "")
    moved = store.move_board_item(second.key, "Approved", "ann", 0)
    assert moved is not None
    assert store.board_tickets("app") == [(first, None), (second, moved)]
    assert store.board_tickets("nobody") == []


def test_orchs_comment_is_made_once_per_ticket_and_key(store: SqlStore) -> None:
    one = store.file_ticket("app", "APP", "One", "")
    two = store.file_ticket("app", "APP", "Two", "")
    assert store.add_board_comment(one.key, "t1:analysis:done", "<p>done</p>", "orch", True)
    assert not store.add_board_comment(one.key, "t1:analysis:done", "<p>again</p>", "orch", True)
    assert store.add_board_comment(two.key, "t1:analysis:done", "<p>done</p>", "orch", True)
    [only] = store.board_comments(one.key)
    assert (only.key, only.comment_key, only.html, only.actor, only.own) == (
        one.key,
        "t1:analysis:done",
        "<p>done</p>",
        "orch",
        True,
    )


def test_a_persons_comments_are_all_kept_oldest_first(store: SqlStore) -> None:
    ticket = store.file_ticket("app", "APP", "Talk", "")
    assert store.add_board_comment(ticket.key, "", "<p>first</p>", "ann", False)
    assert store.add_board_comment(ticket.key, "q:1", "<p>a question</p>", "orch", True)
    assert store.add_board_comment(ticket.key, "", "<p>first</p>", "ann", False)  # said twice
    comments = store.board_comments(ticket.key)
    assert [(c.html, c.actor, c.own) for c in comments] == [
        ("<p>first</p>", "ann", False),
        ("<p>a question</p>", "orch", True),
        ("<p>first</p>", "ann", False),
    ]
    assert [c.id for c in comments] == sorted(c.id for c in comments)
    assert len({c.id for c in comments}) == 3


def test_of_one_keyed_comment_made_at_once_exactly_one_is_kept(store: SqlStore) -> None:
    ticket = store.file_ticket("app", "APP", "Contended", "")
    results = at_once(
        [
            (lambda: store.add_board_comment(ticket.key, "t1:asked", "<p>?</p>", "orch", True))
            for _ in range(6)
        ]
    )
    assert sorted(results) == [False] * 5 + [True]
    assert len(store.board_comments(ticket.key)) == 1
