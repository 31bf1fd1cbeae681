"""A hosted tracker drives tasks (orch.services.tracking) and hears back as they move
(orch.services.reporting): on memory adapters, with the in-memory tracker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from orch.adapters.trackers import TrackerUnavailable
from orch.adapters.trackers.memory import MemoryTracker
from orch.config import load_settings
from orch.domain.errors import ConfigError, OrchError
from orch.domain.news import News, NewsKind
from orch.domain.states import EventKind, Stage, TaskStatus
from orch.ports import WorkItem
from orch.services.reporting import TrackerReport
from orch.services.tracking import ProjectRules, TrackerSync
from orch.testing import InstantAgent, Rig, memory_store, project_rules, rig

PROJECT = "proj-1"
RULES = project_rules(PROJECT, {"analysis": "Analysing", "waiting": "Needs Review", "done": "Done"})
STATES = [
    "Backlog",
    "To Analyse",
    "Analysing",
    "Needs Review",
    "Approved",
    "Rejected",
    "Confirm Deploy",
    "Done",
    "STOP",
]


@dataclass
class World:
    rig: Rig
    tracker: MemoryTracker
    sync: TrackerSync

    def item(self, title: str = "Add a greeting") -> WorkItem:
        return self.tracker.add(PROJECT, title, "Say hello.", state="Backlog")

    def move(self, item: WorkItem, state: str) -> WorkItem:
        self.tracker.set_state(PROJECT, item.ref, state)
        return self.now(item)

    def now(self, item: WorkItem) -> WorkItem:
        found = self.tracker.item(PROJECT, item.ref)
        assert found is not None
        return found

    def deliver(self, item: WorkItem, delivery: str, *, own: bool = False) -> bool:
        body = json.dumps(self.tracker.webhook(PROJECT, item.ref, own=own)).encode()
        stored = self.sync.receive(delivery, body)
        self.sync.drain()
        return stored

    def task(self, item: WorkItem) -> Any:
        link = self.rig.store.item_link(self.tracker.name, item.ref)
        assert link is not None, "the item has no task"
        return self.rig.store.find_task(link.key)


class CrossedTracker(MemoryTracker):
    """A tracker without conditional writes, as Plane is: `crossing` is a person's move that
    lands just before orch's next move to "Needs Review", which then (as the Plane adapter
    does, from the item's activity) puts it back."""

    crossing = ""

    def move(self, item: WorkItem, state: str) -> bool:
        if state != "Needs Review" or not self.crossing:
            return super().move(item, state)
        self.set_state(item.project, item.ref, self.crossing)  # theirs lands first
        super().move(replace(item, state=self.crossing), state)  # orch's lands on it
        self.set_state(item.project, item.ref, self.crossing)  # ... and theirs is put back
        self.crossing = ""
        return False


def make_world(rules: ProjectRules) -> World:
    store = memory_store()
    tracker = CrossedTracker(states={PROJECT: STATES})
    r = rig(
        {"default": InstantAgent()},
        store=store,
        reporter=TrackerReport(store, tracker, [rules]),
    )
    return World(r, tracker, TrackerSync(store, tracker, r.intake, [rules]))


@pytest.fixture
def world() -> Iterator[World]:
    made = make_world(RULES)
    yield made
    made.rig.close()


@pytest.fixture
def quiet_world() -> Iterator[World]:
    """orch moves no item: they stay in the states people put them in."""
    made = make_world(replace(RULES, report={}))
    yield made
    made.rig.close()


