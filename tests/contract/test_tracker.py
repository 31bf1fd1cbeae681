"""The Tracker contract, run on every tracker: the one in memory, and Plane's adapter against the
fake Plane (which fails the test on any request Plane's SDK models would not allow)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from orch.adapters.trackers import UnknownState
from orch.adapters.trackers.memory import MemoryTracker
from orch.adapters.trackers.plane import PlaneTracker
from orch.domain.errors import ConfigError
from orch.fakes.plane import PlaneFake
from orch.fakes.server import FakeServer, Request, Response
from orch.ports import Tracker, WorkItem

Payload = dict[str, Any]
TOKEN = "plane-key-contract"


class Board(Protocol):
    """A tracker, and the people who use it."""

    tracker: Tracker
    project: str

    def add(self, title: str, body: str = "", state: str = "Backlog") -> WorkItem: ...

    def person_moves(self, item: WorkItem, state: str, via: str = "ui") -> list[Payload]:
        """The bodies of the webhook deliveries the move brings."""
        ...

    def orch_moves(self, item: WorkItem, state: str) -> list[Payload]:
        """`tracker.move`, and the deliveries its echo brings."""
        ...

    def person_comments(self, item: WorkItem, text: str) -> list[Payload]: ...

    def orch_comments(self, item: WorkItem) -> list[str]:
        """The keys of the comments orch made on the item."""
        ...


class MemoryBoard:
    project = "proj-1"

    def __init__(self) -> None:
        self.memory = MemoryTracker()
        self.tracker: Tracker = self.memory

    def add(self, title: str, body: str = "", state: str = "Backlog") -> WorkItem:
        return self.memory.add(self.project, title, body, state)

    def person_moves(self, item: WorkItem, state: str, via: str = "ui") -> list[Payload]:
        self.memory.set_state(self.project, item.ref, state)
        field = "state_id" if via == "ui" else "state"
        return [self.memory.webhook(self.project, item.ref, field=field)]

    def orch_moves(self, item: WorkItem, state: str) -> list[Payload]:
        self.tracker.move(item, state)
        return [self.memory.webhook(self.project, item.ref, own=True, field="state")]

    def person_comments(self, item: WorkItem, text: str) -> list[Payload]:
        self.memory.add_comment(self.project, item.ref, text)
        data = {"id": "c-1", "issue": item.ref, "project": self.project}
        return [{"event": "issue_comment", "action": "created", "data": data, "activity": {}}]

    def orch_comments(self, item: WorkItem) -> list[str]:
        return [c.key for c in self.memory.comments(self.project, item.ref) if c.own]


class Sink(FakeServer):
    """Where the fake Plane delivers its webhooks: it takes them all."""

    def handle(self, request: Request) -> Response:
        return Response(200)


class PlaneBoard:
    def __init__(self, fake: PlaneFake) -> None:
        self.fake = fake
        self.project = fake.add_project("Orch", "ORCH")
        self.tracker: Tracker = PlaneTracker(
            fake.url, fake.slug, TOKEN, page_size=3, sleep=lambda _s: None
        )

    def add(self, title: str, body: str = "", state: str = "Backlog") -> WorkItem:
        made = self.fake.add_item(self.project, title, f"<p>{html.escape(body)}</p>", state)
        assert self.fake.settle()  # its "created" delivery is not a later change's
        found = self.tracker.item(self.project, made["id"])
        assert found is not None
        return found

    def _delivered(self, since: int) -> list[Payload]:
        assert self.fake.settle()
        return [d.payload() for d in self.fake.deliveries[since:]]

    def person_moves(self, item: WorkItem, state: str, via: str = "ui") -> list[Payload]:
        since = len(self.fake.deliveries)
        self.fake.person_moves(self.project, item.ref, state, via=via)
        return self._delivered(since)

    def orch_moves(self, item: WorkItem, state: str) -> list[Payload]:
        since = len(self.fake.deliveries)
        self.tracker.move(item, state)
        return self._delivered(since)

    def person_comments(self, item: WorkItem, text: str) -> list[Payload]:
        since = len(self.fake.deliveries)
        self.fake.person_comments(self.project, item.ref, f"<p>{html.escape(text)}</p>")
        return self._delivered(since)

    def orch_comments(self, item: WorkItem) -> list[str]:
        comments = self.fake.comments_of(self.project, item.ref)
        return [c["external_id"] for c in comments if c["created_by"] == self.fake.me["id"]]


@pytest.fixture(scope="module")
def plane() -> Iterator[PlaneFake]:
    """One fake Plane for the module (each test has a project of its own): serving starts and
    stops slowly."""
    with Sink() as sink, PlaneFake(TOKEN) as fake:
        fake.subscribe(f"{sink.url}/hooks/plane", "hook-secret")
        yield fake


@pytest.fixture(params=["memory", "plane"])
def board(request: pytest.FixtureRequest) -> Iterator[Board]:
    if request.param == "memory":
        yield MemoryBoard()
        return
    fake: PlaneFake = request.getfixturevalue("plane")
    before = len(fake.violations)
    made = PlaneBoard(fake)
    yield made
    assert isinstance(made.tracker, PlaneTracker)
    made.tracker.close()
    assert fake.violations[before:] == []


def test_an_item_reads_as_the_tracker_holds_it(board: Board) -> None:
    item = board.add("Fix the login page", "It fails on Sundays.", state="To Analyse")
    assert (item.title, item.body, item.state) == (
        "Fix the login page",
        "It fails on Sundays.",
        "To Analyse",
    )
    assert item.project == board.project and item.ref and item.key and item.updated
    assert board.tracker.item(board.project, item.ref) == item
    other = board.add("Another")
    assert other.key != item.key and other.ref != item.ref


def test_an_item_that_is_not_there_reads_as_none(board: Board) -> None:
    board.add("Something")
    assert board.tracker.item(board.project, "9b2c4a4e-0000-4000-8000-000000000000") is None


def test_every_item_comes_back_over_several_pages(board: Board) -> None:
    made = [board.add(f"item {n}") for n in range(7)]  # the Plane board pages 3 at a time
    listed = list(board.tracker.items(board.project))
    assert sorted(i.ref for i in listed) == sorted(i.ref for i in made)
    assert {i.key for i in listed} == {i.key for i in made}


def test_state_names_are_the_projects_states(board: Board) -> None:
    names = board.tracker.state_names(board.project)
    assert {"Backlog", "To Analyse", "Approved", "Rejected", "Confirm Deploy", "STOP"} <= set(names)


def test_a_move_changes_the_state_and_the_stamp_once(board: Board) -> None:
    item = board.add("Move me")
    assert board.tracker.move(item, "Approved") is True
    moved = board.tracker.item(board.project, item.ref)
    assert moved is not None and moved.state == "Approved" and moved.updated != item.updated
    assert board.tracker.move(moved, "Approved") is False
    assert board.tracker.move(item, "Approved") is False  # even from a stale copy of the item
    again = board.tracker.item(board.project, item.ref)
    assert again is not None and again.updated == moved.updated


def test_a_move_never_overwrites_a_state_someone_set_since_the_item_was_read(
    board: Board,
) -> None:
    item = board.add("Stop me", state="To Analyse")
    board.person_moves(item, "STOP")  # after orch read it
    assert board.tracker.move(item, "Analysing") is False
    now = board.tracker.item(board.project, item.ref)
    assert now is not None and now.state == "STOP"


def test_a_move_to_a_state_the_project_lacks_fails_naming_it(board: Board) -> None:
    item = board.add("Nowhere to go")
    with pytest.raises(UnknownState) as raised:
        board.tracker.move(item, "Shipped")
    assert "Shipped" in str(raised.value) and board.project in str(raised.value)
    assert isinstance(raised.value, ConfigError)
    still = board.tracker.item(board.project, item.ref)
    assert still is not None and still.state == "Backlog"


def test_a_comment_is_made_once_per_key(board: Board) -> None:
    item = board.add("Talk about it")
    assert board.tracker.comment(item, "task-1:analysis:done", "<p>Analysis done</p>") is True
    assert board.tracker.comment(item, "task-1:analysis:done", "<p>Analysis done</p>") is False
    assert board.tracker.comment(item, "task-1:plan:asked", "<p>Approve the plan?</p>") is True
    assert sorted(board.orch_comments(item)) == ["task-1:analysis:done", "task-1:plan:asked"]


def test_the_latest_comment_is_a_persons_never_orchs(board: Board) -> None:
    item = board.add("Reject me")
    assert board.tracker.latest_comment(item) == ""
    board.person_comments(item, "Too broad.")
    board.person_comments(item, "Use the existing <greeter> module.")
    board.tracker.comment(item, "task-1:plan:asked", "<p>Approve the plan?</p>")
    assert board.tracker.latest_comment(item) == "Use the existing <greeter> module."


@pytest.mark.parametrize("via", ["ui", "api"])
def test_a_persons_move_is_a_hint_at_the_item(board: Board, via: str) -> None:
    item = board.add("Start me")
    payloads = board.person_moves(item, "To Analyse", via=via)
    fields = [p["activity"]["field"] for p in payloads]
    assert fields == ["state_id" if via == "ui" else "state"]
    hint = board.tracker.hint(payloads[0])
    assert hint is not None
    assert (hint.project, hint.ref, hint.own) == (board.project, item.ref, False)
    assert hint.actor


def test_orchs_own_move_comes_back_flagged_own(board: Board) -> None:
    item = board.add("Echo")
    payloads = board.orch_moves(item, "Analysing")
    assert len(payloads) == 1
    hint = board.tracker.hint(payloads[0])
    assert hint is not None and hint.ref == item.ref and hint.own is True


@pytest.mark.parametrize("action", ["created", "updated", "create", "update"])
def test_both_spellings_of_an_action_are_hints(board: Board, action: str) -> None:
    item = board.add("Spelled")
    payload = {**board.person_moves(item, "Approved")[0], "action": action}
    hint = board.tracker.hint(payload)
    assert hint is not None and hint.ref == item.ref


def test_other_events_and_deletions_are_not_hints(board: Board) -> None:
    item = board.add("Not about me")
    moved = board.person_moves(item, "Approved")[0]
    assert board.tracker.hint({**moved, "action": "deleted", "data": {"id": item.ref}}) is None
    assert board.tracker.hint({**moved, "action": "delete"}) is None
    for event in ("project", "cycle", "module", "cycle_issue"):
        assert board.tracker.hint({**moved, "event": event}) is None
    commented = board.person_comments(item, "A comment is not a change of state.")
    assert commented and all(board.tracker.hint(p) is None for p in commented)
    assert board.tracker.hint({}) is None
    assert board.tracker.hint({"event": "issue", "action": "updated", "data": None}) is None
