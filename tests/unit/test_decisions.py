"""People's answers: a wait takes one, and an answer orch says it recorded is the one it acts on."""

from __future__ import annotations

import pytest

from orch.domain.errors import Conflict
from orch.domain.states import Stage, TaskStatus
from orch.testing import InstantAgent, Rig, rig


def waiting_rig(made: list[Rig]) -> tuple[Rig, str]:
    r = rig({"default": InstantAgent()})
    made.append(r)
    task = r.intake.file("app", "Add a greeting", "Say hello.")
    r.run_until_idle()
    assert r.intake.task(task.key).waiting_for == "approve-plan"
    return r, task.key


def test_a_rejection_after_an_approval_of_the_same_wait_is_refused_and_the_approval_stands(
    made: list[Rig],
) -> None:
    r, key = waiting_rig(made)
    assert r.intake.decide(key, True, "alice", "looks right")
    with pytest.raises(Conflict) as refused:
        r.intake.decide(key, False, "bob", "not like this")
    assert str(refused.value) == (
        f"{key} was already approved by alice (comment: looks right) at version 2; that stands"
    )
    r.run_until_idle()
    task = r.intake.task(key)
    assert task.waiting_for == "confirm-deploy"  # the approval was acted on, through review
    assert [e.kind for e in r.store.events(task.id)] == ["approve"]


def test_the_same_answer_sent_twice_is_recorded_once(made: list[Rig]) -> None:
    r, key = waiting_rig(made)
    assert r.intake.decide(key, False, "bob", "redo the plan")
    assert not r.intake.decide(key, False, "bob", "redo the plan")
    r.run_until_idle()
    task = r.intake.task(key)
    assert (task.rework_rounds, task.waiting_for) == (1, "approve-plan")
    assert len(r.store.events(task.id)) == 1


def test_an_answer_when_nothing_waits_is_refused_with_the_last_answer(made: list[Rig]) -> None:
    r, key = waiting_rig(made)
    assert r.intake.decide(key, True, "alice")
    assert r.dispatcher.run_once()  # the approval is read: the task works again
    assert r.intake.task(key).status == TaskStatus.ACTIVE
    with pytest.raises(Conflict) as refused:
        r.intake.decide(key, False, "bob", "too late")
    assert str(refused.value) == (
        f"{key} is not waiting at a checkpoint (it is architecture, active); its last wait was"
        " approved by alice"
    )


def test_a_second_retry_from_another_stage_is_refused(made: list[Rig]) -> None:
    r = rig({"default": InstantAgent(outcome=lambda _req: 127)})  # not found: parks at once
    made.append(r)
    task = r.intake.file("app", "Add a greeting", "Say hello.")
    r.run_until_idle()
    assert r.intake.task(task.key).status == TaskStatus.NEEDS_OPERATOR
    assert r.intake.retry(task.key, None, "ops")
    assert not r.intake.retry(task.key, None, "ops")
    with pytest.raises(Conflict, match="already asked to retry by ops"):
        r.intake.retry(task.key, Stage.ANALYSIS.value, "ann")
