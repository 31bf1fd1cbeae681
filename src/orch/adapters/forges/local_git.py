"""The local forge: a git remote (a bare repository, or any URL git can push to), worked through
a bare mirror and one worktree per task under the workspace root.

The merge is built with `git merge-tree --write-tree` and `git commit-tree` against the exact head
it was authorised for, then pushed as a plain fast-forward: orch never force-pushes, and never
deletes or rewrites a default branch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from orch import crashpoints
from orch.domain.errors import ForgeError, HeadMoved, MergeConflict, NotFound, WorkspaceError

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_IDENTITY = {
    "GIT_AUTHOR_NAME": "orch",
    "GIT_AUTHOR_EMAIL": "orch@localhost",
    "GIT_COMMITTER_NAME": "orch",
    "GIT_COMMITTER_EMAIL": "orch@localhost",
}


def safe_name(name: str) -> str:
    cleaned = _SAFE.sub("-", name).strip(".-")
    if not cleaned:
        raise WorkspaceError(f"{name!r} leaves nothing usable as a directory name")
    return cleaned


def check_writable(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".orch-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise WorkspaceError(
            f"workspace root {root} cannot be written: {exc.strerror or exc}"
        ) from exc
    return root.resolve()


class LocalGitForge:
    def __init__(self, root: Path, remotes: Mapping[str, tuple[str, str]]) -> None:
        """`remotes` maps a repository name to (remote URL or path, default branch)."""
        self.root = check_writable(Path(root))
        self.remotes = dict(remotes)
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in remotes}

    # -- plumbing ----------------------------------------------------------------------------

    def _git(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **_IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ForgeError(f"git {args[0]} failed: {detail[-1] if detail else proc.returncode}")
        return proc

    def _remote(self, repo: str) -> tuple[str, str]:
        try:
            return self.remotes[repo]
        except KeyError:
            raise NotFound(f"unknown repository {repo!r}") from None

    def _repo_dir(self, repo: str) -> Path:
        return self._inside(self.root / safe_name(repo))

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise WorkspaceError(f"{path} is outside the workspace root {self.root}")
        return resolved

    def mirror(self, repo: str) -> Path:
        url, _ = self._remote(repo)
        mirror = self._repo_dir(repo) / ".mirror.git"
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            self._git("clone", "--quiet", "--bare", url, str(mirror))
            self._git(
                "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*", cwd=mirror
            )
        self._git("fetch", "--quiet", "--prune", "origin", cwd=mirror)
        return mirror

    def worktree_path(self, repo: str, branch: str) -> Path:
        return self._inside(self._repo_dir(repo) / safe_name(branch))

    def _has_ref(self, mirror: Path, ref: str) -> bool:
        return (
            self._git("rev-parse", "--verify", "--quiet", ref, cwd=mirror, check=False).returncode
            == 0
        )

    # -- the port ----------------------------------------------------------------------------

    def prepare_worktree(self, repo: str, branch: str) -> Path:
        _, default = self._remote(repo)
        with self._locks[repo]:
            path = self.worktree_path(repo, branch)
            # every attempt starts from the branch as the remote has it: another orch process
            # may have pushed the stages since this one last worked on the task, and a crashed
            # agent's half-written files or an unpushed commit must not leak into the retry
            mirror = self.mirror(repo)
            pushed = self._has_ref(mirror, f"refs/remotes/origin/{branch}")
            if (path / ".git").exists():
                start = f"origin/{branch}" if pushed else branch
                try:
                    self._git("checkout", "--quiet", "--force", "-B", branch, start, cwd=path)
                    self._git("clean", "-fdq", cwd=path)
                    return path
                except ForgeError:
                    # a git killed mid-command (orch itself died) leaves a lock or half a
                    # checkout behind; a worktree is disposable: build it again from the remote
                    self._git("worktree", "remove", "--force", str(path), cwd=mirror, check=False)
                    shutil.rmtree(path, ignore_errors=True)
            self._git("worktree", "prune", cwd=mirror)
            if pushed:
                start = f"origin/{branch}"
            elif self._has_ref(mirror, f"refs/heads/{branch}"):
                start = branch  # made here and never pushed
            else:
                start = f"origin/{default}"
            self._git("worktree", "add", "--quiet", "-B", branch, str(path), start, cwd=mirror)
            return path

    def commit_and_push(self, repo: str, worktree: Path, branch: str, message: str) -> str:
        self._git("add", "--all", cwd=worktree)
        if self._git("status", "--porcelain", cwd=worktree).stdout.strip():
            self._git("commit", "--quiet", "--no-verify", "-m", message, cwd=worktree)
        # the push updates the mirror's remote-tracking ref, which a fetch in another thread
        # updates too: under the repository's lock, or git refuses one of them
        with self._locks[repo]:
            self._git("push", "--quiet", "origin", f"{branch}:refs/heads/{branch}", cwd=worktree)
        return self._git("rev-parse", "HEAD", cwd=worktree).stdout.strip()

    def branch_head(self, repo: str, branch: str) -> str | None:
        url, _ = self._remote(repo)
        out = self._git("ls-remote", url, f"refs/heads/{branch}").stdout.split()
        return out[0] if out else None

    def merge(self, repo: str, branch: str, expected_head: str, message: str) -> str:
        """Merge exactly `expected_head` into the default branch, once: a head that is already
        on the default branch returns the merge that brought it there."""
        _, default = self._remote(repo)
        with self._locks[repo]:
            for _ in range(3):
                mirror = self.mirror(repo)
                landed = self._landed(mirror, default, expected_head)
                if landed:
                    return landed
                head = self.branch_head(repo, branch)
                if head != expected_head:
                    raise HeadMoved(f"{branch} is at {head}, not the approved {expected_head}")
                base = self._git("rev-parse", f"origin/{default}", cwd=mirror).stdout.strip()
                tree = self._git(
                    "merge-tree", "--write-tree", base, expected_head, cwd=mirror, check=False
                )
                if tree.returncode != 0:
                    files = [ln for ln in tree.stdout.splitlines()[1:] if ln.strip()]
                    raise MergeConflict(f"{branch} conflicts with {default}: {' '.join(files[:5])}")
                commit = self._git(
                    "commit-tree",
                    tree.stdout.split()[0],
                    "-p",
                    base,
                    "-p",
                    expected_head,
                    "-m",
                    message,
                    cwd=mirror,
                ).stdout.strip()
                pushed = self._git(
                    "push",
                    "--quiet",
                    "origin",
                    f"{commit}:refs/heads/{default}",
                    cwd=mirror,
                    check=False,
                )
                if pushed.returncode == 0:
                    crashpoints.hit("forge.request.sent")  # merged on the remote, not yet told
                    self._git("fetch", "--quiet", "origin", cwd=mirror)
                    return commit
                # someone else moved the default branch meanwhile: look again on the new base
            raise ForgeError(f"{default} kept moving; the merge of {branch} was not pushed")

    def _landed(self, mirror: Path, default: str, head_sha: str) -> str | None:
        """The commit that brought `head_sha` onto the default branch, if it is there."""
        on_default = self._git(
            "merge-base", "--is-ancestor", head_sha, f"origin/{default}", cwd=mirror, check=False
        )
        if on_default.returncode != 0:
            return None
        out = self._git(
            "rev-list",
            "--merges",
            "--parents",
            "--ancestry-path",
            "--reverse",
            f"{head_sha}..origin/{default}",
            cwd=mirror,
        ).stdout
        for line in out.splitlines():
            commit, *parents = line.split()
            if head_sha in parents[1:]:
                return commit
        return head_sha  # fast-forwarded onto the default branch without a merge commit

    def find_merge(self, repo: str, head_sha: str) -> str | None:
        _, default = self._remote(repo)
        with self._locks[repo]:
            mirror = self.mirror(repo)
            return self._landed(mirror, default, head_sha)

    def read_default_file(self, repo: str, path: str) -> str | None:
        _, default = self._remote(repo)
        with self._locks[repo]:
            mirror = self.mirror(repo)
        shown = self._git("show", f"origin/{default}:{path}", cwd=mirror, check=False)
        return shown.stdout if shown.returncode == 0 else None

    def checkout(self, worktree: Path, sha: str) -> None:
        self._git("checkout", "--quiet", "--force", "--detach", sha, cwd=worktree)

    def remove_worktree(self, repo: str, branch: str) -> None:
        with self._locks[repo]:
            path = self.worktree_path(repo, branch)
            mirror = self._repo_dir(repo) / ".mirror.git"
            if path.exists():
                self._git("worktree", "remove", "--force", str(path), cwd=mirror, check=False)
            self._git("worktree", "prune", cwd=mirror, check=False)

    def delete_branch(self, repo: str, branch: str) -> None:
        """Delete a task branch, on the remote and in the mirror. Never the default branch."""
        url, default = self._remote(repo)
        if branch in (default, f"refs/heads/{default}") or not branch.startswith("orch/"):
            raise ForgeError(f"refusing to delete {branch}: orch deletes only its task branches")
        with self._locks[repo]:
            mirror = self.mirror(repo)
            if self._git("ls-remote", url, f"refs/heads/{branch}").stdout.strip():
                self._git(
                    "push", "--quiet", "origin", "--delete", f"refs/heads/{branch}", cwd=mirror
                )
            path = self.worktree_path(repo, branch)
            if path.exists():
                self._git("worktree", "remove", "--force", str(path), cwd=mirror, check=False)
            self._git("worktree", "prune", cwd=mirror, check=False)
            if self._has_ref(mirror, f"refs/heads/{branch}"):
                self._git("branch", "--quiet", "-D", branch, cwd=mirror)
