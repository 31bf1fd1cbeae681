"""The engine on memory adapters, stepped with run_until_idle(), driven by the scripted agent."""

from __future__ import annotations

import itertools
import os
import re
import signal
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orch.adapters.agents.scripted import ScriptedAgent
from orch.adapters.notifiers.log import MemoryNotifier
from orch.domain import naming
from orch.domain import pipeline as pl
from orch.domain.errors import Conflict, ForgeError, MergeConflict
from orch.domain.model import Task
from orch.domain.naming import merge_key
from orch.domain.states import EffectState, JobState, Stage, TaskStatus
from orch.ports import DeployTarget, RepoSettings
from orch.testing import Rig, SimClock, rig

REVIEW_FILE = "docs/work-items/{{key}}/review.md"
CHANGES_REQUESTED = "# Review\n\nPlease validate the input.\n\nVerdict: request-changes\n"


@pytest.fixture
def make_rig() -> Iterator[Any]:
    made: list[Rig] = []

    def make(
        playbook: Mapping[str, Any] | None = None,
        *,
        pipeline: pl.Pipeline | None = None,
        agents: Mapping[str, Any] | None = None,
    ) -> Rig:
        r = rig(agents or {"default": ScriptedAgent(playbook=playbook)}, pipeline=pipeline)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def file_ticket(r: Rig, title: str = "Add a greeting") -> Task:
    return r.intake.file("app", title, "Say hello to the user.")


def current(r: Rig, task: Task) -> Task:
    return r.store.get_task(task.id)


def prompts(r: Rig, task: Task, stage: Stage) -> list[str]:
    """The prompts the agent was given for `stage`, in the order they were written."""
    folder = r.logs / f"{task.key}-{task.id}"

    def order(p: Path) -> tuple[int, int]:
        m = re.match(rf"v(\d+)-{re.escape(stage.value)}-(\d+)\.prompt\.md$", p.name)
        assert m is not None
        return int(m.group(1)), int(m.group(2))

    files = sorted(folder.glob(f"v*-{stage.value}-*.prompt.md"), key=order)
    return [f.read_text(encoding="utf-8") for f in files]


def approve(r: Rig, task: Task, actor: str) -> None:
    assert r.intake.decide(task.key, True, actor)
    r.run_until_idle()


def assert_history_is_gap_free_on_pipeline_edges(r: Rig, task: Task) -> None:
    history = r.store.transitions(task.id)
    assert [t.version for t in history] == list(range(1, len(history) + 1))
    assert history[-1].version == current(r, task).version
    edges = r.pipeline.edges()
    for t in history:
        assert (t.from_stage, t.to_stage) in edges, t
    for prev, nxt in itertools.pairwise(history):
        assert (nxt.from_stage, nxt.from_status) == (prev.to_stage, prev.to_status)


def run_to_stage(r: Rig, task: Task, stage: Stage) -> None:
    """Step jobs one at a time until the task's next job is a queued job of `stage`."""
    for _ in range(50):
        t = current(r, task)
        if t.stage == stage and t.status == TaskStatus.ACTIVE:
            return
        assert r.dispatcher.run_once(), (
            f"stuck at {t.stage}/{t.status} ({t.status_reason}) before reaching {stage}"
        )
    raise AssertionError(f"never reached {stage}")


# -- the whole pipeline ---------------------------------------------------------------------------


