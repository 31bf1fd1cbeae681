"""The ground a chaos run stands on: one sample project and bare remote per repository, a store,
and one settings file per orch process."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orch.chaos.checks import Remote, git
from orch.demo import sample
from orch.domain.errors import OrchError


@dataclass(frozen=True)
class WorkerTuning:
    """The worker settings a run gives both processes: short leases so faults are felt fast, and
    many attempts so that random kills do not dead-letter every task."""

    slots: int = 4
    lease_ttl_s: float = 4.0
    heartbeat_s: float = 1.0
    sweep_interval_s: float = 1.0
    poll_interval_s: float = 0.5
    max_attempts: int = 20
    kill_grace_s: float = 1.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 1.0

    def as_settings(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "lease_ttl_s": self.lease_ttl_s,
            "heartbeat_s": self.heartbeat_s,
            "sweep_interval_s": self.sweep_interval_s,
            "poll_interval_s": self.poll_interval_s,
            "max_attempts": self.max_attempts,
            "kill_grace_s": self.kill_grace_s,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
        }


@dataclass(frozen=True)
class RepoLab:
    name: str
    prefix: str
    root: Path
    remote: Remote
    deploy_log: Path
    max_active: int


@dataclass(frozen=True)
class Lab:
    root: Path
    store_url: str
    logs_dir: Path
    repos: tuple[RepoLab, ...]
    configs: dict[str, Path]  # role ("serve", "worker") -> its settings file

    def limits(self) -> dict[str, int]:
        return {r.name: r.max_active for r in self.repos}

    def remotes(self) -> list[Remote]:
        return [r.remote for r in self.repos]

    def deploy_logs(self) -> dict[str, Path]:
        return {r.name: r.deploy_log for r in self.repos}


def prepare_dir(directory: Path | None) -> Path:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="orch-chaos-"))
    root = directory.expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise OrchError(f"chaos directory {root} is not empty; pass a new or empty --dir")
    root.mkdir(parents=True, exist_ok=True)
    return root


def repo_name(i: int) -> tuple[str, str]:
    """The i-th repository's name and ticket key prefix: repo1/R1, repo2/R2, ..."""
    return f"repo{i + 1}", f"R{i + 1}"


def create_repo(root: Path, i: int, max_active: int) -> RepoLab:
    name, prefix = repo_name(i)
    home = root / name
    home.mkdir(parents=True)
    _, remote = sample.create(home)
    initial = git(remote, "rev-parse", "refs/heads/main")
    return RepoLab(
        name=name,
        prefix=prefix,
        root=home,
        remote=Remote(name, remote, "main", initial),
        deploy_log=home / "deploy.log",
        max_active=max_active,
    )


def repo_settings(repo: RepoLab) -> dict[str, Any]:
    return {
        "name": repo.name,
        "remote": str(repo.remote.path),
        "key_prefix": repo.prefix,
        "test_command": sample.test_command(),
        "max_active": repo.max_active,
        "deploy": {
            target: {
                "command": sample.deploy_command(repo.root, target),
                "check": sample.deploy_command(repo.root, target, check=True),
            }
            for target in ("staging", "production")
        },
    }


def build_lab(
    directory: Path | None,
    store_url: str | None,
    repos: int,
    max_active: int,
    tuning: WorkerTuning,
) -> Lab:
    root = prepare_dir(directory)
    url = store_url or f"sqlite:///{root / 'orch.db'}"
    logs = root / "logs"
    repo_labs = tuple(create_repo(root, i, max_active) for i in range(repos))
    configs: dict[str, Path] = {}
    for role in ("serve", "worker"):
        # each process its own workspace (mirror and worktrees): orch refuses two processes
        # running workers in one, since two agents must never share a worktree. They share the
        # store, the remotes and the agents' log directory.
        settings = {
            "data_dir": str(root / role),
            "workspace_root": str(root / role / "workspaces"),
            "logs_dir": str(logs),
            "store": {"url": url},
            "api": {"host": "127.0.0.1", "port": 0},
            "repos": [repo_settings(r) for r in repo_labs],
            "agents": {"default": {"kind": "scripted"}},
            "worker": tuning.as_settings(),
            "log_level": "INFO",
        }
        path = root / f"{role}.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        configs[role] = path
    return Lab(root=root, store_url=url, logs_dir=logs, repos=repo_labs, configs=configs)
