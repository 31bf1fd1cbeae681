"""A forge whose history lives in memory, for tests and the model: merges, candidates and
branches behave as the local git forge's do, with no git."""

from __future__ import annotations

import difflib
import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch import crashpoints
from orch.adapters.forges import gitea_hooks
from orch.domain.errors import DefaultMoved, ForgeError, HeadMoved, MergeConflict, NotFound
from orch.ports import Candidate, PullRequest, PullState, Reaction, StatusState

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
    message: str = ""


@dataclass
class _Repo:
    default_branch: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    base_of: dict[str, str] = field(default_factory=dict)  # branch -> commit it started from


@dataclass
class _Pull:
    number: int
    branch: str
    title: str
    body: str
    state: PullState = PullState.OPEN
    head: str = ""  # once it is not open: its last head
    merge_sha: str = ""


class MemoryForge:
    """A forge whose history lives in memory; worktrees are real directories under a temp root.

    `merges` records every merge call that landed, the authoritative log for "merged once".
    """

    settle_after_s = 60.0  # as a hosted forge's might be: tests move their clocks past it

    def __init__(self, repos: Mapping[str, Snapshot], default_branch: str = "main") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="orch-memforge-"))
        self.repos: dict[str, _Repo] = {}
        self.merges: list[tuple[str, str, str]] = []  # (repo, head, merge sha)
        self.deleted: list[tuple[str, str]] = []  # (repo, branch)
        self.fail_merge: Exception | None = None
        self.fail_find: Exception | None = None  # what asking whether a head landed raises
        self.before_land: Callable[[], None] | None = None  # runs once, as the next land starts
        self.fail_delete: Exception | None = None
        self.pulls: dict[str, list[_Pull]] = {}
        # (repo, sha) -> context -> (state, description, target_url)
        self.statuses: dict[tuple[str, str], dict[str, tuple[StatusState, str, str]]] = {}
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

    def keep_spares(self, count: int, stop: threading.Event, interval_s: float) -> None:
        """Nothing to make ahead: a worktree here is a directory written at once."""
        stop.wait()

    def prepare_worktree(self, repo: str, branch: str, fresh: bool = False) -> Path:
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
            c = _Commit(_sha(files, (head,)), files, (head,), message)
            r.commits[c.sha] = c
            r.branches[branch] = c.sha
        return r.branches[branch]

    def branch_head(self, repo: str, branch: str) -> str | None:
        return self._repo(repo).branches.get(branch)

    def merge_candidate(
        self, repo: str, branch: str, expected_head: str, message: str
    ) -> Candidate:
        r = self._repo(repo)
        landed = self.find_merge(repo, expected_head)
        if landed:
            return Candidate(landed, landed, expected_head, landed=True)
        head = r.branches.get(branch)
        if head != expected_head:
            raise HeadMoved(f"{branch} is at {head}, not {expected_head}")
        base = r.commits[r.base_of.get(branch, r.branches[r.default_branch])].files
        ours = r.commits[r.branches[r.default_branch]].files
        theirs = r.commits[head].files
        merged = dict(ours)
        conflicts = []
        for path in sorted(set(base) | set(theirs)):
            if base.get(path) == theirs.get(path):
                continue
            if ours.get(path) not in (base.get(path), theirs.get(path)):
                conflicts.append(path)
                merged[path] = (
                    b"<<<<<<< ours\n"
                    + ours.get(path, b"")
                    + b"=======\n"
                    + theirs.get(path, b"")
                    + b">>>>>>> theirs\n"
                )
            elif path in theirs:
                merged[path] = theirs[path]
            else:
                merged.pop(path, None)
        parents = (r.branches[r.default_branch], head)
        c = _Commit(_sha(merged, parents), merged, parents, message)
        r.commits[c.sha] = c
        return Candidate(c.sha, parents[0], head, conflicts=tuple(conflicts))

    def land(self, repo: str, candidate: Candidate) -> str:
        if candidate.landed:
            return candidate.sha
        if candidate.conflicts:
            raise MergeConflict(f"{candidate.sha[:12]} holds conflicts; it never lands")
        if self.fail_merge is not None:
            raise self.fail_merge
        hook, self.before_land = self.before_land, None
        if hook is not None:
            hook()
        r = self._repo(repo)
        if r.branches[r.default_branch] != candidate.base:
            raise DefaultMoved(f"{r.default_branch} moved from {candidate.base[:12]}")
        r.branches[r.default_branch] = candidate.sha
        for branch, head in r.branches.items():
            if head == candidate.head:
                r.base_of[branch] = head  # the merged head is the branch's next merge base
                for pull in self.pulls.get(repo, []):
                    if pull.branch == branch and pull.state == PullState.OPEN:
                        pull.state, pull.head, pull.merge_sha = (
                            PullState.MERGED,
                            head,
                            candidate.sha,
                        )
        self.merges.append((repo, candidate.head, candidate.sha))
        crashpoints.hit("forge.request.sent")
        return candidate.sha

    def adopt(self, repo: str, branch: str, candidate: Candidate) -> None:
        r = self._repo(repo)
        if r.branches.get(branch) != candidate.head:
            raise HeadMoved(f"{branch} is not at {candidate.head}")
        r.branches[branch] = candidate.sha
        r.base_of[branch] = candidate.base

    def merge(self, repo: str, branch: str, expected_head: str, message: str) -> str:
        """Merge without a test, as a worker that crashed after landing would have."""
        return self.land(repo, self.merge_candidate(repo, branch, expected_head, message))

    def push_commit(self, repo: str, branch: str, files: Snapshot, parent: str) -> str:
        """A commit on `branch` made on top of `parent`, as another worker would push it."""
        r = self._repo(repo)
        merged = {**r.commits[parent].files, **files}
        c = _Commit(_sha(merged, (parent,)), merged, (parent,))
        r.commits[c.sha] = c
        r.branches[branch] = c.sha
        return c.sha

    def move_default(self, repo: str, files: Snapshot) -> str:
        """Someone else's commit on the default branch."""
        r = self._repo(repo)
        head = r.branches[r.default_branch]
        merged = {**r.commits[head].files, **files}
        c = _Commit(_sha(merged, (head,)), merged, (head,))
        r.commits[c.sha] = c
        r.branches[r.default_branch] = c.sha
        return c.sha

    def find_merge(self, repo: str, head_sha: str) -> str | None:
        """The merge on the default branch that brought `head_sha` there (a candidate that
        never landed is not on it)."""
        if self.fail_find is not None:
            raise self.fail_find
        r = self._repo(repo)
        seen: set[str] = set()
        todo = [r.branches[r.default_branch]]
        while todo:
            sha = todo.pop()
            if sha in seen:
                continue
            seen.add(sha)
            c = r.commits[sha]
            if head_sha in c.parents[1:]:
                return c.sha
            todo.extend(c.parents)
        return None

    def read_default_file(self, repo: str, path: str) -> str | None:
        r = self._repo(repo)
        data = r.commits[r.branches[r.default_branch]].files.get(path)
        return data.decode() if data is not None else None

    def read_file(self, repo: str, sha: str, path: str) -> str | None:
        data = self._repo(repo).commits[sha].files.get(path)
        return data.decode() if data is not None else None

    def diff(self, repo: str, head: str) -> str:
        r = self._repo(repo)
        branch = next((b for b, h in r.branches.items() if h == head), "")
        old = r.commits[r.base_of.get(branch, r.branches[r.default_branch])].files
        new = r.commits[head].files
        out = []
        for path in sorted(set(old) | set(new)):
            if old.get(path) == new.get(path):
                continue
            a = old.get(path, b"").decode(errors="replace").splitlines()
            b = new.get(path, b"").decode(errors="replace").splitlines()
            out.append(f"diff --git a/{path} b/{path}")
            if path not in old:
                out.append("new file mode 100644")
            if path not in new:
                out.append("deleted file mode 100644")
            out.extend(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}", n=0, lineterm=""))
        return "\n".join(out) + "\n"

    def is_ancestor(self, repo: str, ancestor: str, descendant: str) -> bool:
        commits = self._repo(repo).commits
        todo, seen = [descendant], set()
        while todo:
            sha = todo.pop()
            if sha == ancestor:
                return True
            if sha not in seen:
                seen.add(sha)
                todo.extend(commits[sha].parents)
        return False

    def round_base(self, repo: str, head: str, marker: str) -> str:
        commits = self._repo(repo).commits
        sha = head
        while commits[sha].parents and commits[sha].message.rstrip().endswith("\n" + marker):
            sha = commits[sha].parents[0]
        return sha

    def checkout(self, repo: str, worktree: Path, sha: str) -> None:
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
        for pull in self.pulls.get(repo, []):
            if pull.branch == branch and pull.state == PullState.OPEN:
                # as Gitea does: a deleted branch's open pull request is closed
                pull.head, pull.state = r.branches.get(branch, pull.head), PullState.CLOSED
        r.branches.pop(branch, None)
        r.base_of.pop(branch, None)
        self.deleted.append((repo, branch))

    # -- pull requests -----------------------------------------------------------------------

    def _shown(self, repo: str, pull: _Pull) -> PullRequest:
        head = pull.head
        if pull.state == PullState.OPEN:
            head = self._repo(repo).branches.get(pull.branch, head)
        url = f"memory://{repo}/pulls/{pull.number}"
        return PullRequest(pull.number, url, head, pull.state, pull.merge_sha)

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        if branch not in self._repo(repo).branches:
            raise ForgeError(f"no branch {branch} to open a pull request of")
        pulls = self.pulls.setdefault(repo, [])
        for pull in reversed(pulls):
            if pull.branch == branch and pull.state == PullState.OPEN:
                return self._shown(repo, pull)
        pulls.append(_Pull(len(pulls) + 1, branch, title, body))
        return self._shown(repo, pulls[-1])

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        found = [p for p in self.pulls.get(repo, []) if p.branch == branch]
        return self._shown(repo, found[-1]) if found else None

    def close_pull(self, repo: str, number: int) -> None:
        """A person closes the pull request without merging it."""
        for pull in self.pulls.get(repo, []):
            if pull.number == number and pull.state == PullState.OPEN:
                pull.head = self._repo(repo).branches.get(pull.branch, pull.head)
                pull.state = PullState.CLOSED
                return
        raise NotFound(f"no open pull request #{number} in {repo}")

    def merge_by_hand(self, repo: str, number: int) -> str:
        """A person merges the open pull request as it is, in the forge's own page: its head
        lands on the default branch (a merge commit, which it returns) with no gate of orch's."""
        pulls = self.pulls.get(repo, [])
        pull = next((p for p in pulls if p.number == number and p.state == PullState.OPEN), None)
        if pull is None:
            raise NotFound(f"no open pull request #{number} in {repo}")
        r = self._repo(repo)
        head = r.branches[pull.branch]
        candidate = self.merge_candidate(repo, pull.branch, head, f"Merge pull request #{number}")
        if candidate.conflicts:
            raise MergeConflict(f"#{number} has conflicts; the forge will not merge it")
        r.branches[r.default_branch] = candidate.sha
        r.base_of[pull.branch] = head
        pull.state, pull.head, pull.merge_sha = PullState.MERGED, head, candidate.sha
        return candidate.sha

    def describe_pull(self, repo: str, number: int, title: str, body: str) -> None:
        for pull in self.pulls.get(repo, []):
            if pull.number == number:
                pull.title, pull.body = title, body
                return
        raise NotFound(f"no pull request #{number} in {repo}")

    def reaction(self, event: str, payload: Mapping[str, Any]) -> Reaction | None:
        """Deliveries shaped as Gitea's, whose repository's full name is orch's name for it."""
        repos = {name.lower(): name for name in self.repos}
        return gitea_hooks.reaction(event, payload, repos, own="orch")

    def set_status(
        self,
        repo: str,
        sha: str,
        context: str,
        state: StatusState,
        description: str = "",
        target_url: str = "",
    ) -> None:
        self._repo(repo)
        self.statuses.setdefault((repo, sha), {})[context] = (state, description, target_url)
