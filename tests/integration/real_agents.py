"""Shared by the tests that run the real `claude` and `codex` CLIs: where they are, and a world
of a sample repository, a scripted model server and orch apps built on them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orch.bootstrap import App, build
from orch.config import IsolatedSettings
from orch.demo import agents as demo_agents
from orch.demo import sample
from orch.domain.model import Task
from orch.domain.states import TaskStatus
from orch.testing import ModelServer, Script, Turn, Write
from orch.testing import ModelUsage as Usage


def binary(env_name: str, name: str) -> str:
    """The CLI from `env_name`, else from PATH; a missing one fails the test, never skips it."""
    found = os.environ.get(env_name) or shutil.which(name)
    if not found:
        pytest.fail(
            f"the `{name}` binary is missing: run .ci/run (it installs the agents) or set "
            f"{env_name} to its path",
            pytrace=False,
        )
    return found


CLAUDE_MODEL = demo_agents.CLAUDE_MODEL
# Claude Code's own list price for claude-sonnet-4-5, dollars per million tokens
SONNET = {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}
SECRETS = {
    "PLANE_API_KEY": "plane-secret-1",
    "GITEA_TOKEN": "gitea-secret-2",
    "GITHUB_TOKEN": "github-secret-3",
    "TELEGRAM_BOT_TOKEN": "telegram-secret-4",
    "ORCH_TRACKER__TOKEN": "orch-tracker-secret-5",
}


@dataclass
class World:
    root: Path
    remote: Path
    work: Path
    server: ModelServer
    apps: list[App]

    def claude(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "claude_code",
            "command": binary("ORCH_CLAUDE_BIN", "claude"),
            "model": CLAUDE_MODEL,
            "env": {
                **self.server.claude_env(),
                "CLAUDE_CONFIG_DIR": str(self.root / "claude-home"),
            },
            **extra,
        }

    def codex(self) -> dict[str, Any]:
        home = self.root / "codex-home"
        home.mkdir(exist_ok=True)
        return {
            "kind": "codex",
            "command": binary("ORCH_CODEX_BIN", "codex"),
            "model": demo_agents.CODEX_MODEL,
            "provider": {
                "name": "scripted",
                "base_url": f"{self.server.url}/v1",
                "env_key": "SCRIPTED_KEY",
                "options": {"request_max_retries": 0, "stream_max_retries": 0},
            },
            "env": {"SCRIPTED_KEY": "scripted", "CODEX_HOME": str(home)},
            "prices": {"input": 1.25, "output": 10.0, "cache_read": 0.125},
        }

    def pipeline(self, text: str) -> None:
        """Commit `.orch/pipeline.yaml` to the sample's default branch."""
        path = self.work / ".orch" / "pipeline.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        sample.git("add", "--all", cwd=self.work)
        sample.git("commit", "--quiet", "-m", "orch pipeline", cwd=self.work)
        sample.git("push", "--quiet", "origin", "main", cwd=self.work)

    def app(self, agents: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> App:
        settings = IsolatedSettings(
            data_dir=self.root / ".orch",
            store={"url": f"sqlite:///{self.root / 'orch.db'}"},
            workspace_root=self.root / "workspaces",
            logs_dir=self.root / "logs",
            repos=[
                {
                    "name": "sample",
                    "remote": str(self.remote),
                    "key_prefix": "DEMO",
                    "test_command": sample.test_command(),
                }
            ],
            agents=dict(agents),
            worker={"slots": 1, "backoff_base_s": 0, "kill_grace_s": 2},
        )
        app = build(settings, environ=environ)
        self.apps.append(app)
        return app


def drive(app: App, task: Task) -> Task:
    """Run jobs until the task ends or needs an operator, approving every checkpoint."""
    for _ in range(50):
        app.dispatcher.run_until_idle()
        task = app.store.get_task(task.id)
        if task.status != TaskStatus.WAITING:
            return task
        assert app.intake.decide(task.key, True, "alice")
    raise AssertionError(f"{task.key} never settled: {task.stage} {task.status}")


def writes(n: int, usage: Usage) -> Script:
    """`n` turns, each writing its own file and reporting `usage`."""
    return Script(
        "Stage: development",
        tuple(Turn((Write(f"turn-{i}.txt", f"turn {i}\n"),), usage) for i in range(n)),
    )
