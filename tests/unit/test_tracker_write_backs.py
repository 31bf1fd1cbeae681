"""Write-backs to the tracker that failed (orch.services.reporting) are sent again on the
tracker's poll until they are made: in full while they are their task's newest, else their
comment alone; never while the tracker's circuit is open. On memory adapters, with the in-memory
tracker made to go down."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from orch.adapters.trackers import TrackerUnavailable
from orch.adapters.trackers.memory import MemoryTracker
from orch.domain.model import Effect
from orch.domain.news import NewsKind
from orch.domain.states import EffectState, EventKind, TaskStatus
from orch.ports import WorkItem
from orch.services.breaker import Breakers
from orch.services.reporting import TrackerReport
from orch.services.tracking import TrackerSync
from orch.testing import InstantAgent, Rig, SimClock, memory_store, project_rules, rig

PROJECT = "proj-1"
RULES = project_rules(
    PROJECT,
    {
        "analysis": "Analysing",
        "waiting": "Needs Review",
        "done": "Done",
        "cancelled": "Cancelled",
    },
)
STATES = [
    "Backlog",
    "To Analyse",
    "Analysing",
    "Needs Review",
    "Approved",
    "Rejected",
    "Confirm Deploy",
    "Done",
    "Cancelled",
    "STOP",
]
DOWN = TrackerUnavailable("Plane failed GET .../work-items/x/ 5 times; the last: 503")


class FlakyTracker(MemoryTracker):
    """The in-memory tracker, made to go down (every call fails as Plane's do after their
    retries), or to lose the answers to the comments it makes."""

    def __init__(self) -> None:
        super().__init__(states={PROJECT: STATES})
        self.down = False
        self.loses_comment_answers = False
        self.asked = 0  # calls orch made while it was down

    def _answer(self) -> None:
        if self.down:
            self.asked += 1
            raise DOWN

    def item(self, project: str, ref: str) -> WorkItem | None:
        self._answer()
        return super().item(project, ref)

    def move(self, item: WorkItem, state: str) -> bool:
        self._answer()
        return super().move(item, state)

    def comment(self, item: WorkItem, key: str, html: str) -> bool:
        self._answer()
        made = super().comment(item, key, html)
        if self.loses_comment_answers:
            raise TrackerUnavailable("Plane did not answer POST .../comments/")
        return made


@dataclass
class World:
    rig: Rig
    tracker: FlakyTracker
    report: TrackerReport
    clock: SimClock
    sync: TrackerSync = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # wired as orch serve wires it, with a poll that stops after one round
        self.sync = TrackerSync(
            self.rig.store, self.tracker, self.rig.intake, [RULES], also=self._resend
        )

    def _resend(self) -> int:
        self._stop.set()
        self.sync.deliveries.wake.set()
        return self.report.resend()

    def poll(self) -> None:
        """One round of the tracker's poll, as `orch serve` runs it."""
        self._stop.clear()
        self.sync.run(self._stop, 60.0)

    def started(self, title: str = "Add a greeting") -> WorkItem:
        """An item moved to the start state, its task started."""
        item = self.tracker.add(PROJECT, title, "Say hello.", state="Backlog")
        item = self.tracker.set_state(PROJECT, item.ref, "To Analyse")
        body = json.dumps(self.tracker.webhook(PROJECT, item.ref)).encode()
        self.sync.receive(f"start-{item.ref}", body)
        self.sync.drain()
        return self.now(item)

    def now(self, item: WorkItem) -> WorkItem:
        found = super(FlakyTracker, self.tracker).item(PROJECT, item.ref)
        assert found is not None
        return found

    def task(self, item: WorkItem) -> Any:
        link = self.rig.store.item_link(self.tracker.name, item.ref)
        assert link is not None, "the item has no task"
        return self.rig.store.find_task(link.key)

    def reports(self, item: WorkItem) -> list[Effect]:
        return [e for e in self.rig.store.effects(self.task(item).id) if e.kind == "report"]

    def said(self, item: WorkItem) -> list[str]:
        return [c.key for c in self.tracker.comments(PROJECT, item.ref) if c.own]


@pytest.fixture
def world() -> Iterator[World]:
    store = memory_store()
    tracker = FlakyTracker()
    clock = SimClock()
    report = TrackerReport(
        store, tracker, [RULES], breakers=Breakers(threshold=3, cooldown_s=60.0, clock=clock)
    )
    r = rig({"default": InstantAgent()}, store=store, reporter=report)
    made = World(r, tracker, report, clock)
    yield made
    r.close()


