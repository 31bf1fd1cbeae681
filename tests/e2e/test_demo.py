"""`orch demo` as a newcomer runs it: a subprocess, judged by what it left on disk."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.domain.states import EffectState

from .conftest import orch

pytestmark = pytest.mark.slow


def git(remote: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(remote), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "run"
    done = orch("demo", "--dir", str(root), "--json")
    assert done.returncode == 0, done.stderr
    return root, json.loads(done.stdout)


def test_demo_merges_the_change_into_the_remote_default_branch(demo_run: tuple[Path, dict]) -> None:
    root, summary = demo_run
    remote = root / "sample.git"
    main = git(remote, "rev-parse", "refs/heads/main")
    assert summary["ok"] is True
    assert summary["merge"]["commit"] == main
    parents = git(remote, "rev-list", "--parents", "-n", "1", main).split()[1:]
    assert parents[1] == summary["merge"]["effects"][-1]["precondition"]
    # the merged task branch is gone from the remote
    assert git(remote, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    assert "def slugify" in git(remote, "show", "main:sample/slug.py")
    assert "Verdict: approve" in git(remote, "show", "main:docs/work-items/DEMO-1/review.md")


def test_demo_history_is_gap_free_and_follows_pipeline_edges(demo_run: tuple[Path, dict]) -> None:
    root, _ = demo_run
    store = SqlStore(f"sqlite:///{root / 'orch.db'}")
    try:
        task = store.find_task("DEMO-1")
        assert task is not None
        history = store.transitions(task.id)
        assert [t.version for t in history] == list(range(1, task.version + 1))
        edges = pl.from_dict(task.pipeline).edges()
        assert all((t.from_stage, t.to_stage) in edges for t in history)
        assert history[-1].to_stage.value == "done"
        actors = {t.actor for t in history}
        assert any(a.startswith("demo") for a in actors)
    finally:
        store.close()


def test_demo_merges_exactly_once_and_deploys_the_release_to_both_targets(
    demo_run: tuple[Path, dict],
) -> None:
    root, _ = demo_run
    store = SqlStore(f"sqlite:///{root / 'orch.db'}")
    try:
        task = store.find_task("DEMO-1")
        assert task is not None
        effects = store.effects(task.id)
    finally:
        store.close()
    merges = [e for e in effects if e.kind == "merge"]
    assert [e.state for e in merges] == [EffectState.SUCCEEDED]
    release = merges[0].result["merge_sha"]
    deploys = {e.kind: e for e in effects if e.kind.startswith("deploy:")}
    assert set(deploys) == {"deploy:staging", "deploy:production"}
    assert all(e.state == EffectState.SUCCEEDED for e in deploys.values())
    log = (root / "deploy.log").read_text().split("\n")
    assert [line.split()[1:] for line in log if line] == [
        ["staging", release],
        ["production", release],
    ]
    assert (root / "prod" / "RELEASE").read_text().strip() == release
    assert (root / "prod" / "sample" / "slug.py").exists()


def test_demo_summary_reports_every_stage_with_its_gate_verdicts(
    demo_run: tuple[Path, dict],
) -> None:
    _, summary = demo_run
    stages = [s["stage"] for s in summary["task"]["stages"]]
    assert stages == [
        "analysis",
        "architecture",
        "development",
        "review",
        "testing",
        "deploy-staging",
        "deploy",
        "done",
    ]
    gates = {(g["stage"], g["gate"]): g["passed"] for g in summary["task"]["gates"]}
    assert gates == {
        ("analysis", "spec"): True,
        ("architecture", "adr"): True,
        ("development", "tests"): True,
        ("review", "review"): True,
        ("testing", "tests"): True,
        ("testing", "test-report"): True,
        ("deploy-staging", "integrity"): True,
        ("deploy-staging", "merge-candidate"): True,
    }


def test_demo_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    done = orch("demo", "--dir", str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.strip().startswith("error:")
    assert "not empty" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["something"]


def test_demo_stop_scenario_kills_the_agent_deletes_the_branch_and_leaves_main(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stop"
    done = orch("demo", "--dir", str(root), "--scenario", "stop", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["scenario"]
    assert report["agent_alive"] is False
    remote = root / "sample.git"
    assert git(remote, "for-each-ref", "refs/heads/").count("refs/heads/") == 1
    assert git(remote, "rev-list", "--count", "main") == "1"
    store = SqlStore(f"sqlite:///{root / 'orch.db'}")
    try:
        task = store.find_task("DEMO-1")
        assert task is not None
        assert task.status.value == "cancelled"
        history = store.transitions(task.id)
        assert history[-1].actor == "demo"
        assert (history[-2].to_stage.value, history[-1].to_stage.value) == (
            "development",
            "cancelled",
        )
        effects = store.effects(task.id)
        notes = [e for e in effects if e.kind == "notify" and "cancelled" in e.result["text"]]
        assert len(notes) == 1
        assert [e.kind for e in effects if e.kind == "merge"] == []
    finally:
        store.close()
    with pytest.raises(ProcessLookupError):
        os.kill(report["agent_pid"], 0)


def test_demo_reject_scenario_reworks_the_plan_with_the_comment_in_the_prompt(
    tmp_path: Path,
) -> None:
    root = tmp_path / "reject"
    done = orch("demo", "--dir", str(root), "--scenario", "reject", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    comment = summary["scenario"]["comment"]
    rejections = [h for h in summary["task"]["history"] if "rejected" in h["reason"]]
    assert len(rejections) == 1
    assert rejections[0]["to"] == {"stage": "analysis", "status": "active"}
    assert comment in rejections[0]["reason"]
    prompts = sorted((root / "logs").glob("DEMO-1-*/v*-analysis-*.prompt.md"))
    assert len(prompts) == 2
    texts = {p.read_text() for p in prompts}
    assert sum(comment in t for t in texts) == 1
    assert summary["merge"]["commit"] == git(root / "sample.git", "rev-parse", "main")


def test_demo_rejects_an_unknown_scenario_before_writing_anything(tmp_path: Path) -> None:
    done = orch("demo", "--dir", str(tmp_path / "x"), "--scenario", "sideways")
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown scenario 'sideways'")
    assert not (tmp_path / "x").exists()


def test_demo_crash_scenario_restarts_the_killed_worker_and_merges_exactly_once(
    tmp_path: Path,
) -> None:
    root = tmp_path / "crash"
    done = orch("demo", "--dir", str(root), "--scenario", "crash", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    report = summary["scenario"]
    assert report["exit"] == -9  # SIGKILL, at the crash point
    assert report["crash_point"] == "forge.request.sent"
    assert report["restarted_pid"] != report["killed_pid"]
    # the worker died with the merge's intent recorded and its outcome unknown to it
    assert report["effect_after_crash"] == "INITIATED"
    assert report["merge_effect"]["state"] == "SUCCEEDED"
    assert report["merge_effect"]["result"]["resolved_by"] == "forge"
    # the forge's own log: the approved head reached main through exactly one merge
    merges = git(root / "sample.git", "rev-list", "--merges", "--parents", "refs/heads/main")
    bringing_head = [ln for ln in merges.splitlines() if report["head"] in ln.split()[2:]]
    assert len(bringing_head) == 1
    assert summary["task"]["status"] == "done"
    assert "killed with SIGKILL" in done.stderr


def test_demo_landing_scenario_keeps_main_green_and_production_on_the_newer_release(
    tmp_path: Path,
) -> None:
    root = tmp_path / "landing"
    done = orch("demo", "--dir", str(root), "--scenario", "landing", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["scenario"]
    assert [t["status"] for t in report["tasks"]] == ["done", "done"]
    # the second merge met the first on main: its candidate was red, and it was not pushed
    [red] = report["red_candidates"]
    assert "ImportError" in red["reason"] or "cannot import" in red["reason"]
    assert report["main_tests_pass"] is True
    remote = root / "sample.git"
    assert git(remote, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    # the newer release was confirmed first; the older was superseded, never deployed
    outcomes = {p["key"]: p["outcome"] for p in report["production"]}
    assert outcomes == {report["confirmed_in_order"][0]: "deployed"} | {
        report["confirmed_in_order"][1]: "superseded"
    }
    newer = next(p["release"] for p in report["production"] if p["outcome"] == "deployed")
    assert report["production_deploys"] == [newer]
    assert (root / "prod" / "RELEASE").read_text().strip() == newer
