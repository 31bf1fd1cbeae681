"""An agent run as a configured non-root user, in a worktree orch hands to that user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.adapters.agents.users import AgentUser
from orch.bootstrap import build
from orch.config import IsolatedSettings
from orch.demo import sample
from orch.domain.errors import ConfigError
from orch.domain.states import TaskStatus

NOBODY = pwd.getpwnam("nobody")

# what the agent does, as whoever it runs as: say who it is, change a file orch checked out,
# add one, and ask git about the worktree it does not own
SCRIPT = (
    'id -u > whoami.txt && echo "$HOME" > home.txt'
    " && echo 'changed by the agent' >> README.md"
    " && mkdir -p notes && echo hi > notes/new.txt"
    " && git status --porcelain > git-status.txt"
)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can reach: pytest's own temporary tree is private to root."""
    path = Path(tempfile.mkdtemp(prefix="orch-run-as-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs orch to run as root")
def test_an_agent_configured_to_run_as_another_user_works_and_is_tested_as_that_user(
    open_dir: Path,
) -> None:
    work, remote = sample.create(open_dir / "project")
    settings = IsolatedSettings(
        data_dir=open_dir / "data",
        store={"url": f"sqlite:///{open_dir / 'orch.db'}"},
        workspace_root=open_dir / "workspaces",
        logs_dir=open_dir / "logs",
        repos=[
            {"name": "sample", "remote": str(remote), "key_prefix": "RUN", "test_command": "id -u"}
        ],
        agents={
            "default": {"kind": "command", "command": ["sh", "-c", SCRIPT], "run_as": "nobody"}
        },
    )
    (open_dir / "workspaces").mkdir()
    (open_dir / "workspaces").chmod(0o755)
    work_pipeline = work / ".orch" / "pipeline.yaml"
    work_pipeline.parent.mkdir()
    work_pipeline.write_text(
        "replace: true\nstages:\n  - name: development\n  - name: deploy-staging\n",
        encoding="utf-8",
    )
    sample.git("add", "--all", cwd=work)
    sample.git("commit", "--quiet", "-m", "one stage", cwd=work)
    sample.git("push", "--quiet", "origin", "main", cwd=work)
    app = build(settings)
    try:
        task = app.intake.file("sample", "Run as nobody", "", actor="test")
        app.dispatcher.run_until_idle()
        task = app.store.get_task(task.id)
        assert task.status == TaskStatus.DONE, task.status_reason
    finally:
        app.close()

    def on_branch(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"main:{path}"],
            cwd=remote,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert on_branch("whoami.txt") == f"{NOBODY.pw_uid}\n"
    # a home of the task's own, which that user may write
    home = open_dir / "data" / "homes" / f"{task.key}-{task.id}"
    assert on_branch("home.txt") == f"{home}\n"
    assert home.stat().st_uid == NOBODY.pw_uid
    assert on_branch("README.md").endswith("changed by the agent\n")
    assert on_branch("notes/new.txt") == "hi\n"
    # the agent's git trusted a worktree it does not own, and saw its own changes
    assert " M README.md" in on_branch("git-status.txt")
    # the tests gate runs what the agent wrote, so it runs as the agent's user too
    [gate_log] = (open_dir / "logs").glob("RUN-1-*/v*-development-gate-tests.log")
    assert gate_log.read_text().strip() == str(NOBODY.pw_uid)
    # and so does the test of the merge candidate, in a stage with no agent of its own
    [candidate_log] = (open_dir / "logs").glob("RUN-1-*/v*-deploy-staging-gate-merge-candidate.log")
    assert candidate_log.read_text().strip() == str(NOBODY.pw_uid)


def test_run_as_must_name_an_existing_user_other_than_root() -> None:
    with pytest.raises(ConfigError, match="run_as names no user on this host: no-such-user"):
        AgentUser.resolve("dev", "no-such-user", lambda: 0)
    with pytest.raises(ConfigError, match="run_as must name a user other than root"):
        AgentUser.resolve("dev", "root", lambda: 0)
    with pytest.raises(ConfigError, match="needs orch to run as root"):
        AgentUser.resolve("dev", "nobody", lambda: 1000)
    assert AgentUser.resolve("dev", "nobody", lambda: 0).uid == NOBODY.pw_uid
