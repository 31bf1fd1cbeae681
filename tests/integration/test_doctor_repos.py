"""orch doctor on real git remotes: reachable, the default branch there, its pipeline file
valid, and nothing left behind in orch's workspace."""

from __future__ import annotations

import os
from pathlib import Path

from e2e.conftest import commit_file
from orch.config import RepoSettingsModel
from orch.demo import sample
from orch.doctor.report import Check
from orch.doctor.repos import check_repo

ENV = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def repo(remote: Path | str, branch: str = "main") -> RepoSettingsModel:
    return RepoSettingsModel(name="sample", remote=str(remote), default_branch=branch)


def lines(checks: list[Check]) -> list[str]:
    return [c.line() for c in checks]


def test_a_reachable_remote_with_its_branch_and_no_pipeline_file_uses_the_built_in(
    tmp_path: Path,
) -> None:
    _, remote = sample.create(tmp_path)
    checks = check_repo(repo(remote), ["default"], None, ENV, 20)
    assert [c.check for c in checks] == [
        "repo sample remote",
        "repo sample branch",
        "repo sample pipeline",
    ]
    assert all(c.level == "ok" for c in checks), lines(checks)
    assert checks[0].detail == f"{remote} answers (1 branch)"
    assert checks[2].detail.startswith("built-in pipeline (7 stages: analysis, architecture")


def test_the_built_in_pipeline_needs_its_default_agent(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    checks = check_repo(repo(remote), ["coder"], None, ENV, 20)
    assert not checks[2].ok
    assert checks[2].detail.endswith("the built-in pipeline needs agent(s) default")


def test_an_unreachable_remote_is_one_failure(tmp_path: Path) -> None:
    checks = check_repo(repo(tmp_path / "gone.git"), ["default"], None, ENV, 20)
    assert len(checks) == 1 and checks[0].check == "repo sample remote"
    assert not checks[0].ok
    assert "does not appear to be a git repository" in checks[0].detail


def test_a_remote_that_does_not_answer_is_given_up_on(tmp_path: Path) -> None:
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    env = {**ENV, "GIT_SSH_COMMAND": str(hang)}
    [check] = check_repo(repo("ssh://git.example/app.git"), ["default"], None, env, 1)
    assert check.detail == "ssh://git.example/app.git cannot be reached: no answer within 1s"


def test_a_default_branch_missing_from_the_remote_fails_naming_the_branches_there(
    tmp_path: Path,
) -> None:
    _, remote = sample.create(tmp_path)
    checks = check_repo(repo(remote, "trunk"), ["default"], None, ENV, 20)
    assert checks[0].ok and len(checks) == 2
    assert lines(checks)[1] == (
        "FAIL repo sample branch: default branch trunk is not on the remote (branches: main)"
    )


def test_an_invalid_pipeline_file_on_the_default_branch_fails_with_its_line(
    tmp_path: Path,
) -> None:
    _, remote = sample.create(tmp_path)
    commit_file(tmp_path, ".orch/pipeline.yaml", "stages:\n  - name: analysis\n  - name: reveiw\n")
    checks = check_repo(repo(remote), ["default"], None, ENV, 20)
    assert not checks[2].ok
    assert checks[2].detail.startswith("sample:.orch/pipeline.yaml:3: stages[1].name: Input")


def test_a_valid_pipeline_file_is_summarised_and_no_workspace_is_made(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    commit_file(
        tmp_path,
        ".orch/pipeline.yaml",
        "replace: true\nmerge: false\n"
        "stages:\n  - name: analysis\n  - name: development\n    rework_to: null\n",
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    checks = check_repo(repo(remote), ["default"], None, ENV, 20)
    assert checks[2].line() == (
        "ok   repo sample pipeline: .orch/pipeline.yaml on main (2 stages: analysis, development)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
