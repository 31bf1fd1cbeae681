"""Each task is shown as a pull request on a forge that has them: opened at its first push,
described with its stages, each verdict a commit status; one pull request per change."""

from __future__ import annotations

from orch.domain.errors import ForgeUnavailable
from orch.domain.model import Task
from orch.domain.states import TaskStatus
from orch.ports import PullRequest, PullState, StatusState
from orch.services.pulls import Pulls
from orch.testing import InstantAgent, Rig, rig


def test_a_task_is_one_pull_request_with_a_status_per_gate_and_what_landed_shows_its_checks() -> (
    None
):
    r = rig({"default": InstantAgent()})
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        [pull] = r.forge.pulls["app"]
        assert pull.state == PullState.OPEN and "analysis" in pull.body
        assert r.intake.decide(task.key, True, "ann")
        r.run_until_idle()
        assert r.intake.decide(task.key, True, "ann")
        r.run_until_idle()
        assert r.store.get_task(task.id).status == TaskStatus.DONE
        [pull] = r.forge.pulls["app"]  # still the one: no second after the merge
        assert pull.state == PullState.MERGED
        landed = r.forge.merges[0][2]
        shown = r.forge.statuses[("app", landed)]
        assert {"orch/merge-candidate", "orch/integrity"} <= set(shown)
        assert {state for state, _, _ in shown.values()} == {StatusState.SUCCESS}
    finally:
        r.close()


def test_a_ticket_started_again_after_a_stop_gets_a_pull_request_of_its_own() -> None:
    r = rig({"default": InstantAgent()})
    try:
        first = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        r.intake.stop(first.key, "ann")
        r.run_until_idle()
        [old] = r.forge.pulls["app"]
        assert old.state == PullState.CLOSED  # its branch was deleted
        r.forge.move_default("app", {"OTHER.md": b"meanwhile"})
        again = r.intake.start(first.key)
        r.run_until_idle()
        assert again.id != first.id
        numbers = [(p.number, p.state) for p in r.forge.pulls["app"]]
        assert numbers == [(old.number, PullState.CLOSED), (old.number + 1, PullState.OPEN)]
    finally:
        r.close()


def merged(r: Rig) -> tuple[Task, str, PullRequest]:
    """A task whose change was merged, waiting to deploy; the default branch's head before
    it; its pull request."""
    before = r.forge.branch_head("app", "main")
    assert before is not None
    task = r.intake.file("app", "Add a greeting")
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "ann")
    r.run_until_idle()
    [pull] = r.forge.pulls["app"]
    assert pull.state == PullState.MERGED
    return r.store.get_task(task.id), before, pull


def test_a_forge_that_cannot_say_whether_a_change_landed_gets_no_second_pull_request() -> None:
    r = rig({"default": InstantAgent()})
    try:
        task, before, _ = merged(r)
        r.forge.fail_find = ForgeUnavailable("GET /pulls: 503")
        # a head its pull request does not hold: only whether it landed could tell
        shown = Pulls(r.engine.tools).show(task, before, [])
        assert shown is None  # not now; asked again with the next stage
        assert [p.state for p in r.forge.pulls["app"]] == [PullState.MERGED]
    finally:
        r.close()


def test_a_head_pushed_after_the_merge_by_a_worker_that_lost_its_lease_opens_no_second_pull() -> (
    None
):
    r = rig({"default": InstantAgent()})
    try:
        task, before, pull = merged(r)
        # a stale worker's head: built before the merge, under neither the pull nor main
        stale = r.forge.push_commit("app", "orch/stale", {"STALE.md": b"late"}, before)
        shown = Pulls(r.engine.tools).show(task, stale, [])
        assert shown is not None and shown.number == pull.number
        assert [p.state for p in r.forge.pulls["app"]] == [PullState.MERGED]
    finally:
        r.close()