def test_a_ticket_runs_through_the_whole_pipeline_with_approvals(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    waiting = current(r, task)
    assert (waiting.stage, waiting.status, waiting.waiting_for) == (
        Stage.ARCHITECTURE,
        TaskStatus.WAITING,
        "approve-plan",
    )
    approve(r, task, "alice")
    waiting = current(r, task)
    assert (waiting.stage, waiting.status, waiting.waiting_for) == (
        Stage.DEPLOY,
        TaskStatus.WAITING,
        "confirm-deploy",
    )
    approve(r, task, "bob")
    done = current(r, task)
    assert (done.stage, done.status) == (Stage.DONE, TaskStatus.DONE)

    # exactly one merge, of the head the gates passed, and the work is on the default branch
    assert len(r.forge.merges) == 1
    repo, head, _merge_sha = r.forge.merges[0]
    assert repo == "app"
    testing = [g for g in r.store.gate_records(task.id) if g.stage == Stage.TESTING]
    assert {g.head_sha for g in testing} == {head}
    # the merged branch is gone from the remote
    assert r.forge.deleted == [("app", task.branch)]
    assert r.forge.branch_head("app", task.branch) is None
    spec = r.forge.read_default_file("app", f"docs/work-items/{task.key}/spec.md")
    assert spec is not None and "## Acceptance criteria" in spec

    # history: gap-free, on the pipeline's edges, approvals by the people who gave them
    assert_history_is_gap_free_on_pipeline_edges(r, task)
    history = r.store.transitions(task.id)
    approvals = [(t.actor, t.to_stage) for t in history if t.actor in ("alice", "bob")]
    assert approvals == [("alice", Stage.ARCHITECTURE), ("bob", Stage.DEPLOY)]
    assert [t.to_stage for t in history if t.to_stage != t.from_stage] == [
        Stage.ARCHITECTURE,
        Stage.DEVELOPMENT,
        Stage.REVIEW,
        Stage.TESTING,
        Stage.DEPLOY_STAGING,
        Stage.DEPLOY,
        Stage.DONE,
    ]

    # every gate of every stage recorded once, all passed
    records = r.store.gate_records(task.id)
    assert sorted((g.stage.value, g.gate) for g in records) == sorted(
        [
            ("analysis", "spec"),
            ("architecture", "adr"),
            ("development", "tests"),
            ("review", "review"),
            ("testing", "tests"),
            ("testing", "test-report"),
            # the tree that landed: the head merged onto the default branch, tested
            ("deploy-staging", "integrity"),
            ("deploy-staging", "merge-candidate"),
        ]
    )
    assert all(g.passed for g in records)

    # one agent run per agent stage, all clean
    runs = r.store.runs(task.id)
    assert [run.stage for run in runs] == [
        Stage.ANALYSIS,
        Stage.ARCHITECTURE,
        Stage.DEVELOPMENT,
        Stage.REVIEW,
        Stage.TESTING,
    ]
    assert all(run.exit_code == 0 for run in runs)

    # notifications: started, two waits, merged, deployed and done, each key sent once
    keys = [k for k, _ in r.notifier.sent]
    assert len(keys) == len(set(keys)) == 6
    kinds = [news.kind for _, news in r.notifier.news]
    assert kinds == ["started", "waiting", "merged", "waiting", "deployed", "done"]
    texts = [text for _, text in r.notifier.sent]
    assert "approve-plan" in texts[1]
    assert "confirm-deploy" in texts[3]
    assert "production" in texts[4]
    assert "done" in texts[5]

    # every effect succeeded once; nothing is left to run
    effects = r.store.effects(task.id)
    assert all(e.state == EffectState.SUCCEEDED for e in effects)
    assert sorted(e.kind for e in effects) == sorted(
        ["merge", "deploy:staging", "deploy:production", "delete-branch"] + ["notify"] * 6
    )
    assert all(j.state != JobState.QUEUED for j in r.store.jobs(task.id))
    assert r.run_until_idle() == 0


def test_the_first_prompt_carries_the_ticket_and_no_feedback(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r, "Add a greeting")
    r.run_until_idle()
    [prompt] = prompts(r, task, Stage.ANALYSIS)
    assert task.key in prompt
    assert "Add a greeting" in prompt
    assert "Say hello to the user." in prompt
    assert "Feedback to address" not in prompt


# -- rework ---------------------------------------------------------------------------------------


def test_a_review_requesting_changes_sends_the_task_back_to_development_with_the_review(
    make_rig: Any,
) -> None:
    r = make_rig({"stages": {"review": {"files": {REVIEW_FILE: CHANGES_REQUESTED}}}})
    task = file_ticket(r)
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "alice")
    for _ in range(50):
        reworked = current(r, task)
        if reworked.rework_rounds == 1:
            break
        assert r.dispatcher.run_once()
    assert (reworked.stage, reworked.status) == (Stage.DEVELOPMENT, TaskStatus.ACTIVE)
    assert "request-changes" in reworked.feedback
    assert "Please validate the input." in reworked.feedback
    r.run_until_idle()

    history = r.store.transitions(task.id)
    back = [t for t in history if (t.from_stage, t.to_stage) == (Stage.REVIEW, Stage.DEVELOPMENT)]
    assert len(back) == r.pipeline.max_rework_rounds
    assert all("request-changes" in t.reason for t in back)

    dev_prompts = prompts(r, task, Stage.DEVELOPMENT)
    assert len(dev_prompts) == 1 + r.pipeline.max_rework_rounds
    assert "Please validate the input." not in dev_prompts[0]
    for later in dev_prompts[1:]:
        assert "Feedback to address" in later
        assert "Please validate the input." in later


