"""Write-backs to Plane that failed while it was down are sent again once it is back, through
the Plane adapter against the fake Plane and its injected faults."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from orch.adapters.trackers.plane import PlaneTracker
from orch.domain.model import Effect
from orch.domain.states import EffectState
from orch.fakes.faults import Fault
from orch.fakes.plane import PlaneFake
from orch.services.reporting import TrackerReport
from orch.services.tracking import TrackerSync
from orch.testing import InstantAgent, Rig, SimClock, memory_store, project_rules, rig

TOKEN = "plane-key-5d1e07"
STATES = (
    ("Backlog", "backlog"),
    ("To Analyse", "unstarted"),
    ("Analysing", "started"),
    ("Needs Review", "started"),
    ("Approved", "started"),
    ("Rejected", "started"),
    ("Confirm Deploy", "started"),
    ("Done", "completed"),
    ("STOP", "cancelled"),
)


@dataclass
class World:
    fake: PlaneFake
    project: str
    rig: Rig
    report: TrackerReport
    sync: TrackerSync

    def started(self) -> str:
        """An item a person moved to the start state, its task started by the poll."""
        ref = str(self.fake.add_item(self.project, "Add a greeting", "<p>Say hello.</p>")["id"])
        self.fake.person_moves(self.project, ref, "To Analyse")
        self.sync.reconcile()
        return ref

    def down(self) -> None:
        self.fake.faults.add(Fault(status=503, times=1_000))

    def reports(self, ref: str) -> list[Effect]:
        link = self.rig.store.item_link("plane", ref)
        assert link is not None
        task = self.rig.store.find_task(link.key)
        assert task is not None
        return [e for e in self.rig.store.effects(task.id) if e.kind == "report"]

    def said(self, ref: str) -> list[str]:
        return [str(c["external_id"]) for c in self.fake.comments_of(self.project, ref)]


@pytest.fixture
def clock() -> SimClock:
    return SimClock(1_800_000_000.0)


@pytest.fixture
def world(clock: SimClock) -> Iterator[World]:
    with PlaneFake(TOKEN, clock=clock) as fake:
        project = fake.add_project("Orch", "ORCH", STATES)
        rules = project_rules(project, {"analysis": "Analysing", "waiting": "Needs Review"})
        tracker = PlaneTracker(
            fake.url, fake.slug, TOKEN, sleep=clock.sleep, clock=clock, max_tries=2
        )
        store = memory_store()
        report = TrackerReport(store, tracker, [rules])
        r = rig({"default": InstantAgent()}, store=store, reporter=report)
        sync = TrackerSync(store, tracker, r.intake, [rules], also=report.resend)
        try:
            yield World(fake, project, r, report, sync)
        finally:
            r.close()
            tracker.close()
        assert fake.violations == []


def test_a_question_that_failed_while_plane_was_down_is_asked_once_it_is_back(
    world: World,
) -> None:
    ref = world.started()
    assert world.fake.state_of(world.project, ref) == "Analysing"
    world.down()
    world.rig.run_until_idle()  # the plan is written; Plane answers 503 to all
    (question,) = world.reports(ref)
    assert question.state == EffectState.FAILED
    world.fake.faults.clear()
    assert world.report.resend() == 1
    assert world.fake.state_of(world.project, ref) == "Needs Review"
    assert world.said(ref) == [question.key]
    assert world.report.resend() == 0
    assert world.said(ref) == [question.key]


def test_a_comment_plane_made_whose_answer_was_lost_is_not_made_again(
    world: World, clock: SimClock
) -> None:
    ref = world.started()
    world.down()
    world.rig.run_until_idle()
    world.fake.faults.clear()
    world.fake.faults.add(Fault(method="POST", path="/comments/", drop=True))
    # while the client waits to look again, Plane stops answering: the look-up fails too
    clock.meanwhile.append(
        lambda: world.fake.faults.add(Fault(method="GET", path="/comments/", status=503, times=2))
    )
    assert world.report.resend() == 0
    assert [e.state for e in world.reports(ref)] == [EffectState.FAILED]
    assert world.report.resend() == 1
    (question,) = world.reports(ref)
    assert question.state == EffectState.SUCCEEDED
    assert world.said(ref) == [question.key]
    posts = [e for e in world.fake.exchanges if e.method == "POST" and "/comments/" in e.path]
    assert len(posts) == 1
