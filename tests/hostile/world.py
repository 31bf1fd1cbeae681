"""A real orch (bootstrap, SQLite file, real git, the launcher and Landlock) on a sample project,
driven by a command agent that does what a hostile or careless agent would."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orch.bootstrap import App, build
from orch.config import load_settings
from orch.demo import sample
from orch.domain.model import Task

ONE_STAGE = "replace: true\nmerge: false\nstages:\n  - name: development\n"
SECRET = "orch-settings-secret-4711"


@dataclass
class Project:
    root: Path
    work: Path
    remote: Path
    apps: list[App] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / "data" / "orch.db"

    @property
    def config(self) -> Path:
        return self.root / "orch.yaml"

    def use_pipeline(self, text: str) -> None:
        path = self.work / ".orch" / "pipeline.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        sample.git("add", "--all", cwd=self.work)
        sample.git("commit", "--quiet", "-m", "pipeline", cwd=self.work)
        sample.git("push", "--quiet", "origin", "main", cwd=self.work)

    def app(self, script: str, repo: dict[str, object] | None = None, **worker: object) -> App:
        """orch with settings from a file, as a user runs it, and `script` as every agent;
        `repo` adds to the repository's settings."""
        settings = {
            "data_dir": str(self.root / "data"),
            "workspace_root": str(self.root / "workspaces"),
            "repos": [
                {
                    "name": "sample",
                    "remote": str(self.remote),
                    "key_prefix": "EVIL",
                    "test_command": sample.test_command(),
                    **(repo or {}),
                }
            ],
            "agents": {"default": {"kind": "command", "command": ["sh", "-c", script]}},
            "worker": {"kill_grace_s": 1.0, "heartbeat_s": 0.2, **worker},
            # a credential of orch's own, in the file no agent may read
            "store": {"url": f"sqlite:///{self.store}"},
            "api": {"host": "127.0.0.1"},
            "log_level": SECRET,
        }
        self.config.write_text(yaml.safe_dump(settings), encoding="utf-8")
        app = build(load_settings(self.config))
        self.apps.append(app)
        return app

    def run(self, script: str, title: str = "Do the work", **worker: object) -> Task:
        app = self.app(script, **worker)
        task = app.intake.file("sample", title, "", actor="test")
        app.dispatcher.run_until_idle()
        return app.store.get_task(task.id)

    def refs(self) -> dict[str, str]:
        """Every ref of the remote, by name."""
        out = subprocess.run(
            ["git", "for-each-ref", "--format=%(refname) %(objectname)"],
            cwd=self.remote,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(line.split() for line in out.splitlines())


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())