REPORT_FILE = "docs/work-items/{{key}}/test-report.md"


@pytest.mark.parametrize(
    ("said", "why"),
    [
        ("Verdict: fail", "verdict is fail"),
        ("## Verdict\n\nfail", "verdict is fail"),
        ("Verdict: mostly fine", "not a verdict orch knows"),
        ("(no verdict)", "states no verdict"),
    ],
)
def test_a_test_report_that_does_not_say_pass_sends_the_task_back_and_nothing_merges(
    make_rig: Any, said: str, why: str
) -> None:
    report = f"# Report\n\n## Results\n\nThe greeting is empty.\n\n{said}\n"
    r = make_rig({"stages": {"testing": {"files": {REPORT_FILE: report}}}})
    task = file_ticket(r)
    r.run_until_idle()
    approve(r, task, "alice")
    parked = current(r, task)
    assert (parked.stage, parked.status) == (Stage.TESTING, TaskStatus.NEEDS_OPERATOR)
    assert why in parked.status_reason
    history = r.store.transitions(task.id)
    back = [t for t in history if (t.from_stage, t.to_stage) == (Stage.TESTING, Stage.DEVELOPMENT)]
    assert len(back) == r.pipeline.max_rework_rounds
    dev_prompts = prompts(r, task, Stage.DEVELOPMENT)
    assert all("The greeting is empty" in later for later in dev_prompts[1:])
    assert r.forge.merges == []


def test_a_review_that_keeps_requesting_changes_parks_after_the_rework_rounds(
    make_rig: Any,
) -> None:
    r = make_rig({"stages": {"review": {"files": {REVIEW_FILE: CHANGES_REQUESTED}}}})
    task = file_ticket(r)
    r.run_until_idle()
    approve(r, task, "alice")
    parked = current(r, task)
    assert (parked.stage, parked.status) == (Stage.REVIEW, TaskStatus.NEEDS_OPERATOR)
    assert parked.rework_rounds == r.pipeline.max_rework_rounds
    assert "rework rounds" in parked.status_reason
    assert "Please validate the input." in parked.status_reason
    assert r.forge.merges == []
    assert_history_is_gap_free_on_pipeline_edges(r, task)
    parked_notes = [text for _, text in r.notifier.sent if "needs an operator" in text]
    assert len(parked_notes) == 1
    assert r.run_until_idle() == 0