def test_an_item_moved_to_the_start_state_files_and_starts_a_task(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    assert world.deliver(item, "d-1")
    task = world.task(item)
    assert (task.key, task.title, task.status) == (item.key, "Add a greeting", TaskStatus.ACTIVE)
    assert world.now(item).state == "Analysing"  # the report map, as the task started
    ticket = world.rig.store.get_ticket(item.key)
    assert ticket is not None and ticket.body == "Say hello."


def test_a_delivery_stored_before_is_not_worked_again(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    assert world.deliver(item, "d-1") is True
    assert world.deliver(item, "d-1") is False
    outcomes = [d.outcome for d in world.rig.store.deliveries("memory")]
    assert len(outcomes) == 1 and outcomes[0].startswith("started")


def test_orchs_own_change_coming_back_is_ignored(world: World) -> None:
    item = world.move(world.item(), "Analysing")
    world.deliver(item, "d-1", own=True)
    assert world.rig.store.item_link(world.tracker.name, item.ref) is None
    assert world.rig.store.deliveries("memory")[0].outcome == "ignored: orch's own change"


def test_a_persons_stop_orch_put_back_stops_the_task(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    task = world.task(item)
    # orch's write had landed on the person's STOP, and orch put it back: its own move
    world.deliver(world.move(item, "STOP"), "d-2", own=True)
    world.rig.run_until_idle()
    assert world.rig.store.get_task(task.id).status == TaskStatus.CANCELLED
    assert world.rig.store.deliveries("memory")[-1].outcome == "stop asked"


def test_a_plan_approved_in_the_tracker_lets_the_task_go_on(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.rig.run_until_idle()
    task = world.task(item)
    assert (task.status, task.waiting_for) == (TaskStatus.WAITING, "approve-plan")
    assert world.now(item).state == "Needs Review"
    world.deliver(world.move(item, "Approved"), "d-2")
    world.rig.run_until_idle()
    task = world.task(item)
    assert task.waiting_for == "confirm-deploy"
    approvals = [e for e in world.rig.store.events(task.id) if e.kind == EventKind.APPROVE]
    assert [e.actor for e in approvals] == ["memory:person"]


def test_an_item_left_approved_does_not_answer_the_next_question(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.rig.run_until_idle()
    world.deliver(world.move(item, "Approved"), "d-2")
    world.rig.run_until_idle()
    # the item was moved on by orch (report: waiting), then put back as it was, unchanged since
    task = world.task(item)
    assert task.waiting_for == "confirm-deploy"
    world.tracker.put_back(PROJECT, item.ref, "Approved")  # same stamp: not a new request
    assert world.sync.reconcile() == []
    assert world.task(item).status == TaskStatus.WAITING


def test_a_rejection_carries_the_latest_comment_as_its_reason(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.rig.run_until_idle()
    world.tracker.add_comment(PROJECT, item.ref, "Use the existing greeter module.")
    world.deliver(world.move(item, "Rejected"), "d-2")
    task = world.task(item)
    rejects = [e for e in world.rig.store.events(task.id) if e.kind == EventKind.REJECT]
    assert rejects[0].payload["comment"] == "Use the existing greeter module."
    world.rig.run_until_idle()
    agent = world.rig.engine.tools.agents["default"]
    assert isinstance(agent, InstantAgent)
    again = [r for r in agent.started if r.stage == Stage.ANALYSIS][-1]
    assert "Use the existing greeter module." in again.prompt


def test_confirm_deploy_answers_only_the_deploy_question(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.rig.run_until_idle()
    world.deliver(world.move(item, "Confirm Deploy"), "d-2")
    assert world.task(item).waiting_for == "approve-plan"  # not a deploy: nothing recorded
    world.deliver(world.move(item, "Approved"), "d-3")
    world.rig.run_until_idle()
    world.deliver(world.move(item, "Confirm Deploy"), "d-4")
    world.rig.run_until_idle()
    task = world.task(item)
    assert task.status == TaskStatus.DONE
    assert world.now(item).state == "Done"


def test_a_stop_seen_only_by_the_poll_cancels_the_task(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.sync.reconcile()  # no webhook at all: the poll starts it
    world.rig.run_until_idle()
    world.move(item, "STOP")  # its delivery is lost
    done = world.sync.reconcile()
    assert done == [f"{item.key}: stop asked"]
    world.rig.run_until_idle()
    assert world.task(item).status == TaskStatus.CANCELLED


def test_a_late_delivery_acts_on_the_state_the_item_is_in_now(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.rig.run_until_idle()
    approved = world.tracker.webhook(PROJECT, item.ref)
    world.move(item, "STOP")
    world.deliver(world.now(item), "d-3")  # the STOP's delivery came first
    world.sync.receive("d-2", json.dumps(approved).encode())  # the approval's, late
    world.sync.drain()
    world.rig.run_until_idle()
    task = world.task(item)
    assert task.status == TaskStatus.CANCELLED
    assert not [e for e in world.rig.store.events(task.id) if e.kind == EventKind.APPROVE]


def test_an_item_started_again_after_a_stop_is_a_fresh_task(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.deliver(world.move(item, "STOP"), "d-2")
    world.rig.run_until_idle()
    first = world.task(item)
    assert first.status == TaskStatus.CANCELLED
    world.deliver(world.move(item, "To Analyse"), "d-3")
    second = world.task(item)
    assert second.id != first.id and second.status == TaskStatus.ACTIVE
    assert second.stage == Stage.ANALYSIS


def test_an_item_left_in_the_start_state_after_its_task_ended_starts_nothing(
    world: World,
) -> None:
    tracker = world.tracker
    item = world.move(world.item(), "To Analyse")
    world.sync.reconcile()
    task = world.task(item)
    world.rig.intake.stop(task.key, "ann")
    world.rig.run_until_idle()
    tracker.put_back(PROJECT, item.ref, "To Analyse")  # as it was when it started, unchanged
    assert world.sync.reconcile() == []
    assert world.task(item).id == task.id


def test_each_stage_left_and_each_question_is_commented_once(world: World) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.rig.run_until_idle()
    comments = world.tracker.comments(PROJECT, item.ref)
    texts = [c.text for c in comments if c.own]
    assert len(texts) == 1 and "Approve the plan" in texts[0]  # analysis -> wait
    world.deliver(world.move(item, "Approved"), "d-2")
    world.rig.run_until_idle()
    texts = [c.text for c in world.tracker.comments(PROJECT, item.ref) if c.own]
    assert any("architecture done" in t and "passed" in t for t in texts)
    assert len(texts) == len(set(texts))


def test_an_approval_given_before_the_question_does_not_answer_it(quiet_world: World) -> None:
    world = quiet_world
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    world.deliver(world.move(item, "Approved"), "d-2")  # the plan is not written yet
    assert world.rig.store.deliveries("memory")[-1].outcome.startswith("ignored")
    world.rig.run_until_idle()  # the question is asked; the item is still "Approved"
    assert world.now(item).state == "Approved"
    assert world.sync.reconcile() == []
    task = world.task(item)
    assert (task.status, task.waiting_for) == (TaskStatus.WAITING, "approve-plan")
    world.deliver(world.move(item, "Approved"), "d-3")  # moved again, once asked
    world.rig.run_until_idle()
    assert world.task(item).waiting_for == "confirm-deploy"


def test_an_edit_of_an_item_left_in_the_start_state_starts_no_new_task(
    quiet_world: World,
) -> None:
    world = quiet_world
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    first = world.task(item)
    world.rig.intake.stop(first.key, "telegram:42:ann")  # stopped elsewhere: no move in Plane
    world.rig.run_until_idle()
    world.tracker.edit(PROJECT, item.ref, title="Add a greeting, politely")
    body = world.tracker.webhook(PROJECT, item.ref, field="name")
    world.sync.receive("d-2", json.dumps(body).encode())
    world.sync.drain()
    assert world.sync.reconcile() == []
    assert world.task(item).id == first.id
    # moved out and back in: a new start
    world.deliver(world.move(item, "Backlog"), "d-3")
    world.deliver(world.move(item, "To Analyse"), "d-4")
    assert world.task(item).id != first.id


class AnswersAtOnce:
    """A notifier through which a person answers in the tracker the moment the question
    reaches them, before the task is recorded as waiting."""

    def __init__(self) -> None:
        self.world: World | None = None
        self.item: WorkItem | None = None

    def notify(self, key: str, text: str, news: Any = None) -> None:
        if news is not None and news.kind == "waiting" and self.world and self.item:
            self.world.deliver(self.world.move(self.item, "Approved"), f"at-once-{key}")


def test_an_answer_given_as_the_question_is_asked_is_not_lost() -> None:
    store = memory_store()
    tracker = MemoryTracker(states={PROJECT: STATES})
    person = AnswersAtOnce()
    quiet = replace(RULES, report={})
    r = rig(
        {"default": InstantAgent()},
        store=store,
        notifier=person,  # type: ignore[arg-type]
        reporter=TrackerReport(store, tracker, [quiet]),
    )
    world = World(r, tracker, TrackerSync(store, tracker, r.intake, [quiet]))
    try:
        item = world.move(world.item(), "To Analyse")
        person.world, person.item = world, item
        world.deliver(item, "d-1")
        r.run_until_idle()
        task = world.task(item)
        assert task.waiting_for == "approve-plan"  # the answer came too early to count...
        assert world.sync.reconcile() == [f"{item.key}: approved approve-plan"]  # ...till now
    finally:
        r.close()


class DownTracker(MemoryTracker):
    """A tracker that does not answer: each read fails as Plane's does after its retries."""

    def __init__(self) -> None:
        super().__init__(states={PROJECT: STATES})
        self.reads = 0

    def item(self, project: str, ref: str) -> WorkItem | None:
        self.reads += 1
        raise TrackerUnavailable("Plane failed GET .../work-items/x/ 5 times; the last: 503")


def test_a_tracker_that_is_down_fails_reports_at_once_after_a_few(world: World) -> None:
    tracker = DownTracker()
    report = TrackerReport(world.rig.store, tracker, [RULES])
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")  # the link to the item exists
    news = News(NewsKind.STAGE_DONE, "left analysis", task_key=world.task(item).key)
    for n in range(3):
        with pytest.raises(TrackerUnavailable):
            report.notify(f"k{n}", news.text, news)
    with pytest.raises(OrchError, match="circuit"):
        report.notify("k3", news.text, news)
    assert tracker.reads == 3  # the fourth did not wait on it


def test_an_approval_made_while_the_question_was_being_asked_does_not_answer_it(
    world: World,
) -> None:
    item = world.move(world.item(), "To Analyse")
    world.deliver(item, "d-1")
    assert isinstance(world.tracker, CrossedTracker)
    world.tracker.crossing = "Approved"  # before the question could be seen
    world.rig.run_until_idle()
    task = world.task(item)
    assert (task.status, task.waiting_for) == (TaskStatus.WAITING, "approve-plan")
    assert world.now(item).state == "Needs Review"  # asked again: theirs came too early
    world.deliver(world.now(item), "d-2")  # its delivery, late
    world.sync.reconcile()
    world.rig.run_until_idle()
    assert world.task(item).waiting_for == "approve-plan"
    assert not [e for e in world.rig.store.events(task.id) if e.kind == EventKind.APPROVE]
    world.deliver(world.move(item, "Approved"), "d-3")  # approved once asked
    world.rig.run_until_idle()
    assert world.task(item).waiting_for == "confirm-deploy"
    assert [e.kind for e in world.rig.store.events(task.id)].count(EventKind.APPROVE) == 1


def test_a_report_into_a_state_that_asks_is_refused_by_the_settings() -> None:
    project = {"id": "p-1", "repo": "app", "report": {"analysis": "Analysing", "done": "STOP"}}
    tracker = {"kind": "plane", "url": "https://plane.example", "workspace": "team"}
    with pytest.raises(ConfigError, match=r"done -> STOP.*report into states of their own"):
        load_settings(tracker={**tracker, "projects": [project]})
