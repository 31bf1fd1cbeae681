"""The pieces of `orch chaos --world plane-gitea`, on crafted data and a real fake Plane: each
check of pull requests, starts and answers catches the violation it exists for and passes the
same data without it; the fault injector hits only its targets, at its rate, only while
enabled; the conductor sends deliveries again and holds them back as asked."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orch import invariants
from orch.chaos import outside_checks as oc
from orch.chaos.deliveries import ChaosPlane, Conductor
from orch.chaos.hazards import FORGE_TARGETS, TRACKER_TARGETS, RandomFaults
from orch.chaos.plane_person import Item, Move, States
from orch.domain.model import Effect, Event, Task, Transition
from orch.domain.states import EffectState, EventKind, Stage, TaskStatus

KEY = "R1-1"
ITEM = Item(KEY, "project", "item-1", "repo1")
STATES = States()


def task(status: TaskStatus = TaskStatus.DONE, task_id: int = 1, at: float = 100.0) -> Task:
    stage = {TaskStatus.DONE: Stage.DONE, TaskStatus.CANCELLED: Stage.CANCELLED}.get(
        status, Stage.ARCHITECTURE
    )
    return Task(task_id, KEY, "repo1", "t", "", stage, status, 3, f"orch/{KEY}", {}, created_at=at)


def moved(at: float, state: str, why: str, version: int = 0) -> Move:
    return Move(at, KEY, state, why, version, "approve-plan" if version else "")


def tr(version: int, to_status: TaskStatus, at: float, task_id: int = 1) -> Transition:
    return Transition(
        task_id,
        version,
        Stage.ANALYSIS,
        Stage.ARCHITECTURE,
        TaskStatus.ACTIVE,
        to_status,
        "x",
        "",
        at,
    )


def approved(at: float, version: int = 2, task_id: int = 1) -> Event:
    payload = {"checkpoint": "approve-plan", "comment": ""}
    return Event(
        1, task_id, f"{task_id}:v{version}:decision", EventKind.APPROVE, "plane:pat", payload, at
    )


def evidence(
    tasks: list[Task],
    transitions: dict[int, list[Transition]] | None = None,
    events: list[Event] | None = None,
    moves: list[Move] | None = None,
    **kw: Any,
) -> oc.Evidence:
    record = invariants.Record(tasks, transitions or {}, [], [], [], events or [], 1000.0)
    start = [moved(99.0, STATES.start, "start")]
    defaults: dict[str, Any] = {"pulls": {}, "merge_calls": [], "comments": {}}
    return oc.Evidence(record, {KEY: ITEM}, start + (moves or []), STATES, **(defaults | kw))


def pull(number: int, merged: bool, branch: str = f"orch/{KEY}") -> dict[str, Any]:
    state = "closed" if merged else "open"
    return {"number": number, "merged": merged, "state": state, "head": {"ref": branch}}


# -- F11 pulls -----------------------------------------------------------------------------------


def test_one_merged_pull_request_per_branch_passes() -> None:
    e = evidence([task()], pulls={"repo1": [pull(1, True), pull(2, False, "orch/R1-2")]})

    assert oc.check_pulls(e).violations == []


def test_a_second_pull_request_for_a_task_branch_is_caught() -> None:
    e = evidence([task()], pulls={"repo1": [pull(1, True), pull(2, False)]})

    finding = oc.check_pulls(e)

    assert finding.violations == [
        "repo1: 2 pull requests for orch/R1-1: #1 merged (opened ?), #2 open (opened ?)"
    ]
    assert finding.figures["opened_twice"] == 1


def test_a_branch_merged_by_two_pull_requests_is_caught() -> None:
    e = evidence([task()], pulls={"repo1": [pull(1, True), pull(2, True)]})

    assert oc.check_pulls(e).figures["merged_twice"] == 1


def test_a_pull_request_that_answered_two_merges_is_caught() -> None:
    calls = [("repo1", 1, 200), ("repo1", 1, 405), ("repo1", 1, 200)]
    e = evidence([task()], pulls={"repo1": [pull(1, True)]}, merge_calls=calls)

    finding = oc.check_pulls(e)

    assert finding.violations == ["repo1: pull request #1 answered a merge 2 times"]
    assert finding.figures["merge_calls_refused_as_merged"] == 1


def test_one_landing_recorded_by_two_merge_effects_is_caught() -> None:
    def merge(head: str) -> Effect:
        result = {"merge_sha": "m" * 40}
        return Effect(
            f"{KEY}#1:deploy-staging:merge:{head}", 1, "merge", EffectState.SUCCEEDED, head, result
        )

    e = evidence([task()], pulls={"repo1": [pull(1, True)]})
    e.history.effects.extend([merge("h" * 40), merge("m" * 40)])

    finding = oc.check_pulls(e)

    assert finding.figures["merges_recorded_twice"] == 1
    assert "recorded 2 times" in finding.violations[0]


# -- F12 starts ----------------------------------------------------------------------------------


def test_one_task_per_start_passes() -> None:
    assert oc.check_starts(evidence([task()])).violations == []


def test_a_task_relaunched_after_its_cancel_is_caught() -> None:
    tasks = [task(TaskStatus.CANCELLED), task(TaskStatus.DONE, task_id=2, at=150.0)]

    finding = oc.check_starts(evidence(tasks))

    assert finding.figures["started_twice"] == 1
    assert finding.figures["relaunched"] == 1


def test_a_start_that_never_became_a_task_is_lost() -> None:
    assert oc.check_starts(evidence([])).figures["lost_starts"] == 1


def test_an_item_stopped_before_its_task_started_is_not_lost() -> None:
    e = evidence([], moves=[moved(99.5, STATES.stop, "quick stop")])

    assert oc.check_starts(e).violations == []


def test_a_comment_posted_twice_under_one_key_is_caught() -> None:
    comments = {KEY: [{"external_id": "k1"}, {"external_id": "k2"}, {"external_id": "k1"}]}

    finding = oc.check_starts(evidence([task()], comments=comments))

    assert finding.violations == [f"{KEY}: comment k1 posted 2 times"]


# -- F12 answers ---------------------------------------------------------------------------------


def test_an_answer_given_after_its_question_passes() -> None:
    e = evidence(
        [task(TaskStatus.ACTIVE)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.0), tr(2, TaskStatus.WAITING, 110.0)]},
        events=[approved(112.0)],
        moves=[moved(111.0, STATES.approve, "answer", version=2)],
    )

    assert oc.check_answers(e).violations == []


def test_an_answer_given_before_its_question_and_applied_is_caught() -> None:
    e = evidence(
        [task(TaskStatus.ACTIVE)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.0), tr(2, TaskStatus.WAITING, 110.0)]},
        events=[approved(110.5)],
        moves=[moved(105.0, STATES.approve, "early")],
    )

    finding = oc.check_answers(e)

    assert finding.figures["answered_before_asked_applied"] == 1
    assert "5.0s before the question was asked" in finding.violations[0]


def test_a_stop_never_recorded_is_caught_with_what_orch_did_to_it() -> None:
    e = evidence(
        [task(TaskStatus.WAITING)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.0), tr(2, TaskStatus.WAITING, 110.0)]},
        moves=[moved(105.0, STATES.stop, "stop")],
        overwrites=[oc.Overwrite(105.2, KEY, STATES.stop, "In Progress")],
    )

    finding = oc.check_answers(e)

    assert finding.figures["not_heard"] == 1
    assert "orch moved it from STOP to In Progress" in finding.violations[0]


def test_an_answer_undone_only_by_a_write_plane_did_late_is_counted_apart() -> None:
    e = evidence(
        [task(TaskStatus.WAITING)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.0), tr(2, TaskStatus.WAITING, 110.0)]},
        moves=[moved(111.0, STATES.approve, "answer", version=2)],
        overwrites=[oc.Overwrite(111.5, KEY, STATES.approve, STATES.review, late=True)],
    )

    finding = oc.check_answers(e)

    assert finding.violations == []
    assert finding.figures["not_heard_late_writes"] == 1


def test_a_stop_before_a_task_orch_started_late_must_still_end_it() -> None:
    e = evidence(
        [task(TaskStatus.WAITING)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.2), tr(2, TaskStatus.WAITING, 101.0)]},
        moves=[moved(100.1, STATES.stop, "quick stop")],
        overwrites=[oc.Overwrite(100.25, KEY, STATES.stop, "Analysing")],
    )

    finding = oc.check_answers(e)

    assert finding.figures["not_heard"] == 1
    assert "orch started task 1 0.10s after it" in finding.violations[0]
    assert "orch moved it from STOP to Analysing" in finding.violations[0]


def test_a_stop_recorded_in_time_passes() -> None:
    stop = Event(2, 1, "1:stop", EventKind.STOP, "plane:pat", {}, 105.5)
    e = evidence(
        [task(TaskStatus.CANCELLED)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.0), tr(2, TaskStatus.CANCELLED, 106.0)]},
        events=[stop],
        moves=[moved(105.0, STATES.stop, "stop")],
    )

    assert oc.check_answers(e).violations == []


def test_an_answer_never_recorded_is_caught() -> None:
    e = evidence(
        [task(TaskStatus.WAITING)],
        transitions={1: [tr(1, TaskStatus.ACTIVE, 100.0), tr(2, TaskStatus.WAITING, 110.0)]},
        moves=[moved(111.0, STATES.approve, "answer", version=2)],
    )

    assert oc.check_answers(e).figures["not_heard"] == 1


# -- the fault injector --------------------------------------------------------------------------


def test_faults_hit_only_their_targets_and_only_while_enabled() -> None:
    faults = RandomFaults(FORGE_TARGETS, 1.0, random.Random(1), slow_s=3.0)
    merge = "/api/v1/repos/orch/repo1/pulls/3/merge"

    assert faults.take("POST", merge) is None  # not enabled yet
    faults.enabled = True
    assert faults.take("GET", "/api/v1/repos/orch/repo1/pulls/3") is None  # a read
    assert faults.take("POST", merge) is not None
    assert faults.take("POST", "/orch/repo1.git/git-receive-pack") is not None
    assert faults.total() == 2
    assert set(faults.by_target()) == {"merge", "push"}
    assert faults.requests["merge"] == 2


def test_faults_come_at_their_rate() -> None:
    faults = RandomFaults(TRACKER_TARGETS, 0.2, random.Random(7), slow_s=3.0)
    faults.enabled = True

    hit = [faults.take("GET", "/api/v1/users/me/") for _ in range(1000)]

    assert 120 < sum(f is not None for f in hit) < 280
    assert set(faults.by_kind()) == {"5xx", "429", "slow", "drop"}


# -- the conductor -------------------------------------------------------------------------------


class _Receiver:
    """A webhook receiver on 127.0.0.1 that remembers each delivery id it was sent."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.ids.append(self.headers.get("X-Plane-Delivery", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@dataclass
