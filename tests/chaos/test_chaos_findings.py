"""What `orch chaos --world plane-gitea` found, each made deterministic on memory adapters: red
while orch has the fault, green once it is fixed (docs/reliability.md: every failing seed becomes
a regression test)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from orch.adapters.trackers.memory import MemoryTracker
from orch.domain.states import TaskStatus
from orch.ports import ItemHint, WorkItem
from orch.services.reporting import TrackerReport
from orch.services.tracking import TrackerSync
from orch.testing import InstantAgent, Rig, memory_store, project_rules, rig

PROJECT = "proj-1"
RULES = project_rules(PROJECT, {"analysis": "Analysing", "waiting": "Needs Review", "done": "Done"})
STATES = ["Backlog", "To Analyse", "Analysing", "Needs Review", "Approved", "Done", "STOP"]
STATES += ["Rejected", "Confirm Deploy"]


@dataclass
class World:
    rig: Rig
    tracker: MemoryTracker
    sync: TrackerSync

    def move(self, item: WorkItem, state: str) -> WorkItem:
        self.tracker.set_state(PROJECT, item.ref, state)
        return self.now(item)

    def now(self, item: WorkItem) -> WorkItem:
        found = self.tracker.item(PROJECT, item.ref)
        assert found is not None
        return found

    def deliver(self, item: WorkItem, delivery: str) -> None:
        body = json.dumps(self.tracker.webhook(PROJECT, item.ref)).encode()
        self.sync.receive(delivery, body)
        self.sync.drain()

    def task_status(self, item: WorkItem) -> TaskStatus:
        link = self.rig.store.item_link(self.tracker.name, item.ref)
        assert link is not None
        task = self.rig.store.find_task(link.key)
        assert task is not None
        return task.status


@pytest.fixture
def world() -> Iterator[World]:
    store = memory_store()
    tracker = MemoryTracker(states={PROJECT: STATES})
    r = rig(
        {"default": InstantAgent()},
        store=store,
        reporter=TrackerReport(store, tracker, [RULES]),
    )
    yield World(r, tracker, TrackerSync(store, tracker, r.intake, [RULES]))
    r.close()


def test_a_stop_given_while_the_task_runs_is_not_undone_by_orchs_report(world: World) -> None:
    # seeds 3, 5 and 6 of `orch chaos --world plane-gitea`: the person moved the item to STOP
    # while its task ran; before orch worked the STOP's delivery (or polled), the task reached
    # its wait and orch's report moved the item from STOP to "Needs Review"; the STOP's delivery
    # and every poll then read "Needs Review", and the task went on as if never stopped
    item = world.tracker.add(PROJECT, "Add a greeting", "Say hello.", state="Backlog")
    world.deliver(world.move(item, "To Analyse"), "d-1")
    world.move(item, "STOP")  # its delivery is on its way

    world.rig.run_until_idle()  # the task runs on to its question meanwhile
    world.deliver(world.now(item), "d-2")
    world.sync.reconcile()
    world.rig.run_until_idle()

    assert world.task_status(item) == TaskStatus.CANCELLED


class SlowFirstMove:
    """The tracker as TrackerSync sees it, with a slow first move: while its read of the item
    takes long, `meanwhile` happens."""

    def __init__(self, tracker: MemoryTracker, meanwhile: Callable[[], object]) -> None:
        self.tracker = tracker
        self.name = tracker.name
        self.meanwhile: Callable[[], object] | None = meanwhile

    def item(self, project: str, ref: str) -> WorkItem | None:
        return self.tracker.item(project, ref)

    def items(self, project: str) -> Iterator[WorkItem]:
        return self.tracker.items(project)

    def state_names(self, project: str) -> list[str]:
        return self.tracker.state_names(project)

    def move(self, item: WorkItem, state: str) -> bool:
        if self.meanwhile is not None:
            happen, self.meanwhile = self.meanwhile, None
            happen()
        return self.tracker.move(item, state)

    def comment(self, item: WorkItem, key: str, html: str) -> bool:
        return self.tracker.comment(item, key, html)

    def latest_comment(self, item: WorkItem) -> str:
        return self.tracker.latest_comment(item)

    def hint(self, payload: Mapping[str, Any]) -> ItemHint | None:
        return self.tracker.hint(payload)


def test_an_answer_given_before_orchs_report_lands_is_not_undone_by_it(world: World) -> None:
    # seeds 2 and 6: orch started the task and reported it "Analysing", its read of the item
    # slowed by a fault; meanwhile the task reached its question and the person answered it;
    # the report then moved the item from "Approved" on, and the answer was never recorded
    item = world.tracker.add(PROJECT, "Add a greeting", "Say hello.", state="Backlog")

    def meanwhile() -> None:
        world.rig.run_until_idle()  # the task waits at approve-plan
        world.move(item, "Approved")  # the person answers; the delivery is on its way

    world.sync = TrackerSync(
        world.rig.store, SlowFirstMove(world.tracker, meanwhile), world.rig.intake, [RULES]
    )
    world.deliver(world.move(item, "To Analyse"), "d-1")
    world.deliver(world.now(item), "d-2")  # the answer's delivery, read now
    world.sync.reconcile()
    world.rig.run_until_idle()

    link = world.rig.store.item_link(world.tracker.name, item.ref)
    assert link is not None
    task = world.rig.store.find_task(link.key)
    assert task is not None and task.waiting_for == "confirm-deploy"  # the plan was approved