def test_a_report_that_failed_while_the_tracker_was_down_is_made_once_it_is_back(
    world: World,
) -> None:
    item = world.started()
    world.tracker.down = True
    world.rig.run_until_idle()  # the plan is written; its question cannot reach the tracker
    assert world.task(item).status == TaskStatus.WAITING
    (question,) = world.reports(item)
    assert question.state == EffectState.FAILED
    assert question.result["news"]["kind"] == NewsKind.WAITING
    assert world.now(item).state == "Analysing" and world.said(item) == []
    world.tracker.down = False
    world.poll()
    assert world.now(item).state == "Needs Review"
    assert world.said(item) == [question.key]
    (made,) = world.reports(item)
    assert made.state == EffectState.SUCCEEDED
    world.poll()  # nothing is owed any more
    assert world.said(item) == [question.key]
    assert world.tracker.moves.count((PROJECT, item.ref, "Needs Review")) == 1


def test_a_comment_resent_after_its_answer_was_lost_is_made_once(world: World) -> None:
    item = world.started()
    world.tracker.down = True
    world.rig.run_until_idle()
    world.tracker.down, world.tracker.loses_comment_answers = False, True
    assert world.report.resend() == 0  # made, but the tracker's answer never came
    assert [e.state for e in world.reports(item)] == [EffectState.FAILED]
    world.tracker.loses_comment_answers = False
    assert world.report.resend() == 1
    (question,) = world.reports(item)
    assert question.state == EffectState.SUCCEEDED
    assert world.said(item) == [question.key]
    assert world.now(item).state == "Needs Review"


def test_an_old_report_sends_its_comment_but_does_not_move_the_item_back(
    world: World,
) -> None:
    item = world.started()
    world.tracker.down = True
    world.rig.run_until_idle()  # the question fails to reach the tracker
    world.tracker.down = False
    task = world.task(item)
    world.rig.intake.stop(task.key, "telegram:42:ann")  # stopped elsewhere
    world.rig.run_until_idle()  # "cancelled" reaches the tracker
    assert world.task(item).status == TaskStatus.CANCELLED
    assert world.now(item).state == "Cancelled"
    acted = world.rig.store.item_link(world.tracker.name, item.ref)
    question, cancelled = world.reports(item)
    assert (question.state, cancelled.state) == (EffectState.FAILED, EffectState.SUCCEEDED)
    assert world.report.resend() == 1
    assert world.now(item).state == "Cancelled"
    assert (PROJECT, item.ref, "Needs Review") not in world.tracker.moves
    assert world.said(item) == [cancelled.key, question.key]
    assert world.rig.store.item_link(world.tracker.name, item.ref) == acted  # no answer marked
    made = world.rig.store.get_effect(question.key)
    assert made is not None and made.state == EffectState.SUCCEEDED


def test_reports_are_not_resent_while_the_trackers_circuit_is_open(world: World) -> None:
    first, second = world.started("One"), world.started("Two")
    world.tracker.down = True
    world.rig.run_until_idle()  # both questions fail: two failures in a row
    failed = world.rig.store.failed_effects("report")
    assert len(failed) == 2
    asked = world.tracker.asked
    assert world.report.resend() == 0  # the third failure: the circuit opens
    assert world.tracker.asked == asked + 1  # the round stopped at the first
    assert world.report.resend() == 0
    assert world.tracker.asked == asked + 1  # not asked at all while the circuit is open
    world.tracker.down = False
    assert world.report.resend() == 0  # back, but its circuit is still open
    assert [world.now(i).state for i in (first, second)] == ["Analysing", "Analysing"]
    assert world.said(first) == [] and world.said(second) == []
    world.clock.advance(60.0)
    assert world.report.resend() == 2
    assert [world.now(i).state for i in (first, second)] == ["Needs Review", "Needs Review"]
    assert world.rig.store.failed_effects("report") == []


def test_an_approval_left_from_before_a_question_does_not_answer_it_once_it_is_resent(
    world: World,
) -> None:
    item = world.started()
    approved = world.tracker.set_state(PROJECT, item.ref, "Approved")  # before the plan
    world.sync.receive("early", json.dumps(world.tracker.webhook(PROJECT, item.ref)).encode())
    world.sync.drain()  # not waiting yet: ignored
    world.tracker.down = True
    world.rig.run_until_idle()  # the question fails to reach the tracker
    world.tracker.down = False
    world.poll()  # the question is asked again before the poll reads the item
    task = world.task(item)
    assert (task.status, task.waiting_for) == (TaskStatus.WAITING, "approve-plan")
    assert not [e for e in world.rig.store.events(task.id) if e.kind == EventKind.APPROVE]
    link = world.rig.store.item_link(world.tracker.name, item.ref)
    # answers start after the question, which moved the item from the approval left before it
    asked = world.now(item)
    assert asked.state == "Needs Review" and asked.updated != approved.updated
    assert link is not None and link.acted_on == asked.updated
    world.tracker.set_state(PROJECT, item.ref, "Approved")  # approved once asked
    world.poll()
    world.rig.run_until_idle()
    assert world.task(item).waiting_for == "confirm-deploy"