class World:
    plane: ChaosPlane
    receiver: _Receiver
    project: str
    item: str  # the work item's id


@pytest.fixture
def world() -> Iterator[World]:
    receiver = _Receiver()
    receiver.thread.start()
    with ChaosPlane("token") as plane:
        plane.subscribe(receiver.url, "secret")
        project = plane.add_project("repo1", "R1")
        item = plane.add_item(project, "a ticket")
        yield World(plane, receiver, project, item["id"])
        assert plane.violations == []
    receiver.server.shutdown()
    receiver.server.server_close()


def test_a_duplicated_delivery_is_sent_five_times(world: World) -> None:
    plane, receiver = world.plane, world.receiver
    conductor = Conductor(plane, random.Random(1), share=1.0)
    conductor.active = True
    plane.settle()

    conductor.scan()
    plane.settle()

    first = plane.deliveries[0].headers["X-Plane-Delivery"]
    assert receiver.ids.count(first) == 5
    counts = conductor.tally()
    assert counts.originals == 1 and counts.duplicates == 4
    assert len(receiver.ids) == 5 + counts.renamed


def test_a_reversed_release_sends_the_later_change_first(world: World) -> None:
    plane, project, item = world.plane, world.project, world.item
    conductor = Conductor(plane, random.Random(1), share=0.0)
    plane.settle()

    assert conductor.hold()
    assert not conductor.hold()  # one episode at a time
    plane.person_moves(project, item, "To Analyse")
    plane.person_moves(project, item, "STOP")
    conductor.release("reversed")
    plane.settle()

    states = [d.payload()["data"]["state"]["name"] for d in plane.deliveries[1:]]
    assert states == ["STOP", "To Analyse"]
    assert conductor.tally().reversed == 2


def test_a_stale_start_is_sent_again_after_the_stop(world: World) -> None:
    plane, project, item = world.plane, world.project, world.item
    conductor = Conductor(plane, random.Random(1), share=0.0)
    plane.person_moves(project, item, "To Analyse")
    plane.person_moves(project, item, "STOP")
    plane.settle()
    conductor.scan()

    assert conductor.replay_start(item, "To Analyse")
    plane.settle()

    again = [d.payload()["data"]["state"]["name"] for d in plane.deliveries[3:]]
    assert again == ["To Analyse", "To Analyse"]
    assert len(world.receiver.ids) == 5 and len(set(world.receiver.ids)) == 4
