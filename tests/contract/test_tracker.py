"""The Tracker contract, run on every tracker: the one in memory, orch's built-in board over the
store, and Plane's adapter against the fake Plane (which fails the test on any request Plane's
SDK models would not allow). What a delivery looks like is each tracker's own: the boards say how
theirs are spelled, and the tests what every tracker makes of them."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

from orch.adapters.store.memory import MemoryStore
from orch.adapters.trackers import UnknownState
from orch.adapters.trackers.builtin import BuiltinTracker
from orch.adapters.trackers.memory import DEFAULT_STATES, MemoryTracker
from orch.adapters.trackers.plane import PlaneTracker
from orch.domain.errors import ConfigError
from orch.domain.model import BoardItem
from orch.fakes.plane import PlaneFake
from orch.fakes.server import FakeServer, Request, Response
from orch.ports import ItemHint, Tracker, WorkItem
from orch.testing import memory_store

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

    def moved_fields(self, payloads: list[Payload]) -> list[str]:
        """What each delivery of a move says was changed, in the tracker's words."""
        ...

    def move_field(self, via: str) -> str:
        """What a delivery says a person's move through `via` (the tracker's UI, its API)
        changed."""
        ...

    def variants(self, payload: Payload) -> list[Payload]:
        """The delivery in every spelling the tracker may send it in."""
        ...

    def not_hints(self, item: WorkItem, moved: Payload) -> list[Payload]:
        """Deliveries like `moved`, a person's move of `item`, that are about nothing orch
        follows: other events, a deletion, bodies missing what names the item."""
        ...


class PlaneShaped:
    """A board whose deliveries are Plane's (`event`, `action`, `data`, `activity`)."""

    def moved_fields(self, payloads: list[Payload]) -> list[str]:
        return [p["activity"]["field"] for p in payloads]

    def move_field(self, via: str) -> str:
        return "state_id" if via == "ui" else "state"

    def variants(self, payload: Payload) -> list[Payload]:
        # activity-fired deliveries say created/updated, HTTP-verb ones create/update
        return [{**payload, "action": a} for a in ("created", "updated", "create", "update")]

    def not_hints(self, item: WorkItem, moved: Payload) -> list[Payload]:
        return [
            {**moved, "action": "deleted", "data": {"id": item.ref}},
            {**moved, "action": "delete"},
            *({**moved, "event": e} for e in ("project", "cycle", "module", "cycle_issue")),
        ]


class MemoryBoard(PlaneShaped):
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


class PlaneBoard(PlaneShaped):
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


class BuiltinBoard:
    """orch's own board on a memory store; people act through the tracker's helpers, and every
    change's event is caught as the board hands it on."""

    project = "app"

    def __init__(self) -> None:
        self.store = memory_store()
        self.events: list[Payload] = []
        self.builtin = BuiltinTracker(self.store, DEFAULT_STATES, on_change=self.events.append)
        self.tracker: Tracker = self.builtin

    def add(self, title: str, body: str = "", state: str = "Backlog") -> WorkItem:
        ticket = self.store.file_ticket(self.project, "APP", title, body)
        if state != self.builtin.default_state:
            self.builtin.person_moves(ticket.key, state, "ann")
        found = self.tracker.item(self.project, ticket.key)
        assert found is not None
        return found

    def _caught(self, since: int, returned: Payload) -> list[Payload]:
        caught = self.events[since:]
        assert caught == [returned]  # what the helper says it brought is what was handed on
        return caught

    def person_moves(self, item: WorkItem, state: str, via: str = "ui") -> list[Payload]:
        since = len(self.events)
        return self._caught(since, self.builtin.person_moves(item.ref, state, "ann"))

    def orch_moves(self, item: WorkItem, state: str) -> list[Payload]:
        since = len(self.events)
        self.tracker.move(item, state)
        return self.events[since:]

    def person_comments(self, item: WorkItem, text: str) -> list[Payload]:
        since = len(self.events)
        return self._caught(since, self.builtin.person_comments(item.ref, text, "ann"))

    def orch_comments(self, item: WorkItem) -> list[str]:
        return [c.comment_key for c in self.store.board_comments(item.ref) if c.own]

    def moved_fields(self, payloads: list[Payload]) -> list[str]:
        return [p["action"] for p in payloads]

    def move_field(self, via: str) -> str:
        return "moved"  # through the dashboard or the API alike

    def variants(self, payload: Payload) -> list[Payload]:
        return [payload]  # the board's own events have one spelling

    def not_hints(self, item: WorkItem, moved: Payload) -> list[Payload]:
        return [
            {**moved, "action": "deleted"},
            {**moved, "action": "commented"},
            *({**moved, "event": e} for e in ("issue", "work_item", "board_comment")),
            *({k: v for k, v in moved.items() if k != gone} for gone in moved),
            {**moved, "ref": ""},
            {**moved, "project": ""},
            {**moved, "project": 7},
            {**moved, "own": "no"},
        ]


@pytest.fixture(scope="module")
def plane() -> Iterator[PlaneFake]:
    """One fake Plane for the module (each test has a project of its own): serving starts and
    stops slowly."""
    with Sink() as sink, PlaneFake(TOKEN) as fake:
        fake.subscribe(f"{sink.url}/hooks/plane", "hook-secret")
        yield fake


@pytest.fixture(params=["memory", "builtin", "plane"])
def board(request: pytest.FixtureRequest) -> Iterator[Board]:
    if request.param == "memory":
        yield MemoryBoard()
        return
    if request.param == "builtin":
        yield BuiltinBoard()
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
    assert board.moved_fields(payloads) == [board.move_field(via)]
    hint = board.tracker.hint(payloads[0])
    assert hint is not None
    assert (hint.project, hint.ref, hint.own, hint.moved) == (board.project, item.ref, False, True)
    assert hint.actor


