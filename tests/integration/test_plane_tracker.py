"""The Plane adapter against the fake Plane when things go wrong: rate limits, server errors,
answers that never come, a key that is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orch.adapters.trackers import TrackerError
from orch.adapters.trackers.plane import PlaneTracker
from orch.fakes.faults import Fault
from orch.fakes.plane import PlaneFake
from orch.ports import WorkItem
from orch.testing import SimClock

TOKEN = "plane-key-7f3a9c"


@dataclass
class World:
    fake: PlaneFake
    clock: SimClock
    project: str

    def tracker(self, token: str = TOKEN, **options: Any) -> PlaneTracker:
        return PlaneTracker(
            self.fake.url,
            self.fake.slug,
            token,
            sleep=self.clock.sleep,
            clock=self.clock,
            **options,
        )

    def item(self, tracker: PlaneTracker, title: str = "Fix it") -> WorkItem:
        made = self.fake.add_item(self.project, title, "<p>Please.</p>")
        found = tracker.item(self.project, made["id"])
        assert found is not None
        return found

    def sent(self, method: str, fragment: str) -> list[int]:
        """The statuses of the requests of `method` whose path ends in `fragment`."""
        return [
            e.status
            for e in self.fake.exchanges
            if e.method == method and e.path.endswith(fragment)
        ]


@pytest.fixture
def world() -> Iterator[World]:
    clock = SimClock(1_800_000_000.0)
    with PlaneFake(TOKEN, clock=clock) as fake:
        yield World(fake, clock, fake.add_project("Orch", "ORCH"))
        assert fake.violations == []


def test_a_429_is_waited_out_as_long_as_retry_after_says(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="GET", path="/work-items/", status=429, retry_after=7))
        assert tracker.item(world.project, item.ref) == item
    assert world.clock.slept == [7.0]


def test_server_errors_on_a_read_are_retried_with_a_bounded_backoff(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="GET", path="/work-items/", status=502, times=3))
        assert tracker.item(world.project, item.ref) == item
    slept = world.clock.slept
    assert len(slept) == 3 and all(0 < s <= 8.0 for s in slept)
    assert world.sent("GET", f"/work-items/{item.ref}/")[-4:] == [502, 502, 502, 200]


def test_a_read_that_keeps_failing_gives_up_after_max_tries(world: World) -> None:
    with world.tracker(max_tries=3) as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="GET", path="/work-items/", status=503, times=9))
        with pytest.raises(TrackerError) as raised:
            tracker.item(world.project, item.ref)
    assert "503" in str(raised.value) and "3 times" in str(raised.value)
    assert world.sent("GET", f"/work-items/{item.ref}/")[-3:] == [503, 503, 503]


def test_a_read_that_times_out_is_tried_again(world: World) -> None:
    with world.tracker(timeout_s=0.2) as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="GET", path="/work-items/", delay_s=0.6))
        assert tracker.item(world.project, item.ref) == item
    assert len(world.clock.slept) == 1


def test_a_comment_whose_answer_was_lost_is_not_made_twice(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="POST", path="/comments/", drop=True))
        assert tracker.comment(item, "task-9:analysis:done", "<p>Analysis done</p>") is True
        assert tracker.comment(item, "task-9:analysis:done", "<p>Analysis done</p>") is False
    made = world.fake.comments_of(world.project, item.ref)
    assert [c["external_id"] for c in made] == ["task-9:analysis:done"]
    assert world.sent("POST", "/comments/") == [0]  # sent once; its answer never came


def test_a_comment_refused_with_a_5xx_is_sent_again_after_reading_back(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="POST", path="/comments/", status=500))
        assert tracker.comment(item, "task-9:plan:asked", "<p>Approve?</p>") is True
    assert len(world.fake.comments_of(world.project, item.ref)) == 1
    assert world.sent("POST", "/comments/") == [500, 201]


def test_a_409_on_a_comment_means_it_is_there(world: World) -> None:
    with world.tracker() as tracker:
        first, second = world.item(tracker, "First"), world.item(tracker, "Second")
        assert tracker.comment(first, "task-9:done", "<p>Done</p>") is True
        # Plane keeps an external id once per project: the look-up on `second` finds nothing
        assert tracker.comment(second, "task-9:done", "<p>Done</p>") is False
    assert world.fake.comments_of(world.project, second.ref) == []
    assert world.sent("POST", "/comments/") == [201, 409]


def test_a_move_whose_answer_was_lost_is_read_back_not_sent_again(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="PATCH", path="/work-items/", drop=True))
        assert tracker.move(item, "Analysing") is True
    assert world.fake.state_of(world.project, item.ref) == "Analysing"
    assert world.sent("PATCH", f"/work-items/{item.ref}/") == [0]


def test_a_move_refused_with_a_5xx_is_sent_again(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="PATCH", path="/work-items/", status=503))
        assert tracker.move(item, "Analysing") is True
    assert world.fake.state_of(world.project, item.ref) == "Analysing"
    assert world.sent("PATCH", f"/work-items/{item.ref}/") == [503, 200]


def test_a_move_refused_with_a_429_is_not_sent_over_a_move_made_during_the_pause(
    world: World,
) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="PATCH", path="/work-items/", status=429, retry_after=1))
        world.clock.meanwhile.append(
            lambda: world.fake.person_moves(world.project, item.ref, "STOP")
        )
        tracker.move(item, "Analysing")
    assert world.fake.state_of(world.project, item.ref) == "STOP"
    assert world.sent("PATCH", f"/work-items/{item.ref}/") == [429]


def test_a_persons_move_that_orchs_slow_move_landed_on_is_put_back(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.person_moves(world.project, item.ref, "To Analyse")
        item = tracker.item(world.project, item.ref) or item
        # Plane takes its time over orch's move, and a person's STOP lands first
        world.fake.faults.add(Fault(method="PATCH", path="/work-items/", delay_s=0.5))
        stop = threading.Thread(target=_once_asked, args=(world, "STOP", item.ref))
        stop.start()
        moved = tracker.move(item, "Analysing")
        stop.join()
    assert moved is False
    assert world.fake.state_of(world.project, item.ref) == "STOP"
    assert world.sent("PATCH", f"/work-items/{item.ref}/") == [200, 200]


def test_a_move_made_before_or_after_a_persons_own_stands(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.person_moves(world.project, item.ref, "To Analyse")
        item = tracker.item(world.project, item.ref) or item
        assert tracker.move(item, "Analysing") is True
        world.fake.person_moves(world.project, item.ref, "STOP")
    assert world.fake.state_of(world.project, item.ref) == "STOP"
    assert world.sent("PATCH", f"/work-items/{item.ref}/") == [200]


def _once_asked(world: World, state: str, ref: str) -> None:
    """The person's move, made as soon as the fake has taken orch's request in."""
    deadline = time.monotonic() + 5
    while not world.fake.faults.injected and time.monotonic() < deadline:
        time.sleep(0.01)
    world.fake.person_moves(world.project, ref, state)


def test_a_move_refused_with_a_429_is_sent_again_after_the_pause(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="PATCH", path="/work-items/", status=429, retry_after=1))
        assert tracker.move(item, "Analysing") is True
    assert world.fake.state_of(world.project, item.ref) == "Analysing"
    assert world.sent("PATCH", f"/work-items/{item.ref}/") == [429, 200]


def test_a_spent_rate_limit_is_waited_out_until_its_reset(world: World) -> None:
    world.fake.rate_limit = 2
    with world.tracker() as tracker:
        tracker.state_names(world.project)
        tracker.state_names(world.project)  # the minute's last request: Remaining 0
        assert world.clock.slept == []
        names = tracker.state_names(world.project)
    assert "Approved" in names
    assert world.clock.slept == [60.0]  # X-RateLimit-Reset was the minute's end
    assert 429 not in [e.status for e in world.fake.exchanges]


def test_a_refused_key_is_said_plainly_and_never_shown(world: World) -> None:
    wrong = "plane-key-wrong-51e0"
    with world.tracker(token=wrong) as tracker:
        with pytest.raises(TrackerError) as raised:
            tracker.state_names(world.project)
        assert "API key" in str(raised.value) and "401" in str(raised.value)
        for shown in (str(raised.value), repr(raised.value), repr(tracker)):
            assert wrong not in shown and TOKEN not in shown
    assert world.clock.slept == []  # a refusal is not tried again


def test_a_write_plane_refuses_is_an_error_naming_the_answer(world: World) -> None:
    with world.tracker() as tracker:
        item = world.item(tracker)
        world.fake.faults.add(Fault(method="PATCH", path="/work-items/", status=403))
        with pytest.raises(TrackerError) as raised:
            tracker.move(item, "Approved")
    assert "403" in str(raised.value)
    assert world.fake.state_of(world.project, item.ref) == "Backlog"
