"""Failures the model tests found in orch's core, each reduced to its smallest reproduction.

Each is named for the behaviour it proves; all of them failed before their fix.
"""

from __future__ import annotations

import pytest

from orch.domain.states import EffectState, Stage, TaskStatus
from orch.testing import SimulatedCrash, crash_at

from .harness import REPO, Outcome, World


def drive_to(w: World, key: str, stage: Stage) -> None:
    """Work goes on without faults, people approving, until the task is active at `stage`."""
    for _ in range(60):
        t = w.rig.intake.task(key)
        if t.stage == stage and t.status == TaskStatus.ACTIVE:
            return
        if not w.rig.dispatcher.run_once():
            assert w.rig.intake.decide(key, True, "approver"), f"stuck at {t.stage}/{t.status}"
    raise AssertionError(f"never reached {stage}")


def settle(w: World, rounds: int = 8) -> None:
    """The faults are over: run until idle, approve what waits, let time pass."""
    for _ in range(rounds):
        w.drain()
        for t in w.rig.store.list_tasks(limit=1000):
            if t.status == TaskStatus.WAITING:
                w.rig.intake.decide(t.key, True, "approver")
        w.drain()
        w.clock.advance(w.ttl + 1)


@pytest.mark.parametrize("decision", ["approve", "reject", "retry"])
def test_a_decision_survives_orch_dying_before_the_stage_write_it_causes(
    world: World, decision: str
) -> None:
    intake = world.rig.intake
    task = intake.file(REPO, "Add a greeting")
    if decision == "retry":
        world.agent.mode = Outcome.FAIL  # every attempt fails: the task is parked
        world.drain()
        world.agent.mode = Outcome.SUCCEED
        assert intake.task(task.key).status == TaskStatus.NEEDS_OPERATOR

        def give() -> bool:
            return intake.retry(task.key, None, "ops")
    else:
        world.drain()
        assert intake.task(task.key).waiting_for == "approve-plan"

        def give() -> bool:
            return intake.decide(task.key, decision == "approve", "ann", "redo the plan")

    before = intake.task(task.key)
    assert give()
    with crash_at("stage.cas"), pytest.raises(SimulatedCrash):
        world.rig.dispatcher.run_once()  # reads the decision, dies in the stage write
    world.rig.restart()
    world.drain()  # the job runs again and finds the decision still unread
    after = intake.task(task.key)
    assert (after.version, after.status) != (before.version, before.status), (
        f"{decision} was lost: the task still {after.status} at {after.stage} v{after.version}"
    )


def test_a_task_dead_lettered_mid_merge_does_not_block_the_repositorys_merges(
    world: World,
) -> None:
    r = world.rig
    first = r.intake.file(REPO, "First")
    drive_to(world, first.key, Stage.DEPLOY_STAGING)
    # its deploy-staging job loses its lease three times, the last right after the merge's
    # intent is written: the sweeper dead-letters it
    for point in ("claim.committed", "claim.committed", "effect.initiated"):
        with crash_at(point), pytest.raises(SimulatedCrash):
            r.dispatcher.run_once()
        r.restart()
        world.sweep()
    parked = r.intake.task(first.key)
    assert (parked.status, parked.status_reason) == (
        TaskStatus.NEEDS_OPERATOR,
        "lease expired 3 times",
    )
    second = r.intake.file(REPO, "Second")
    settle(world)
    merge = [e for e in r.store.effects(first.id) if e.kind == "merge"]
    assert [e.state for e in merge] == [EffectState.FAILED], "the parked task keeps the slot"
    assert r.intake.task(second.key).status == TaskStatus.DONE


def test_a_task_dead_lettered_mid_deploy_does_not_block_the_targets_deploys(
    world: World,
) -> None:
    r = world.rig
    first = r.intake.file(REPO, "First")
    drive_to(world, first.key, Stage.DEPLOY_STAGING)
    # the last loss comes right after the staging deploy's intent (the merge's is the first, and
    # the notice that it merged the second)
    for point in ("claim.committed", "claim.committed", "effect.initiated:3"):
        with crash_at(point), pytest.raises(SimulatedCrash):
            r.dispatcher.run_once()
        r.restart()
        world.sweep()
    assert r.intake.task(first.key).status == TaskStatus.NEEDS_OPERATOR
    second = r.intake.file(REPO, "Second")
    settle(world)
    # the next deploy to the target settles it first, by the target's check: it never ran
    deploy = [e for e in r.store.effects(first.id) if e.kind == "deploy:staging"]
    assert [(e.state, e.result.get("resolved_by")) for e in deploy] == [
        (EffectState.FAILED, "check")
    ]
    assert r.intake.task(second.key).status == TaskStatus.DONE


def test_a_stop_that_outlives_its_bound_mid_merge_applies_once_the_forge_confirms_it(
    world: World,
) -> None:
    r = world.rig
    first = r.intake.file(REPO, "First")
    drive_to(world, first.key, Stage.DEPLOY_STAGING)
    with crash_at("forge.request.sent"), pytest.raises(SimulatedCrash):
        r.dispatcher.run_once()  # the forge merged; orch died before hearing so
    assert len(r.forge.merges) == 1
    r.intake.stop(first.key, "ann", "hold it")
    # orch stays down longer than a STOP's bound; the restarted worker asks the forge, records
    # the merge, and then applies the STOP: nothing is left holding the repository's merge slot
    world.clock.advance(r.dispatcher.settings.cancel_bound_s + 60)
    r.restart()
    world.drain()
    stopped = r.intake.task(first.key)
    assert (stopped.status, stopped.status_reason) == (
        TaskStatus.CANCELLED,
        "stopped by ann: hold it",
    )
    assert len(r.forge.merges) == 1
    second = r.intake.file(REPO, "Second")
    settle(world)
    merge = [e for e in r.store.effects(first.id) if e.kind == "merge"]
    assert [e.state for e in merge] == [EffectState.SUCCEEDED], "the forge knows it merged"
    assert r.intake.task(second.key).status == TaskStatus.DONE
