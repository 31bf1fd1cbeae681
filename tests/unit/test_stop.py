"""STOP at any moment, operator retries, checkpoint timers: the engine on memory adapters."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from orch.adapters.agents.scripted import ScriptedAgent
from orch.adapters.notifiers.log import MemoryNotifier
from orch.adapters.store import schema as tables
from orch.domain import pipeline as pl
from orch.domain.errors import Conflict, ForgeError, OrchError
from orch.domain.model import Task
from orch.domain.naming import merge_key
from orch.domain.news import News
from orch.domain.states import EffectState, JobState, Stage, TaskStatus
from orch.ports import DeployTarget, RepoSettings
from orch.testing import Rig, rig, sql_memory_store

NO_CHECKPOINTS = replace(pl.default_pipeline(), checkpoints=())


@pytest.fixture
def make_rig() -> Iterator[Any]:
    made: list[Rig] = []

    def make(
        playbook: Mapping[str, Any] | None = None,
        *,
        pipeline: pl.Pipeline | None = None,
        repo: RepoSettings | None = None,
    ) -> Rig:
        r = rig(
            {"default": ScriptedAgent(playbook=playbook)},
            pipeline=pipeline,
            repo=repo,
            kill_grace_s=0.5,
        )
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def now(r: Rig, task: Task) -> Task:
    return r.store.get_task(task.id)


def assert_cancelled_cleanly(r: Rig, task: Task, actor: str, reason: str) -> None:
    t = now(r, task)
    assert (t.stage, t.status) == (Stage.CANCELLED, TaskStatus.CANCELLED)
    last = r.store.transitions(task.id)[-1]
    assert last.actor == actor
    assert reason in last.reason
    assert ("app", task.branch) in r.forge.deleted
    assert r.forge.branch_head("app", task.branch) is None
    assert r.forge.branch_head("app", "main") is not None
    assert not r.forge.worktree_exists("app", task.branch)
    cancelled = [text for key, text in r.notifier.sent if "cancelled" in text]
    assert len(cancelled) == 1
    assert all(j.state != JobState.QUEUED for j in r.store.jobs(task.id))


def test_stop_of_a_queued_task_cancels_it_before_any_agent_runs(make_rig: Any) -> None:
    r = make_rig()
    task = r.intake.file("app", "Add a greeting")
    _, recorded = r.intake.stop(task.key, "ann", "wrong repository")
    assert recorded
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "ann", "wrong repository")
    assert r.store.runs(task.id) == []


@pytest.mark.parametrize("mode", ["hang", "stubborn"])
def test_stop_kills_a_running_agent_even_one_that_ignores_term(make_rig: Any, mode: str) -> None:
    r = make_rig({"stages": {"analysis": {"mode": mode}}})
    task = r.intake.file("app", "Add a greeting")
    worker = threading.Thread(target=r.dispatcher.run_once)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not r.store.runs(task.id) and time.monotonic() < deadline:
            time.sleep(0.02)
        [run] = r.store.runs(task.id)
        assert run.pid is not None
        r.intake.stop(task.key, "ann", "changed our minds")
    finally:
        worker.join(60)
    assert not worker.is_alive()
    assert_cancelled_cleanly(r, task, "ann", "changed our minds")
    with pytest.raises(ProcessLookupError):
        os.kill(run.pid, 0)


def test_stop_between_stages_cancels_before_the_next_stage_starts(make_rig: Any) -> None:
    r = make_rig(pipeline=NO_CHECKPOINTS)
    task = r.intake.file("app", "Add a greeting")
    assert r.dispatcher.run_once()  # analysis
    assert now(r, task).stage == Stage.ARCHITECTURE
    r.intake.stop(task.key, "ann", "")
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "ann", "stopped by ann")
    assert [run.stage for run in r.store.runs(task.id)] == [Stage.ANALYSIS]


@pytest.mark.parametrize("checkpoint", ["approve-plan", "confirm-deploy"])
def test_stop_while_waiting_at_a_checkpoint_cancels_the_task(
    make_rig: Any, checkpoint: str
) -> None:
    r = make_rig()
    task = r.intake.file("app", "Add a greeting")
    r.run_until_idle()
    if checkpoint == "confirm-deploy":
        r.intake.decide(task.key, True, "ann")
        r.run_until_idle()
    assert now(r, task).waiting_for == checkpoint
    r.intake.stop(task.key, "bob", "not now")
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "bob", "not now")


def test_stop_twice_is_recorded_once_and_notifies_once(make_rig: Any) -> None:
    r = make_rig()
    task = r.intake.file("app", "Add a greeting")
    assert r.intake.stop(task.key, "ann", "one")[1]
    assert not r.intake.stop(task.key, "bob", "two")[1]
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "ann", "one")
    assert r.intake.stop(task.key, "carl", "three") == (now(r, task), False)
    assert [e.kind for e in r.store.events(task.id)] == ["stop"]


def test_a_stage_that_finished_first_keeps_its_result_and_a_late_stop_changes_nothing(
    make_rig: Any,
) -> None:
    r = make_rig(pipeline=NO_CHECKPOINTS)
    task = r.intake.file("app", "Add a greeting")
    r.run_until_idle()
    assert now(r, task).status == TaskStatus.DONE
    # done deleted the merged branch once; the late stop deletes nothing more
    assert r.forge.deleted == [("app", task.branch)]
    assert r.intake.stop(task.key, "ann", "too late") == (now(r, task), False)
    r.run_until_idle()
    assert now(r, task).status == TaskStatus.DONE
    assert r.forge.deleted == [("app", task.branch)]


def test_a_stop_recorded_before_the_last_stage_completes_wins_over_done(make_rig: Any) -> None:
    r = make_rig(pipeline=NO_CHECKPOINTS)
    task = r.intake.file("app", "Add a greeting")
    while now(r, task).stage != Stage.DEPLOY:
        assert r.dispatcher.run_once()
    r.intake.stop(task.key, "ann", "hold the release")
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "ann", "hold the release")
    assert not [e for e in r.store.effects(task.id) if e.kind == "deploy:production"]


def test_a_stop_during_a_merge_in_flight_waits_for_the_forge_and_never_merges_twice(
    make_rig: Any,
) -> None:
    r = make_rig(pipeline=NO_CHECKPOINTS)
    task = r.intake.file("app", "Add a greeting")
    while now(r, task).stage != Stage.DEPLOY_STAGING:
        assert r.dispatcher.run_once()
    crashed = r.crash_a_worker()
    head = r.forge.branch_head("app", task.branch)
    assert head is not None
    key = merge_key(task.key, task.id, Stage.DEPLOY_STAGING, head)
    r.store.begin_effect(crashed, key, "merge", "app", head)
    r.forge.merge("app", task.branch, head, "merged just before the crash")
    r.intake.stop(task.key, "ann", "stop it")
    assert r.intake.task(task.key).cancel_requested_at is not None
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "ann", "stop it")
    merge = r.store.get_effect(key)
    assert merge is not None and merge.state == EffectState.SUCCEEDED
    assert len(r.forge.merges) == 1


def test_a_stop_that_cannot_resolve_a_deploy_in_flight_parks_for_an_operator(
    make_rig: Any, tmp_path: Any
) -> None:
    repo = RepoSettings(
        name="app",
        test_command="true",
        deploy={"staging": DeployTarget(f"touch {tmp_path / 'deployed'}", check="exit 3")},
    )
    r = make_rig(pipeline=NO_CHECKPOINTS, repo=repo)
    task = r.intake.file("app", "Add a greeting")
    while now(r, task).stage != Stage.DEPLOY_STAGING:
        assert r.dispatcher.run_once()
    crashed = r.crash_a_worker()
    r.store.begin_effect(crashed, "deploy:app:staging:abc", "deploy:staging", "app", "abc")
    r.intake.stop(task.key, "ann", "stop it")
    r.run_until_idle()
    parked = now(r, task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "staging deploy is unknown" in parked.status_reason
    assert not (tmp_path / "deployed").exists()
    assert r.forge.deleted == []


def test_a_cancelled_ticket_can_start_again_from_scratch(make_rig: Any) -> None:
    r = make_rig()
    first = r.intake.file("app", "Add a greeting")
    r.intake.stop(first.key, "ann", "")
    r.run_until_idle()
    again = r.intake.start(first.key, actor="ann")
    assert again.key == first.key and again.id != first.id
    assert (again.stage, again.status) == (Stage.ANALYSIS, TaskStatus.ACTIVE)
    r.run_until_idle()
    assert now(r, again).waiting_for == "approve-plan"
    assert now(r, first).status == TaskStatus.CANCELLED
    assert len(r.store.transitions(first.id)) == 2


def test_events_for_a_cancelled_task_never_relaunch_it(make_rig: Any) -> None:
    r = make_rig()
    task = r.intake.file("app", "Add a greeting")
    r.intake.stop(task.key, "ann", "")
    r.run_until_idle()
    r.store.append_event(task.id, "late-approve", "approve", "bob", {"checkpoint": ""})
    assert r.run_until_idle() == 0
    assert now(r, task).status == TaskStatus.CANCELLED
    with pytest.raises(Conflict):
        r.intake.retry(task.key, "analysis", "bob")


def test_an_operator_retries_a_parked_task_from_a_stage() -> None:
    # the operator fixes what made the agent fail, then retries
    agents = {"default": ScriptedAgent(playbook={"stages": {"analysis": {"mode": "fail"}}})}
    r = rig(agents)
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        assert now(r, task).status == TaskStatus.NEEDS_OPERATOR
        agents["default"] = ScriptedAgent()
        with pytest.raises(OrchError, match="not a stage"):
            r.intake.retry(task.key, "linting", "ops")
        assert r.intake.retry(task.key, "analysis", "ops")
        r.run_until_idle()
        resumed = now(r, task)
        assert (resumed.status, resumed.waiting_for) == (TaskStatus.WAITING, "approve-plan")
        retry = [t for t in r.store.transitions(task.id) if t.actor == "ops"]
        assert [(t.from_status, t.to_stage, t.to_status) for t in retry] == [
            (TaskStatus.NEEDS_OPERATOR, Stage.ANALYSIS, TaskStatus.ACTIVE)
        ]
        assert "retry from analysis requested by ops" in retry[0].reason
    finally:
        r.close()


def test_retry_of_a_task_that_is_not_parked_is_refused(make_rig: Any) -> None:
    r = make_rig()
    task = r.intake.file("app", "Add a greeting")
    with pytest.raises(Conflict):
        r.intake.retry(task.key, None, "ops")


@pytest.mark.parametrize("action", ["park", "remind"])
def test_a_checkpoint_that_times_out_parks_or_reminds(make_rig: Any, action: str) -> None:
    base = pl.default_pipeline()
    plan = replace(base.checkpoints[0], timeout_s=0.2, on_timeout=pl.OnTimeout(action))
    r = make_rig(pipeline=replace(base, checkpoints=(plan,)))
    task = r.intake.file("app", "Add a greeting")
    r.run_until_idle()
    assert now(r, task).waiting_for == "approve-plan"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r.run_until_idle()
        if action == "park" and now(r, task).status == TaskStatus.NEEDS_OPERATOR:
            break
        if action == "remind" and any("still waits" in text for _, text in r.notifier.sent):
            break
        time.sleep(0.05)
    t = now(r, task)
    if action == "park":
        assert t.status == TaskStatus.NEEDS_OPERATOR
        assert "approve-plan was not decided" in t.status_reason
    else:
        assert (t.status, t.waiting_for) == (TaskStatus.WAITING, "approve-plan")
        # the wait still holds nothing but its timer, and an approval still goes through
        assert r.intake.decide(task.key, True, "ann")
        r.run_until_idle()
        assert now(r, task).status == TaskStatus.DONE  # only the plan checkpoint here


def test_stop_during_recovery_cancels_the_task_its_dead_worker_left_behind(make_rig: Any) -> None:
    r = make_rig(pipeline=NO_CHECKPOINTS)
    task = r.intake.file("app", "Add a greeting")
    # a worker claimed the job and died: its lease is already past its expiry
    r.crash_a_worker()
    r.intake.stop(task.key, "ann", "during recovery")
    r.run_until_idle()  # the sweep requeues the job; the next worker applies the STOP
    assert_cancelled_cleanly(r, task, "ann", "during recovery")
    assert r.store.runs(task.id) == []


def test_a_stop_deferred_past_its_bound_alerts_once_and_leaves_a_held_task_to_its_worker() -> None:
    r = rig({"default": ScriptedAgent()}, cancel_bound_s=0.01)
    try:
        task = r.intake.file("app", "Add a greeting")
        # a worker holds the job with a live lease, stuck in an effect it must not cut off
        assert r.store.claim("busy:1:deploying", 600, r.repos.limit) is not None
        r.intake.stop(task.key, "ann", "")
        time.sleep(0.05)
        r.dispatcher.sweep()
        r.dispatcher.sweep()
        alerts = [text for key, text in r.notifier.sent if "waited more than" in text]
        assert len(alerts) == 1
        assert now(r, task).status == TaskStatus.ACTIVE  # its worker still owns it
    finally:
        r.close()


def test_an_overdue_stop_with_nothing_in_flight_is_applied_not_parked() -> None:
    r = rig({"default": ScriptedAgent()}, cancel_bound_s=0.01)
    try:
        task = r.intake.file("app", "Add a greeting")
        r.intake.stop(task.key, "ann", "late")
        time.sleep(0.05)
        r.dispatcher.sweep()
        assert any("waited more than" in text for _, text in r.notifier.sent)
        assert now(r, task).status == TaskStatus.ACTIVE
        r.run_until_idle()
        assert_cancelled_cleanly(r, task, "ann", "late")
    finally:
        r.close()


def deploy_of_a_dead_worker(r: Rig) -> Task:
    """A task whose worker died with a staging deploy in flight, its outcome unknown."""
    task = r.intake.file("app", "Add a greeting")
    crashed = r.crash_a_worker()
    r.store.begin_effect(crashed, "deploy:app:staging:abc", "deploy:staging", "app", "abc")
    return task


def test_an_overdue_stop_behind_an_effect_of_a_dead_worker_is_left_to_the_next_worker() -> None:
    r = rig({"default": ScriptedAgent()}, cancel_bound_s=0.01)
    try:
        task = deploy_of_a_dead_worker(r)
        r.intake.stop(task.key, "ann", "")
        time.sleep(0.05)
        r.dispatcher.sweep()
        # the sweep requeued the dead worker's job: the next worker resolves the effect first
        assert now(r, task).status == TaskStatus.ACTIVE
        assert sum("waited more than" in text for _, text in r.notifier.sent) == 1
        r.run_until_idle()
        parked = now(r, task)
        assert parked.status == TaskStatus.NEEDS_OPERATOR
        assert "the outcome of its staging deploy is unknown" in parked.status_reason
        assert r.store.transitions(task.id)[-1].actor == "worker"
    finally:
        r.close()


def test_an_overdue_stop_of_a_task_nothing_will_run_parks_it_for_an_operator() -> None:
    r = rig({"default": ScriptedAgent()}, cancel_bound_s=0.01, store=sql_memory_store())
    try:
        task = deploy_of_a_dead_worker(r)
        # a task stranded by a fault outside orch: its job is gone, so no worker will come
        with r.store.engine.begin() as conn:
            conn.execute(tables.jobs.delete().where(tables.jobs.c.task_id == task.id))
        r.intake.stop(task.key, "ann", "")
        time.sleep(0.05)
        r.dispatcher.sweep()
        parked = now(r, task)
        assert parked.status == TaskStatus.NEEDS_OPERATOR
        assert "outlived its bound" in parked.status_reason
        assert r.store.transitions(task.id)[-1].actor == "sweeper"
        r.dispatcher.sweep()
        assert r.store.transitions(task.id)[-1].version == parked.version  # parked once
    finally:
        r.close()


class StoppingNotifier(MemoryNotifier):
    """Presses STOP from inside the first notification: the moment between a job's last look at
    the cancel flag and its stage write."""

    def __init__(self) -> None:
        super().__init__()
        self.intake: Any = None
        self.key = ""

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        super().notify(key, text, news)
        if self.key:
            self.intake.stop(self.key, "ann", "raced the wait")
            self.key = ""


def test_a_stop_that_races_the_write_into_a_wait_is_still_applied() -> None:
    notifier = StoppingNotifier()
    r = rig({"default": ScriptedAgent()}, notifier=notifier)
    try:
        notifier.intake = r.intake
        task = r.intake.file("app", "Add a greeting")
        notifier.key = task.key
        r.run_until_idle()
        assert_cancelled_cleanly(r, task, "ann", "raced the wait")
    finally:
        r.close()


def test_a_stop_of_a_waiting_task_needs_no_repository_slot(make_rig: Any) -> None:
    r = make_rig()
    waiting = r.intake.file("app", "First")
    r.run_until_idle()
    assert now(r, waiting).waiting_for == "approve-plan"
    busy = r.intake.file("app", "Second")
    held = r.store.claim("busy:1:agent", 600, r.repos.limit)
    assert held is not None and held.task_id == busy.id  # the one slot is taken
    r.intake.stop(waiting.key, "ann", "while the repository is busy")
    r.run_until_idle()
    assert_cancelled_cleanly(r, waiting, "ann", "while the repository is busy")


def test_a_retry_never_skips_ahead_or_past_a_checkpoint(make_rig: Any) -> None:
    base = pl.default_pipeline()
    timing_out = replace(base.checkpoints[1], timeout_s=0.05, on_timeout=pl.OnTimeout.PARK)
    r = make_rig(pipeline=replace(base, checkpoints=(base.checkpoints[0], timing_out)))
    task = r.intake.file("app", "Add a greeting")
    r.run_until_idle()
    r.intake.decide(task.key, True, "ann")
    r.run_until_idle()
    deadline = time.monotonic() + 30
    while now(r, task).status != TaskStatus.NEEDS_OPERATOR and time.monotonic() < deadline:
        time.sleep(0.05)
        r.run_until_idle()
    parked = now(r, task)
    assert (parked.stage, parked.status) == (Stage.DEPLOY, TaskStatus.NEEDS_OPERATOR)
    assert r.intake.retry(task.key, None, "ops")
    r.run_until_idle()
    again = now(r, task)
    # back at the deploy confirmation, not deployed without a person's say
    assert (again.status, again.waiting_for) == (TaskStatus.WAITING, "confirm-deploy")
    assert not [e for e in r.store.effects(task.id) if e.kind == "deploy:production"]


def test_a_retry_to_a_stage_after_the_current_one_is_refused(make_rig: Any) -> None:
    agents = {"default": ScriptedAgent(playbook={"stages": {"analysis": {"mode": "fail"}}})}
    r = rig(agents)
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        assert now(r, task).status == TaskStatus.NEEDS_OPERATOR
        with pytest.raises(OrchError, match="not review"):
            r.intake.retry(task.key, "review", "ops")
    finally:
        r.close()


def test_a_stop_that_fails_to_clean_up_is_retried_until_it_applies(make_rig: Any) -> None:
    r = make_rig()
    task = r.intake.file("app", "Add a greeting")
    r.run_until_idle()
    r.forge.fail_delete = ForgeError("remote unreachable")
    r.intake.stop(task.key, "ann", "despite the outage")
    r.run_until_idle()
    stuck = now(r, task)
    assert stuck.status != TaskStatus.CANCELLED
    assert all(j.state != JobState.RUNNING for j in r.store.jobs(task.id))
    assert stuck.status == TaskStatus.NEEDS_OPERATOR
    assert "stop could not be applied: remote unreachable" in stuck.status_reason
    r.forge.fail_delete = None
    assert r.intake.retry(task.key, None, "ops")
    r.run_until_idle()
    assert_cancelled_cleanly(r, task, "ann", "despite the outage")