def test_orchs_own_move_comes_back_flagged_own(board: Board) -> None:
    item = board.add("Echo")
    payloads = board.orch_moves(item, "Analysing")
    assert len(payloads) == 1
    hint = board.tracker.hint(payloads[0])
    assert hint is not None and hint.ref == item.ref and hint.own is True


def test_every_spelling_of_a_change_is_a_hint(board: Board) -> None:
    item = board.add("Spelled")
    spellings = board.variants(board.person_moves(item, "Approved")[0])
    assert spellings
    for payload in spellings:
        hint = board.tracker.hint(payload)
        assert hint is not None and hint.ref == item.ref, payload


def test_other_events_and_deletions_are_not_hints(board: Board) -> None:
    item = board.add("Not about me")
    moved = board.person_moves(item, "Approved")[0]
    others = board.not_hints(item, moved)
    assert others
    for payload in others:
        assert board.tracker.hint(payload) is None, payload
    commented = board.person_comments(item, "A comment is not a change of state.")
    assert commented and all(board.tracker.hint(p) is None for p in commented)
    assert board.tracker.hint({}) is None
    assert board.tracker.hint({"event": "issue", "action": "updated", "data": None}) is None


# -- what only the built-in board promises -------------------------------------------------------


def test_the_builtin_board_keeps_a_move_made_since_the_item_was_read_even_into_its_state() -> None:
    board = BuiltinBoard()
    item = board.add("Asked twice", state="To Analyse")
    board.builtin.person_moves(item.ref, "To Analyse", "ann")  # asked again, after orch read it
    assert board.tracker.move(item, "Analysing") is False
    now = board.tracker.item(board.project, item.ref)
    assert now is not None and (now.state, now.updated) == ("To Analyse", "2")


class MovedMeanwhile(MemoryStore):
    """A store in which a person's move lands between orch's read of an item and its write."""

    def __init__(self) -> None:
        super().__init__()
        self.person: Callable[[str], object] | None = None

    def move_board_item(
        self, key: str, state: str, actor: str, expect_version: int
    ) -> BoardItem | None:
        person, self.person = self.person, None
        if person is not None:
            person(key)
        return super().move_board_item(key, state, actor, expect_version)


def test_the_builtin_boards_move_loses_to_a_move_that_lands_before_its_write() -> None:
    store = MovedMeanwhile()
    events: list[Payload] = []
    tracker = BuiltinTracker(store, DEFAULT_STATES, on_change=events.append)
    ticket = store.file_ticket("app", "APP", "Raced", "")
    item = tracker.item("app", ticket.key)
    assert item is not None and (item.state, item.updated) == ("Backlog", "0")
    store.person = lambda key: tracker.person_moves(key, "STOP", "ann")
    assert tracker.move(item, "To Analyse") is False
    now = tracker.item("app", ticket.key)
    assert now is not None and (now.state, now.updated) == ("STOP", "1")
    assert [(e["action"], e["state"], e["own"]) for e in events] == [("moved", "STOP", False)]


def test_the_builtin_boards_events_say_who_did_what_and_where_it_left_the_item() -> None:
    board = BuiltinBoard()
    item = board.add("Watched")
    [asked] = board.person_moves(item, "To Analyse")
    assert asked == {
        "event": "board_item",
        "action": "moved",
        "project": "app",
        "ref": item.ref,
        "actor": "ann",
        "own": False,
        "state": "To Analyse",
    }
    hint = board.tracker.hint(asked)
    assert hint == ItemHint("app", item.ref, actor="ann", own=False, moved=True, state="To Analyse")
    read = board.tracker.item("app", item.ref)
    assert read is not None
    [echo] = board.orch_moves(read, "Analysing")
    assert board.tracker.hint(echo) == ItemHint(
        "app", item.ref, actor="orch", own=True, moved=True, state="Analysing"
    )
    [said] = board.person_comments(item, "Looks fine.")
    assert (said["action"], said["actor"], said["own"], said["state"]) == (
        "commented",
        "ann",
        False,
        "Analysing",
    )
    since = len(board.events)
    assert board.tracker.comment(read, "t1:analysis:done", "<p>done</p>")
    assert not board.tracker.comment(read, "t1:analysis:done", "<p>done</p>")
    assert [(e["action"], e["actor"], e["own"]) for e in board.events[since:]] == [
        ("commented", "orch", True)
    ]


def test_the_builtin_board_shows_a_repository_only_its_own_tickets() -> None:
    board = BuiltinBoard()
    mine = board.add("Mine")
    theirs = board.store.file_ticket("other", "OTH", "Theirs", "")
    assert board.tracker.item(board.project, theirs.key) is None
    assert board.tracker.item("other", mine.ref) is None
    assert [i.ref for i in board.tracker.items(board.project)] == [mine.ref]
    assert [i.key for i in board.tracker.items("other")] == [theirs.key]


def test_the_builtin_boards_states_are_per_repository_when_so_named() -> None:
    store = memory_store()
    tracker = BuiltinTracker(store, {"app": ["Backlog", "Doing", "Done"]})
    ticket = store.file_ticket("web", "WEB", "Unplanned", "")
    assert tracker.state_names("app") == ["Backlog", "Doing", "Done"]
    assert tracker.state_names("web") == []
    item = tracker.item("web", ticket.key)
    assert item is not None
    with pytest.raises(UnknownState):
        tracker.move(item, "Doing")
    with pytest.raises(ConfigError, match="Backlog"):
        BuiltinTracker(store, {"app": ["Doing", "Done"]})
    with pytest.raises(ConfigError, match="Backlog"):
        BuiltinTracker(store, ["Doing", "Done"])
