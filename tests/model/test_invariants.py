"""Each invariant check fails on a world where its invariant is broken on purpose, and a clean
run passes them all: a check that cannot fail proves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from orch.adapters.store import schema as tables
from orch.domain.model import Task
from orch.domain.states import EffectState, JobState, Stage, TaskStatus
from orch.invariants import Observation
from orch.testing import sql_memory_store

from .harness import REPO, StartedAgent, World, build_world
from .invariants import (
    Violation,
    check_all,
    check_i1,
    check_i2,
    check_i3,
    check_i4,
    check_i5,
    check_i6,
    check_i7,
    check_i8,
    observe,
)


@pytest.fixture
def world() -> Iterator[World]:
    """A world on the SQL store: these tests break its rows on purpose."""
    w = build_world(store=sql_memory_store)
    try:
        yield w
    finally:
        w.close()


@dataclass
class Hanging:
    """An agent process that never ended and was never killed."""

    code: int | None = None
    killed: bool = False


def seen(w: World) -> Observation:
    return observe(w.rig, deploys=w.deploys, agents=w.agent.processes)


def run_to_the_end(w: World, task: Task) -> None:
    for _ in range(10):
        w.drain()
        t = w.rig.store.get_task(task.id)
        if t.status != TaskStatus.WAITING:
            return
        assert w.rig.intake.decide(t.key, True, "approver")
    raise AssertionError("never finished")


def sql(w: World, statement: Any) -> None:
    """Break the store on purpose, behind the engine's back."""
    with w.rig.store.engine.begin() as conn:
        conn.execute(statement)


