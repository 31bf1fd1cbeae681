"""Where a run may not be confined, it does not run, unless its repository says so; and a
run's log never grows past its cap."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from orch.adapters.agents.command import CommandAgent
from orch.adapters.process import CappedLog
from orch.adapters.sandbox.policy import LandlockSandbox
from orch.domain import pipeline as pl
from orch.domain.model import Task
from orch.domain.states import Stage, TaskStatus
from orch.ports import RepoSettings
from orch.testing import rig


def one_stage() -> pl.Pipeline:
    base = pl.default_pipeline()
    return replace(base, stages=(replace(base.stages[0], gates=()),), checkpoints=())


def test_without_landlock_a_run_refuses_to_start_and_says_why() -> None:
    agent = CommandAgent("default", ["sh", "-c", "touch ran"])
    r = rig({"default": agent}, pipeline=one_stage(), sandbox=LandlockSandbox((), abi=0))
    try:
        task = r.intake.file("app", "Anything")
        r.run_until_idle()
        parked = r.store.get_task(task.id)
        assert parked.status == TaskStatus.NEEDS_OPERATOR
        assert "Landlock is not available" in parked.status_reason
        assert "sandbox: none" in parked.status_reason
        assert r.store.runs(task.id) == []  # nothing was started
    finally:
        r.close()


def test_a_repository_that_says_sandbox_none_runs_unconfined_without_landlock() -> None:
    agent = CommandAgent("default", ["sh", "-c", "echo ran"])
    repo = RepoSettings(name="app", test_command="true", sandbox="none")
    r = rig({"default": agent}, repo=repo, pipeline=one_stage(), sandbox=LandlockSandbox((), abi=0))
    try:
        task = r.intake.file("app", "Anything")
        r.run_until_idle()
        assert r.store.get_task(task.id).status == TaskStatus.DONE
        [run] = r.store.runs(task.id)
        assert Path(run.log_path).read_text().strip() == "ran"
    finally:
        r.close()


def test_the_sandbox_says_which_confinement_is_in_force() -> None:
    assert "Landlock ABI 7" in LandlockSandbox((), abi=7).describe()
    assert "unavailable" in LandlockSandbox((), abi=0).describe()


def test_a_capped_log_keeps_the_newest_output_and_counts_what_it_dropped(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "run.log", cap=4096)
    for i in range(1000):
        log.write(f"line {i:04d}\n".encode())
    log.close()
    text = (tmp_path / "run.log").read_text()
    assert len(text.encode()) <= 4096
    assert text.endswith("line 0999\n")
    assert text.startswith("[orch: output cut at 4096 bytes;")
    assert log.received == 10_000
    note, kept = text.split("\n", 1)
    assert f"{log.dropped} bytes dropped" in note
    assert len(kept.encode()) == log.received - log.dropped


def _without_landlock(stage: pl.StageSpec) -> Task:
    base = pl.default_pipeline()
    r = rig(
        {},
        pipeline=replace(base, stages=(stage,), checkpoints=()),
        sandbox=LandlockSandbox((), abi=0),
    )
    try:
        task = r.intake.file("app", "Anything")
        r.run_until_idle()
        return r.store.get_task(task.id)
    finally:
        r.close()


def test_a_stage_that_runs_nothing_the_agents_wrote_needs_no_sandbox() -> None:
    deploy = pl.default_pipeline().spec(Stage.DEPLOY_STAGING)
    done = _without_landlock(replace(deploy, rework_to=None, actions=(pl.Action.DEPLOY_STAGING,)))
    # nothing was merged, so there is nothing to deploy: the stage parks for that, not Landlock
    assert "needs a merged release" in done.status_reason


def test_a_merge_runs_the_tests_on_the_candidate_so_it_needs_the_sandbox() -> None:
    deploy = pl.default_pipeline().spec(Stage.DEPLOY_STAGING)
    parked = _without_landlock(replace(deploy, rework_to=None))
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "Landlock is not available" in parked.status_reason