def test_a_rejected_plan_goes_back_to_analysis_with_the_comment(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    assert r.intake.decide(task.key, False, "carol", comment="Split this into two tickets")
    assert r.dispatcher.run_once()  # the worker reads the inbox and applies the rejection
    rejected = current(r, task)
    assert (rejected.stage, rejected.status) == (Stage.ANALYSIS, TaskStatus.ACTIVE)
    assert rejected.rework_rounds == 1
    assert rejected.feedback == "Split this into two tickets"
    r.run_until_idle()

    history = r.store.transitions(task.id)
    [rejection] = [t for t in history if t.actor == "carol"]
    assert (rejection.from_stage, rejection.to_stage, rejection.to_status) == (
        Stage.ARCHITECTURE,
        Stage.ANALYSIS,
        TaskStatus.ACTIVE,
    )
    assert "Split this into two tickets" in rejection.reason
    again = current(r, task)
    assert again.rework_rounds == 1
    first, second = prompts(r, task, Stage.ANALYSIS)
    assert "Split this into two tickets" not in first
    assert "Split this into two tickets" in second
    # analysis ran again and the plan waits for approval once more
    assert (again.stage, again.status, again.waiting_for) == (
        Stage.ARCHITECTURE,
        TaskStatus.WAITING,
        "approve-plan",
    )
    assert_history_is_gap_free_on_pipeline_edges(r, task)


def test_feedback_addressed_before_a_wait_does_not_reach_the_stage_after_it(
    make_rig: Any,
) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    assert r.intake.decide(task.key, False, "carol", comment="Split this into two tickets")
    r.run_until_idle()
    approve(r, task, "alice")
    [architecture_prompt] = prompts(r, task, Stage.ARCHITECTURE)
    assert "Split this into two tickets" not in architecture_prompt


def test_a_failed_attempt_before_a_wait_is_not_fed_to_the_stage_after_it(make_rig: Any) -> None:
    r = make_rig({"stages": {"analysis": {"fail_attempts": 1}}})
    task = file_ticket(r)
    r.run_until_idle()
    approve(r, task, "alice")
    [architecture_prompt] = prompts(r, task, Stage.ARCHITECTURE)
    assert "exited 1" not in architecture_prompt


# -- failing agents -------------------------------------------------------------------------------


def test_a_failing_agent_is_retried_up_to_max_attempts_then_parked_with_the_reason(
    make_rig: Any,
) -> None:
    r = make_rig({"stages": {"analysis": {"mode": "fail"}}})
    task = file_ticket(r)
    r.run_until_idle()
    parked = current(r, task)
    assert (parked.stage, parked.status) == (Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR)
    assert f"{r.pipeline.max_attempts} attempts failed" in parked.status_reason
    assert "exited 1" in parked.status_reason
    runs = r.store.runs(task.id)
    assert [run.attempt for run in runs] == list(range(1, r.pipeline.max_attempts + 1))
    assert all(run.exit_code == 1 for run in runs)
    assert [j.state for j in r.store.jobs(task.id)] == [JobState.DEAD]
    # retries are not transitions: created, then parked
    assert [t.to_status for t in r.store.transitions(task.id)] == [
        TaskStatus.ACTIVE,
        TaskStatus.NEEDS_OPERATOR,
    ]
    # the retry tells the agent what went wrong last time
    second = prompts(r, task, Stage.ANALYSIS)[1]
    assert "exited 1" in second


def test_an_agent_that_fails_once_succeeds_on_the_second_attempt(make_rig: Any) -> None:
    r = make_rig({"stages": {"analysis": {"fail_attempts": 1}}})
    task = file_ticket(r)
    r.run_until_idle()
    assert [(run.attempt, run.exit_code) for run in r.store.runs(task.id)] == [(1, 1), (2, 0)]
    after = current(r, task)
    assert (after.stage, after.status) == (Stage.ARCHITECTURE, TaskStatus.WAITING)


def test_an_agent_that_crashes_counts_as_a_failed_attempt(make_rig: Any) -> None:
    r = make_rig({"stages": {"analysis": {"mode": "crash"}}})
    task = file_ticket(r)
    r.run_until_idle()
    parked = current(r, task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    runs = r.store.runs(task.id)
    assert len(runs) == r.pipeline.max_attempts
    assert all(run.exit_code == -signal.SIGKILL for run in runs)


def test_a_hanging_agent_is_killed_at_the_stage_timeout_and_the_attempt_fails(
    make_rig: Any,
) -> None:
    base = pl.default_pipeline()
    pipeline = replace(
        base,
        stages=tuple(
            replace(s, timeout_s=1) if s.stage == Stage.ANALYSIS else s for s in base.stages
        ),
        max_attempts=1,
    )
    r = make_rig({"stages": {"analysis": {"mode": "hang"}}}, pipeline=pipeline)
    task = file_ticket(r)
    r.run_until_idle()
    parked = current(r, task)
    assert (parked.stage, parked.status) == (Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR)
    assert "timed out" in parked.status_reason
    [run] = r.store.runs(task.id)
    assert run.exit_code is not None and run.exit_code != 0
    assert run.pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)  # the agent's whole process group is gone


def test_an_artifact_missing_its_headings_fails_the_gate_and_the_stage_is_retried(
    make_rig: Any,
) -> None:
    spec_file = "docs/work-items/{{key}}/spec.md"
    r = make_rig({"stages": {"analysis": {"files": {spec_file: "# Spec\n\nTo do.\n"}}}})
    task = file_ticket(r)
    r.run_until_idle()
    parked = current(r, task)
    assert (parked.stage, parked.status) == (Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR)
    assert "lacks the heading(s): Problem, Acceptance criteria" in parked.status_reason
    assert len(r.store.runs(task.id)) == r.pipeline.max_attempts
    assert all(not g.passed for g in r.store.gate_records(task.id))


def test_a_stage_naming_an_agent_that_is_not_configured_parks_with_the_reason(
    make_rig: Any,
) -> None:
    r = make_rig(agents={"someone-else": ScriptedAgent(name="someone-else")})
    task = file_ticket(r)
    r.run_until_idle()
    parked = current(r, task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "not configured" in parked.status_reason
    assert r.store.runs(task.id) == []


# -- people's decisions ---------------------------------------------------------------------------


def test_an_approval_when_nothing_waits_is_refused_and_one_in_the_inbox_ignored(
    make_rig: Any,
) -> None:
    r = make_rig()
    task = file_ticket(r)
    assert current(r, task).status == TaskStatus.ACTIVE
    with pytest.raises(Conflict, match="is not waiting at a checkpoint"):
        r.intake.decide(task.key, True, "mallory")
    # one that reached the inbox anyway (sent as the task moved on) is read and ignored
    assert r.store.append_event(
        task.id, "stray", "approve", "mallory", {"checkpoint": "", "comment": ""}
    )
    r.run_until_idle()
    after = current(r, task)
    assert (after.stage, after.status, after.waiting_for) == (
        Stage.ARCHITECTURE,
        TaskStatus.WAITING,
        "approve-plan",
    )
    assert all(t.actor != "mallory" for t in r.store.transitions(task.id))
    assert r.store.pending_events(task.id) == []
    # the real approval still works afterwards
    approve(r, task, "alice")
    assert current(r, task).stage == Stage.DEPLOY


def test_an_approval_after_a_stray_event_at_the_same_wait_is_applied(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    waiting = current(r, task)
    assert waiting.status == TaskStatus.WAITING
    # what decide() writes when it read the task just before the wait began: no checkpoint
    assert r.store.append_event(
        task.id, f"{task.id}:v1:approve", "approve", "mallory", {"checkpoint": "", "comment": ""}
    )
    r.run_until_idle()
    assert current(r, task).version == waiting.version, "the stray approval is not applied"
    assert r.intake.decide(task.key, True, "alice")
    r.run_until_idle()
    after = current(r, task)
    assert r.store.pending_events(task.id) == [], "alice's approval was never read"
    assert (after.stage, after.waiting_for) == (Stage.DEPLOY, "confirm-deploy")


def test_a_second_decision_for_the_same_version_is_deduplicated(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "alice") is True
    assert r.intake.decide(task.key, True, "alice") is False
    r.run_until_idle()
    assert [t.actor for t in r.store.transitions(task.id)].count("alice") == 1
    assert current(r, task).stage == Stage.DEPLOY


def test_a_rejection_in_the_inbox_of_a_wait_already_approved_is_ignored(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "alice")
    # intake refuses a second answer; one written by an older orch is still ignored
    assert r.store.append_event(
        task.id, "older", "reject", "bob", {"checkpoint": "approve-plan", "comment": "no"}
    )
    r.run_until_idle()
    actors = [t.actor for t in r.store.transitions(task.id)]
    assert "alice" in actors
    assert "bob" not in actors
    assert current(r, task).rework_rounds == 0
    assert r.store.pending_events(task.id) == []


# -- merges ---------------------------------------------------------------------------------------


def test_a_conflicting_merge_goes_back_to_development_with_the_conflicts_to_resolve(
    make_rig: Any,
) -> None:
    notes = {"NOTES.md": "notes of {{key}}\n"}
    r = make_rig({"stages": {"development": {"files": notes}}})
    first, second = file_ticket(r, "First"), file_ticket(r, "Second")
    r.run_until_idle()
    approve_all(r, first, second)  # the plans: both branches started from the same main
    assert [current(r, t).waiting_for for t in (first, second)] == ["confirm-deploy"] * 2
    back = [
        t
        for t in r.store.transitions(second.id)
        if (t.from_stage, t.to_stage) == (Stage.DEPLOY_STAGING, Stage.DEVELOPMENT)
    ]
    assert len(back) == 1 and "conflicts with main in NOTES.md" in back[0].reason
    # the developer's next round started from the merge with the conflict marked, and its
    # resolution landed
    assert "conflicts with main in NOTES.md" in prompts(r, second, Stage.DEVELOPMENT)[1]
    assert len(r.forge.merges) == 2
    landed = r.forge.merges[-1][2]
    assert r.forge.read_file("app", landed, "NOTES.md") == f"notes of {second.key}\n"


def test_a_merge_conflict_sends_the_task_back_to_development_with_feedback(
    make_rig: Any,
) -> None:
    r = make_rig()
    r.forge.fail_merge = MergeConflict("README.md conflicts with main")
    task = file_ticket(r)
    r.run_until_idle()
    approve(r, task, "alice")

    history = r.store.transitions(task.id)
    back = [
        t
        for t in history
        if (t.from_stage, t.to_stage) == (Stage.DEPLOY_STAGING, Stage.DEVELOPMENT)
    ]
    assert back, "the conflict should send the task back to development"
    assert all("README.md conflicts with main" in t.reason for t in back)
    dev_prompts = prompts(r, task, Stage.DEVELOPMENT)
    assert "the merge into main failed" in dev_prompts[1]
    assert "README.md conflicts with main" in dev_prompts[1]
    assert r.forge.merges == []
    merges = [e for e in r.store.effects(task.id) if e.kind == "merge"]
    assert merges and all(e.state == EffectState.FAILED for e in merges)
    parked = current(r, task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert_history_is_gap_free_on_pipeline_edges(r, task)


def _merge_key(task: Task, head: str) -> str:
    return merge_key(task.key, task.id, Stage.DEPLOY_STAGING, head)


def test_a_merge_that_landed_before_a_crash_is_resolved_against_the_forge_not_repeated(
    make_rig: Any,
) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "alice")
    run_to_stage(r, task, Stage.DEPLOY_STAGING)

    # a worker claims the deploy-staging job, records the intent, merges, and dies
    crashed = r.crash_a_worker()
    assert crashed.stage == Stage.DEPLOY_STAGING
    head = r.forge.branch_head("app", task.branch)
    assert head is not None
    key = _merge_key(task, head)
    r.store.begin_effect(crashed, key, "merge", "app", head)
    r.forge.merge("app", task.branch, head, "merged by the crashed worker")
    assert len(r.forge.merges) == 1

    r.run_until_idle()  # the sweep requeues the expired job; the engine resolves the effect
    effect = r.store.get_effect(key)
    assert effect is not None
    assert effect.state == EffectState.SUCCEEDED
    assert effect.result.get("resolved_by") == "forge"
    assert effect.result.get("merge_sha") == r.forge.merges[0][2]
    assert len(r.forge.merges) == 1
    approve(r, task, "bob")
    assert current(r, task).status == TaskStatus.DONE
    assert len(r.forge.merges) == 1
    assert_history_is_gap_free_on_pipeline_edges(r, task)


def test_a_merge_intent_that_never_reached_the_forge_is_merged_once_its_time_is_up() -> None:
    clock = SimClock()
    r = rig({"default": ScriptedAgent()}, clock=clock)
    try:
        task = file_ticket(r)
        r.run_until_idle()
        assert r.intake.decide(task.key, True, "alice")
        run_to_stage(r, task, Stage.DEPLOY_STAGING)

        crashed = r.crash_a_worker()
        head = r.forge.branch_head("app", task.branch)
        assert head is not None
        key = _merge_key(task, head)
        r.store.begin_effect(crashed, key, "merge", "app", head)

        r.run_until_idle()
        # the request may have been sent, and may still be carried out: nothing is sent again
        # until it would have been
        effect = r.store.get_effect(key)
        assert effect is not None and effect.state == EffectState.INITIATED
        assert r.forge.merges == []
        assert "may still carry out the merge" in r.store.jobs(task.id)[-1].last_error
        clock.advance(r.forge.settle_after_s + 1)
        r.run_until_idle()
        effect = r.store.get_effect(key)
        assert effect is not None and effect.state == EffectState.SUCCEEDED
        assert [m[1] for m in r.forge.merges] == [head]
    finally:
        r.close()
    approve(r, task, "bob")
    assert current(r, task).status == TaskStatus.DONE
    assert len(r.forge.merges) == 1


# -- faults and recovery --------------------------------------------------------------------------


def approve_all(r: Rig, *tasks: Task) -> None:
    for t in tasks:
        waiting = current(r, t)
        if waiting.status == TaskStatus.WAITING:
            assert r.intake.decide(t.key, True, "alice")
    r.run_until_idle()


def test_a_rejected_deploy_with_unchanged_code_is_not_merged_again(make_rig: Any) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    approve_all(r, task)
    assert current(r, task).waiting_for == "confirm-deploy"
    assert r.intake.decide(task.key, False, "bob", "not on a Friday")
    r.run_until_idle()
    back = current(r, task)
    assert (back.status, back.waiting_for) == (TaskStatus.WAITING, "confirm-deploy")
    assert back.rework_rounds == 1
    # the second round's review and report were written again, word for word: same head
    assert len(r.forge.merges) == 1


def test_a_merge_the_forge_refuses_is_settled_and_does_not_block_the_repository(
    make_rig: Any,
) -> None:
    r = make_rig()
    first = file_ticket(r, "First")
    r.run_until_idle()
    r.forge.fail_merge = ForgeError("push rejected")
    approve_all(r, first)
    parked = current(r, first)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "push rejected" in parked.status_reason
    merges = [e for e in r.store.effects(first.id) if e.kind == "merge"]
    assert [e.state for e in merges] == [EffectState.FAILED]

    r.forge.fail_merge = None
    second = file_ticket(r, "Second")
    r.run_until_idle()
    approve_all(r, second)
    assert current(r, second).waiting_for == "confirm-deploy"
    assert len(r.forge.merges) == 1


def test_a_default_branch_that_moves_during_the_candidate_test_is_built_on_and_tested_again(
    make_rig: Any,
) -> None:
    r = make_rig()
    task = file_ticket(r)
    r.run_until_idle()
    moved: list[str] = []
    r.forge.before_land = lambda: moved.append(r.forge.move_default("app", {"OTHER.md": b"x"}))
    approve_all(r, task)
    assert current(r, task).waiting_for == "confirm-deploy"
    candidates = [g for g in r.store.gate_records(task.id) if g.gate == "merge-candidate"]
    assert [g.passed for g in candidates] == [True, True]
    assert len({g.head_sha for g in candidates}) == 2
    [(_, head, landed)] = r.forge.merges
    # what landed is the second candidate: built on the moved head, holding both changes
    assert landed == candidates[-1].head_sha
    assert r.forge.repos["app"].commits[landed].parents == (moved[0], head)
    assert r.forge.read_file("app", landed, "OTHER.md") == "x"


def test_a_failing_notifier_neither_reruns_the_stage_nor_parks_the_task() -> None:
    failing = MemoryNotifier()
    failing.fail_with = ConnectionError("chat service down")
    r = rig({"default": ScriptedAgent()}, notifier=failing)
    try:
        task = file_ticket(r)
        r.run_until_idle()
        waiting = current(r, task)
        assert (waiting.status, waiting.waiting_for) == (TaskStatus.WAITING, "approve-plan")
        assert [run.stage for run in r.store.runs(task.id)] == [Stage.ANALYSIS]
        notes = [e for e in r.store.effects(task.id) if e.kind == "notify"]
        assert [n.key.rsplit(":", 1)[-1] for n in notes] == ["started", "waiting"]
        assert all(n.state == EffectState.FAILED for n in notes)
        assert all("chat service down" in n.result["error"] for n in notes)
    finally:
        r.close()


def test_an_unreadable_pipeline_snapshot_parks_the_task_with_the_reason(make_rig: Any) -> None:
    r = make_rig()
    # a snapshot written by another version of orch, say
    ticket = r.store.file_ticket("app", "APP", "Add a greeting", "")
    unreadable = {"stages": [{"stage": "analysis"}]}
    task = r.store.create_task(ticket, "orch/APP-1", unreadable, pl.start(r.pipeline), "board")
    r.run_until_idle()
    parked = current(r, task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "pipeline is unreadable" in parked.status_reason
    assert [j.state for j in r.store.jobs(task.id)] == [JobState.DEAD]


def test_the_previous_attempts_error_reaches_the_retry_prompt(make_rig: Any) -> None:
    r = make_rig({"stages": {"analysis": {"fail_attempts": 1}}})
    task = file_ticket(r)
    r.run_until_idle()
    first, second = prompts(r, task, Stage.ANALYSIS)
    assert "Why the previous attempt failed" not in first
    assert "Why the previous attempt failed\n\nagent scripted exited 1" in second
    assert current(r, task).feedback == ""


def test_an_active_task_holds_the_repository_until_it_waits(make_rig: Any) -> None:
    r = make_rig()
    a = file_ticket(r, "First")
    b = file_ticket(r, "Second")
    r.run_until_idle()
    # each analysis ran while the other task waited at its plan checkpoint
    assert current(r, a).waiting_for == current(r, b).waiting_for == "approve-plan"
    before = len(r.store.runs(a.id)) + len(r.store.runs(b.id))
    approve_all(r, a, b)
    runs = sorted([run for t in (a, b) for run in r.store.runs(t.id)], key=lambda run: run.id)[
        before:
    ]
    owners = [run.task_id for run in runs]
    # one task works through architecture..testing, then the other: never interleaved
    assert owners == sorted(owners, key=owners.index)
    assert len(set(owners)) == 2


@pytest.mark.parametrize(
    ("check", "deployed_again", "status"),
    [
        ("exit 0", False, TaskStatus.WAITING),
        # "not deployed" (exit 1) before the deploy, and deployed after it
        ("test -e {marker}", True, TaskStatus.WAITING),
        ("exit 2", False, TaskStatus.NEEDS_OPERATOR),
    ],
)
def test_a_deploy_of_unknown_outcome_is_checked_before_it_is_ever_repeated(
    tmp_path: Path, check: str, deployed_again: bool, status: TaskStatus
) -> None:
    marker = tmp_path / "deployed"
    repo = RepoSettings(
        name="app",
        test_command="true",
        deploy={"staging": DeployTarget(f"touch {marker}", check=check.format(marker=marker))},
    )
    r = rig({"default": ScriptedAgent()}, repo=repo)
    try:
        task = file_ticket(r)
        r.run_until_idle()
        assert r.intake.decide(task.key, True, "alice")
        run_to_stage(r, task, Stage.DEPLOY_STAGING)
        # a worker that merged, started the deploy and died before confirming it
        crashed = r.crash_a_worker()
        head = r.forge.branch_head("app", task.branch)
        assert head is not None
        release = r.forge.merge("app", task.branch, head, "merged before the crash")
        key = _merge_key(task, head)
        r.store.begin_effect(crashed, key, "merge", "app", head)
        r.store.finish_effect(crashed, key, EffectState.SUCCEEDED, {"merge_sha": release})
        deploy_key = naming.deploy_key("app", "staging", release)
        r.store.begin_effect(crashed, deploy_key, "deploy:staging", "app", release)

        r.run_until_idle()
        assert current(r, task).status == status
        assert marker.exists() == deployed_again
        effect = r.store.get_effect(deploy_key)
        assert effect is not None
        expected = (
            EffectState.UNKNOWN if status == TaskStatus.NEEDS_OPERATOR else EffectState.SUCCEEDED
        )
        assert effect.state == expected
        assert len(r.forge.merges) == 1
    finally:
        r.close()


def test_people_hear_a_task_started_once_its_first_agent_has() -> None:
    """The notice is not on the way from the ticket to the agent: it is sent after the agent's
    process started and its run was recorded."""
    seen: list[tuple[str, list[Any]]] = []

    class Watching(MemoryNotifier):
        def notify(self, key: str, text: str, news: Any = None) -> None:
            seen.append((key.rsplit(":", 1)[-1], [run.pid for run in r.store.runs(task.id)]))
            super().notify(key, text, news)

    r = rig({"default": ScriptedAgent()}, notifier=Watching())
    try:
        task = file_ticket(r)
        r.run_until_idle()
    finally:
        r.close()
    started = [runs for kind, runs in seen if kind == "started"]
    assert len(started) == 1
    [pids] = started
    assert len(pids) == 1 and pids[0] is not None  # the analysis agent's run, started
