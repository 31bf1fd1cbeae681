"""Test support shipped with orch: memory adapters, factories and a steppable app.

Tests build their own settings and hand these fakes to the code under test; nothing is patched.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orch.adapters.notifiers.log import MemoryNotifier
from orch.adapters.process import LocalRunner
from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.domain.errors import ForgeError, HeadMoved, MergeConflict, NotFound
from orch.domain.model import Claim
from orch.ports import Agent, DeployTarget, RepoSettings
from orch.services.dispatcher import Dispatcher, DispatcherSettings
from orch.services.engine import Engine, EngineSettings
from orch.services.intake import Intake

__all__ = [
    "MemoryForge",
    "MemoryNotifier",
    "MemoryRepos",
    "Rig",
    "memory_store",
    "rig",
]


def memory_store() -> SqlStore:
    """The store on an in-memory SQLite database: the same SQL, nothing on disk."""
    store = SqlStore("sqlite://")
    store.migrate()
    return store


Snapshot = dict[str, bytes]


def _sha(files: Snapshot, parents: tuple[str, ...]) -> str:
    h = hashlib.sha1()
    for p in parents:
        h.update(p.encode())
    for k in sorted(files):
        h.update(k.encode() + b"\0" + files[k] + b"\0")
    return h.hexdigest()


@dataclass
class _Commit:
    sha: str
    files: Snapshot
    parents: tuple[str, ...]


@dataclass
class _Repo:
    default_branch: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    base_of: dict[str, str] = field(default_factory=dict)  # branch -> commit it started from


class MemoryForge:
    """A forge whose history lives in memory; worktrees are real directories under a temp root.

    `merges` records every merge call that landed, the authoritative log for "merged once".
    """

    def __init__(self, repos: Mapping[str, Snapshot], default_branch: str = "main") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="orch-memforge-"))
        self.repos: dict[str, _Repo] = {}
        self.merges: list[tuple[str, str, str]] = []  # (repo, head, merge sha)
        self.deleted: list[tuple[str, str]] = []  # (repo, branch)
        self.fail_merge: Exception | None = None
        self.fail_delete: Exception | None = None
        for name, files in repos.items():
            r = _Repo(default_branch)
            c = _Commit(_sha(files, ()), dict(files), ())
            r.commits[c.sha] = c
            r.branches[default_branch] = c.sha
            self.repos[name] = r

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _repo(self, name: str) -> _Repo:
        try:
            return self.repos[name]
        except KeyError:
            raise NotFound(f"unknown repository {name!r}") from None

    def _path(self, repo: str, branch: str) -> Path:
        return self.root / repo / branch.replace("/", "-")

    def _write_tree(self, path: Path, files: Snapshot) -> None:
        if path.exists():
            shutil.rmtree(path)
        for rel, data in files.items():
            p = path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)

    def _read_tree(self, path: Path) -> Snapshot:
        return {
            str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }

    def prepare_worktree(self, repo: str, branch: str) -> Path:
        r = self._repo(repo)
        if branch not in r.branches:
            r.branches[branch] = r.branches[r.default_branch]
            r.base_of[branch] = r.branches[r.default_branch]
        path = self._path(repo, branch)
        self._write_tree(path, r.commits[r.branches[branch]].files)
        return path

    def commit_and_push(self, repo: str, worktree: Path, branch: str, message: str) -> str:
        r = self._repo(repo)
        files = self._read_tree(worktree)
        head = r.branches[branch]
        if files != r.commits[head].files:
            c = _Commit(_sha(files, (head,)), files, (head,))
            r.commits[c.sha] = c
            r.branches[branch] = c.sha
        return r.branches[branch]

    def branch_head(self, repo: str, branch: str) -> str | None:
        return self._repo(repo).branches.get(branch)

    def merge(self, repo: str, branch: str, expected_head: str, message: str) -> str:
        if self.fail_merge is not None:
            raise self.fail_merge
        r = self._repo(repo)
        landed = self.find_merge(repo, expected_head)
        if landed:
            return landed
        head = r.branches.get(branch)
        if head != expected_head:
            raise HeadMoved(f"{branch} is at {head}, not {expected_head}")
        base = r.commits[r.base_of.get(branch, r.branches[r.default_branch])].files
        ours = r.commits[r.branches[r.default_branch]].files
        theirs = r.commits[head].files
        merged = dict(ours)
        for path in set(base) | set(theirs):
            if base.get(path) == theirs.get(path):
                continue
            if ours.get(path) not in (base.get(path), theirs.get(path)):
                raise MergeConflict(f"{branch} conflicts with {r.default_branch} on {path}")
            if path in theirs:
                merged[path] = theirs[path]
            else:
                merged.pop(path, None)
        parents = (r.branches[r.default_branch], head)
        c = _Commit(_sha(merged, parents), merged, parents)
        r.commits[c.sha] = c
        r.branches[r.default_branch] = c.sha
        self.merges.append((repo, head, c.sha))
        return c.sha

    def find_merge(self, repo: str, head_sha: str) -> str | None:
        for c in self._repo(repo).commits.values():
            if head_sha in c.parents[1:]:
                return c.sha
        return None

    def read_default_file(self, repo: str, path: str) -> str | None:
        r = self._repo(repo)
        data = r.commits[r.branches[r.default_branch]].files.get(path)
        return data.decode() if data is not None else None

    def checkout(self, worktree: Path, sha: str) -> None:
        for r in self.repos.values():
            if sha in r.commits:
                self._write_tree(worktree, r.commits[sha].files)
                return
        raise ForgeError(f"no commit {sha}")

    def remove_worktree(self, repo: str, branch: str) -> None:
        shutil.rmtree(self._path(repo, branch), ignore_errors=True)

    def worktree_exists(self, repo: str, branch: str) -> bool:
        return self._path(repo, branch).exists()

    def delete_branch(self, repo: str, branch: str) -> None:
        if self.fail_delete is not None:
            raise self.fail_delete
        r = self._repo(repo)
        if branch == r.default_branch:
            raise ForgeError(f"refusing to delete {branch}")
        r.branches.pop(branch, None)
        r.base_of.pop(branch, None)
        self.deleted.append((repo, branch))


class MemoryRepos:
    def __init__(self, *repos: RepoSettings) -> None:
        self._repos = {r.name: r for r in repos}

    def get(self, name: str) -> RepoSettings:
        try:
            return self._repos[name]
        except KeyError:
            raise NotFound(f"unknown repository {name!r}") from None

    def limit(self, name: str) -> int:
        repo = self._repos.get(name)
        return repo.max_active if repo else 0


@dataclass
class Rig:
    """An engine wired to memory adapters, stepped with `run_until_idle()`."""

    store: SqlStore
    forge: MemoryForge
    repos: MemoryRepos
    notifier: MemoryNotifier
    engine: Engine
    dispatcher: Dispatcher
    intake: Intake
    pipeline: pl.Pipeline
    logs: Path

    def run_until_idle(self) -> int:
        return self.dispatcher.run_until_idle()

    def crash_a_worker(self) -> Claim:
        """A worker claims the next runnable job and dies: its lease has already expired, so
        the next sweep requeues the job, and whatever it wrote is left as it was."""
        claim = self.store.claim("crashed:1:gone", -1, self.repos.limit)
        assert claim is not None, "no runnable job to crash on"
        return claim

    def close(self) -> None:
        self.store.close()
        self.forge.close()
        shutil.rmtree(self.logs, ignore_errors=True)


def rig(
    agents: Mapping[str, Agent],
    *,
    pipeline: pl.Pipeline | None = None,
    files: Snapshot | None = None,
    repo: RepoSettings | None = None,
    store: SqlStore | None = None,
    notifier: MemoryNotifier | None = None,
    environ: Mapping[str, str] | None = None,
    max_attempts: int = 3,
    kill_grace_s: float = 10.0,
    cancel_bound_s: float = 1860.0,
) -> Rig:
    """One repository named "app" (unless `repo` says otherwise), the given agents, backoff off."""
    repo = repo or RepoSettings(
        name="app",
        test_command="true",
        deploy={
            "staging": DeployTarget("true"),
            "production": DeployTarget("true"),
        },
    )
    store = store or memory_store()
    forge = MemoryForge({repo.name: files or {"README.md": b"app\n"}})
    repos = MemoryRepos(repo)
    notifier = notifier or MemoryNotifier()
    logs = Path(tempfile.mkdtemp(prefix="orch-logs-"))
    chosen = pipeline or pl.default_pipeline()
    engine = Engine(
        store=store,
        forge=forge,
        agents=agents,
        repos=repos,
        runner=LocalRunner(),
        notifier=notifier,
        settings=EngineSettings(
            logs_dir=logs, backoff_base_s=0.0, heartbeat_s=5.0, kill_grace_s=kill_grace_s
        ),
        environ=environ,
    )
    dispatcher = Dispatcher(
        store,
        engine,
        repos.limit,
        DispatcherSettings(slots=1, max_attempts=max_attempts, cancel_bound_s=cancel_bound_s),
        alert=notifier.notify,
    )
    intake = Intake(store, repos, lambda _repo: chosen)
    return Rig(store, forge, repos, notifier, engine, dispatcher, intake, chosen, logs)