def test_a_clean_run_of_the_whole_pipeline_passes_every_check(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    run_to_the_end(world, task)
    assert world.rig.store.get_task(task.id).status == TaskStatus.DONE
    check_all(seen(world), swept_at=world.swept_at, settled=True)


def deploy_again(world: World, target: str) -> None:
    """The deploy log shows the task's release deployed to `target` a second time."""
    [release] = [r for t, r in world.deploys.entries() if t == target]
    with world.deploys.path.open("a", encoding="utf-8") as log:
        log.write(f"{target} {release}\n")


def test_i1_catches_a_second_merge_of_the_same_head(world: World) -> None:
    run_to_the_end(world, world.rig.intake.file(REPO, "Add a greeting"))
    world.rig.forge.merges.append(world.rig.forge.merges[0])
    with pytest.raises(Violation, match=r"I1.*merged 2 times"):
        check_i1(seen(world))


def test_i1_catches_a_second_production_deploy_of_a_release(world: World) -> None:
    run_to_the_end(world, world.rig.intake.file(REPO, "Add a greeting"))
    deploy_again(world, "production")
    with pytest.raises(Violation, match=r"I1.*deployed to production 2 times"):
        check_i1(seen(world))


def test_i2_catches_an_active_task_with_no_job_to_run_it(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    sql(
        world,
        sa.update(tables.jobs)
        .where(tables.jobs.c.task_id == task.id)
        .values(state=JobState.SUCCEEDED.value),
    )
    with pytest.raises(Violation, match=r"I2.*no queued job"):
        check_i2(seen(world))


def test_i3_catches_a_job_still_running_past_its_lease_after_a_sweep(world: World) -> None:
    world.rig.intake.file(REPO, "Add a greeting")
    assert world.rig.store.claim("elsewhere:1:1:x", world.ttl, world.rig.repos.limit)
    check_i3(seen(world), swept_at=world.now())  # the lease is live: fine
    world.clock.advance(world.ttl + 1)
    with pytest.raises(Violation, match=r"I3.*before it should have been swept"):
        check_i3(seen(world), swept_at=world.now())


def test_i3_catches_an_agent_alive_for_a_task_that_no_job_runs(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.agent.processes.append(StartedAgent(task.key, Stage.ANALYSIS.value, Hanging()))
    with pytest.raises(Violation, match=r"I3.*lives, and no job runs it"):
        check_i3(seen(world), swept_at=None)


def test_i4_catches_a_gap_in_the_history(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    sql(
        world,
        sa.delete(tables.transitions).where(
            tables.transitions.c.task_id == task.id, tables.transitions.c.version == 1
        ),
    )
    with pytest.raises(Violation, match=r"I4.*are not 1\.\.\d+"):
        check_i4(seen(world))


def _rewrite_last_transition(w: World, task: Task, **values: Any) -> None:
    last = w.rig.store.transitions(task.id)[-1]
    sql(
        w,
        sa.update(tables.transitions)
        .where(
            tables.transitions.c.task_id == task.id,
            tables.transitions.c.version == last.version,
        )
        .values(**values),
    )
    sql(
        w,
        sa.update(tables.tasks)
        .where(tables.tasks.c.id == task.id)
        .values(stage=values.get("to_stage", last.to_stage)),
    )


def test_i4_catches_a_transition_that_skips_stages(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()  # analysis -> architecture (waiting)
    _rewrite_last_transition(world, task, to_stage=Stage.DEPLOY.value)
    with pytest.raises(Violation, match=r"I4.*is not an edge of its pipeline"):
        check_i4(seen(world))


def test_i4_catches_a_task_ended_done_before_its_last_stage_that_no_person_merged(
    world: World,
) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()  # analysis -> architecture (waiting)
    _rewrite_last_transition(
        world, task, to_stage=Stage.DONE.value, to_status=TaskStatus.DONE.value
    )
    sql(
        world,
        sa.update(tables.tasks)
        .where(tables.tasks.c.id == task.id)
        .values(status=TaskStatus.DONE.value),
    )
    with pytest.raises(Violation, match=r"I4.*before its last stage, and no person merged it"):
        check_i4(seen(world))


def test_i4_takes_a_merge_by_hand_before_the_last_stage_as_the_tasks_end(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    assert world.rig.intake.decide(task.key, True, "approver")
    while world.rig.store.get_task(task.id).stage in (Stage.ARCHITECTURE, Stage.DEVELOPMENT):
        assert world.rig.dispatcher.run_once()
    pull = world.rig.forge.find_pull(REPO, task.branch)
    assert pull is not None
    world.rig.forge.merge_by_hand(REPO, pull.number)
    now = world.rig.forge.find_pull(REPO, task.branch)
    assert now is not None
    assert world.rig.intake.landed(task.key, "gitea:carol", now.head, now.number, now.merge_sha)
    world.drain()
    done = world.rig.store.get_task(task.id)
    assert (done.stage, done.status) == (Stage.DONE, TaskStatus.DONE)
    check_all(seen(world), swept_at=world.swept_at, settled=True)


def test_i4_catches_a_step_back_that_no_rework_rejection_or_retry_explains(
    world: World,
) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    assert world.rig.intake.decide(task.key, True, "approver")
    world.drain()  # ... -> deploy (waiting)
    assert world.rig.store.get_task(task.id).stage == Stage.DEPLOY
    # deploy-staging -> analysis is an edge (an operator's retry may take it), from a park only
    _rewrite_last_transition(world, task, to_stage=Stage.ANALYSIS.value)
    with pytest.raises(Violation, match=r"I4.*goes back"):
        check_i4(seen(world))


def test_i4_catches_a_status_move_the_state_machine_does_not_make(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    run_to_the_end(world, task)
    history = world.rig.store.transitions(task.id)
    last, before = history[-1], history[-2]
    assert (last.to_stage, last.to_status) == (Stage.DONE, TaskStatus.DONE)
    # the deploy stage recorded as parked, and then done: an edge, but no move of the machine
    for version, column in ((before.version, "to_status"), (last.version, "from_status")):
        sql(
            world,
            sa.update(tables.transitions)
            .where(tables.transitions.c.task_id == task.id, tables.transitions.c.version == version)
            .values({column: TaskStatus.NEEDS_OPERATOR.value}),
        )
    with pytest.raises(Violation, match=r"I4.*needs_operator -> done is no move of the state"):
        check_i4(seen(world))


def test_i5_catches_more_slot_holders_than_the_repository_allows(world: World) -> None:
    first = world.rig.intake.file(REPO, "First")
    second = world.rig.intake.file(REPO, "Second")
    sql(world, sa.update(tables.tasks).where(tables.tasks.c.id == first.id).values(slot=0))
    check_i5(seen(world))
    sql(world, sa.update(tables.tasks).where(tables.tasks.c.id == second.id).values(slot=1))
    with pytest.raises(Violation, match=r"I5.*hold slots"):
        check_i5(seen(world))


def test_i5_catches_a_waiting_task_that_holds_a_slot(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    assert world.rig.store.get_task(task.id).status == TaskStatus.WAITING
    sql(world, sa.update(tables.tasks).where(tables.tasks.c.id == task.id).values(slot=0))
    with pytest.raises(Violation, match=r"I5.*waiting and still holds slot"):
        check_i5(seen(world))


def test_i5_catches_work_running_without_a_slot(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    assert world.rig.store.claim("elsewhere:1:1:x", world.ttl, world.rig.repos.limit)
    sql(world, sa.update(tables.tasks).where(tables.tasks.c.id == task.id).values(slot=None))
    with pytest.raises(Violation, match=r"I5.*without a slot"):
        check_i5(seen(world))


def test_i5_catches_a_parked_task_that_holds_the_merge_slot(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    claim = world.rig.store.claim("elsewhere:1:1:x", world.ttl, world.rig.repos.limit)
    assert claim is not None
    world.rig.store.begin_effect(claim, "merge-key", "merge", REPO, "0" * 40)
    check_i5(seen(world))  # active, mid-merge: fine
    world.rig.store.park(task.id, task.version, "parked on purpose", "test")
    with pytest.raises(Violation, match=r"I5.*merge slot"):
        check_i5(seen(world))


def test_i6_catches_a_stopped_task_that_settled_without_being_cancelled(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    assert world.rig.intake.stop(task.key, "ann", "no")[1]
    check_i6(seen(world), settled=False)  # not settled yet: fine
    with pytest.raises(Violation, match=r"I6.*stopped and has settled"):
        check_i6(seen(world), settled=True)


def test_i6_catches_a_cancelled_task_whose_agent_lives(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.rig.intake.stop(task.key, "ann", "no")
    world.drain()
    assert world.rig.store.get_task(task.id).status == TaskStatus.CANCELLED
    world.agent.processes.append(StartedAgent(task.key, Stage.ANALYSIS.value, Hanging()))
    with pytest.raises(Violation, match=r"I6.*agent lives"):
        check_i6(seen(world), settled=True)


def test_i7_catches_a_notification_sent_twice_under_one_key(world: World) -> None:
    world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    world.rig.notifier.sent.append(world.rig.notifier.sent[0])
    with pytest.raises(Violation, match=r"I7.*notified 2 times under key"):
        check_i7(seen(world))


def test_i7_catches_a_notification_recorded_as_sent_that_never_was(world: World) -> None:
    world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    check_i7(seen(world))
    world.rig.notifier.sent.clear()
    with pytest.raises(Violation, match=r"I7.*SUCCEEDED, and was never sent"):
        check_i7(seen(world))


def test_i1_catches_a_merge_recorded_as_done_that_never_happened(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    claim = world.rig.store.claim("elsewhere:1:1:x", world.ttl, world.rig.repos.limit)
    assert claim is not None
    world.rig.store.begin_effect(claim, "merge-key", "merge", REPO, "0" * 40)
    world.rig.store.finish_effect(claim, "merge-key", EffectState.SUCCEEDED, {})
    assert task.id == claim.task_id
    with pytest.raises(Violation, match=r"I1.*merge-key: SUCCEEDED, but no commit is not merged"):
        check_i1(seen(world))


def test_i1_catches_a_merge_recorded_with_a_commit_the_forge_made_for_another_head(
    world: World,
) -> None:
    run_to_the_end(world, world.rig.intake.file(REPO, "First"))
    [(_repo, _head, landed)] = world.rig.forge.merges
    world.rig.intake.file(REPO, "Second")
    claim = world.rig.store.claim("elsewhere:1:1:x", world.ttl, world.rig.repos.limit)
    assert claim is not None
    world.rig.store.begin_effect(claim, "merge-key", "merge", REPO, "1" * 40)
    world.rig.store.finish_effect(claim, "merge-key", EffectState.SUCCEEDED, {"merge_sha": landed})
    with pytest.raises(Violation, match=r"I1.*the head it was for, 111111111111, was never merged"):
        check_i1(seen(world))


def test_i1_catches_a_staging_deploy_that_ran_twice(world: World) -> None:
    run_to_the_end(world, world.rig.intake.file(REPO, "Add a greeting"))
    check_i1(seen(world))
    deploy_again(world, "staging")
    with pytest.raises(Violation, match=r"I1.*deployed to staging 2 times"):
        check_i1(seen(world))


def test_i8_catches_a_task_left_active_when_the_faults_ended(world: World) -> None:
    world.rig.intake.file(REPO, "Add a greeting")
    with pytest.raises(Violation, match=r"I8.*still active"):
        check_i8(seen(world))


def test_i8_catches_a_job_left_runnable(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    assert world.rig.store.get_task(task.id).status == TaskStatus.WAITING
    # an alert in its inbox queues a job to read it
    assert world.rig.store.append_event(task.id, "poke", "alert", "sweeper", {"text": "hi"})
    with pytest.raises(Violation, match=r"I8.*still queued"):
        check_i8(seen(world))


def test_i8_catches_a_decision_that_was_recorded_and_lost(world: World) -> None:
    task = world.rig.intake.file(REPO, "Add a greeting")
    world.drain()
    waiting = world.rig.store.get_task(task.id)
    assert world.rig.intake.decide(task.key, True, "approver")
    sql(
        world,
        sa.update(tables.events)
        .where(tables.events.c.task_id == task.id)
        .values(processed_at=world.now()),
    )
    world.drain()  # the job finds nothing to read: the task keeps waiting
    assert world.rig.store.get_task(task.id).version == waiting.version
    with pytest.raises(Violation, match=r"I8.*the decision is lost"):
        check_i8(seen(world))
