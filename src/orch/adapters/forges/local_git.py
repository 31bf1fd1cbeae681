"""The local forge: a git remote (a bare repository, or any URL git can push to), worked through
a bare mirror and one worktree per task under the workspace root.

The merge is built with `git merge-tree --write-tree` and `git commit-tree` against the exact head
it was authorised for, tested by the engine, then pushed only if the default branch is still where
it was built (a lease on its old head): always a fast-forward. orch never rewrites or deletes a
default branch.

Nothing an agent can read names the remote: the mirror has no `origin`, and orch passes the URL
on its own command lines only. A worktree is the agent's ground, so orch never lets git discover
the repository from it (an agent may have replaced its `.git`): every command in a worktree names
the worktree's administrative directory in the mirror explicitly, and every git orch runs takes
its hooks from an empty directory and ignores `core.fsmonitor` and `core.sshCommand`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orch import crashpoints
from orch.domain.errors import (
    DefaultMoved,
    ForgeError,
    ForgeUnavailable,
    HeadMoved,
    MergeConflict,
    NotFound,
    OrchError,
    WorkspaceError,
)
from orch.domain.excludes import DEFAULT_EXCLUDES
from orch.ports import Candidate

log = logging.getLogger("orch.forge")

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
ROUND_COMMITS = 64  # how far back a round's first commit is looked for
_IDENTITY = {
    "GIT_AUTHOR_NAME": "orch",
    "GIT_AUTHOR_EMAIL": "orch@localhost",
    "GIT_COMMITTER_NAME": "orch",
    "GIT_COMMITTER_EMAIL": "orch@localhost",
}


# the longest any git orch runs may take: a remote that takes a connection and never answers
# would otherwise hold a worker, or the sweeper, for good
GIT_TIMEOUT_S = 600.0
# a transfer over HTTP slower than this many bytes a second for this long is given up
_STALLED = ("http.lowSpeedLimit=1000", "http.lowSpeedTime=60")
_SSH = "ssh -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"

# what git says when a remote over the network did not answer, or answered that it cannot now
# (curl's and git's words): the forge is unavailable, which is no task's failure
_UNREACHABLE = re.compile(
    r"Could not resolve host|Failed to connect|Connection refused|Connection timed out|"
    r"Operation timed out|Operation too slow|Connection reset|returned error: (5\d\d|429)|"
    r"RPC failed|"
    r"Empty reply from server|unexpected disconnect|early EOF|remote end hung up",
    re.IGNORECASE,
)


def git_failure(said: str, output: str = "") -> ForgeError:
    """The error of a git command that failed, as `said` sums it up; whether the remote was
    unreachable is read from all git wrote (`output`): its last line ("failed to push some
    refs") may not say, where a line before it ("RPC failed; HTTP 502") does."""
    unreachable = _UNREACHABLE.search(output) or _UNREACHABLE.search(said)
    return ForgeUnavailable(said) if unreachable else ForgeError(said)


def safe_name(name: str) -> str:
    cleaned = _SAFE.sub("-", name).strip(".-")
    if not cleaned:
        raise WorkspaceError(f"{name!r} leaves nothing usable as a directory name")
    return cleaned


def check_writable(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        # a probe of this process's own: serve and a worker starting together share the root
        probe = root / f".orch-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise WorkspaceError(
            f"workspace root {root} cannot be written: {exc.strerror or exc}"
        ) from exc
    return root.resolve()


@dataclass(frozen=True)
class _Spare:
    path: Path
    base: str  # the default branch's head it was checked out at


SPARES = ".spares"  # beside the worktrees: a task branch's worktree is never named so


class LocalGitForge:
    # a push git has begun lands within this, or never (a worker that died leaves its git
    # running)
    settle_after_s = 30.0

    def __init__(
        self,
        root: Path,
        remotes: Mapping[str, tuple[str, str]],
        excludes: Mapping[str, Sequence[str]] | None = None,
        *,
        git_env: Mapping[str, str] | None = None,
        git_timeout_s: float = GIT_TIMEOUT_S,
    ) -> None:
        """`remotes` maps a repository name to (remote URL or path, default branch);
        `excludes` a repository to the gitignore patterns its commits leave out after the
        built-in ones; `git_env` is more environment for every git orch runs (a forge's
        credentials there reach no URL and no config file); `git_timeout_s` is the longest one
        git command may take before it is ended and the forge counted unavailable."""
        self.root = check_writable(Path(root))
        self._git_timeout_s = git_timeout_s
        self.remotes = dict(remotes)
        extra = excludes or {}
        self.excludes = {name: (*DEFAULT_EXCLUDES, *extra.get(name, ())) for name in remotes}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in remotes}
        # spare worktrees, checked out ahead for new tasks: taken without git and without the
        # repository's lock, which a long fetch may hold
        self._spares: dict[str, list[_Spare]] = {name: [] for name in remotes}
        self._spares_lock = threading.Lock()
        self._spares_wanted = threading.Event()  # one was taken, or the default branch moved
        self._swept: set[str] = set()  # repositories whose spares of an earlier process are gone
        self.no_hooks = self.root / ".orch-no-hooks"
        self.no_hooks.mkdir(exist_ok=True)
        self._checked: set[str] = set()  # repositories whose mirror holds no remote URL
        self._env = {
            **os.environ,
            **_IDENTITY,
            "GIT_TERMINAL_PROMPT": "0",
            # wins over any core.sshCommand a repository's config may hold
            "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", _SSH),
            **(git_env or {}),
        }
        self._safe = (
            "-c",
            f"core.hooksPath={self.no_hooks}",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "protocol.ext.allow=never",
            *(arg for setting in _STALLED for arg in ("-c", setting)),
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _git(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        what = next((a for a in args if not a.startswith("-")), "")
        # its own session: on a timeout git ends with the helpers it started (git-remote-http)
        with subprocess.Popen(
            ["git", *self._safe, *args],
            cwd=cwd,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as child:
            try:
                out, err = child.communicate(timeout=self._git_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
                raise ForgeUnavailable(
                    f"git {what} did not finish within {self._git_timeout_s:g}s and was ended"
                ) from None
        proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            said = f"git {what} failed: {detail[-1] if detail else proc.returncode}"
            raise git_failure(said, f"{proc.stderr}\n{proc.stdout}")
        return proc

    def _in_worktree(
        self, repo: str, worktree: Path, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """git on a task's worktree, never through the `.git` the agent could have changed."""
        admin = self._admin_dir(repo, worktree)
        return self._git(
            f"--git-dir={admin}", f"--work-tree={worktree}", *args, cwd=worktree, check=check
        )

    def _admin_dir(self, repo: str, worktree: Path) -> Path:
        return self._repo_dir(repo) / ".mirror.git" / "worktrees" / worktree.name

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
        mirror = self._repo_dir(repo) / ".mirror.git"
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet", "--bare", str(mirror))
        elif (
            repo not in self._checked
            and self._git("config", "--get", "remote.origin.url", cwd=mirror, check=False).stdout
        ):
            # a mirror made by an earlier orch named its remote: that name goes
            self._git("config", "--remove-section", "remote.origin", cwd=mirror)
        self._checked.add(repo)
        self._fetch(repo, mirror)
        return mirror

    def _fetch(self, repo: str, mirror: Path) -> None:
        url, _ = self._remote(repo)
        self._git(
            "fetch", "--quiet", "--prune", url, "+refs/heads/*:refs/remotes/origin/*", cwd=mirror
        )

    def worktree_path(self, repo: str, branch: str) -> Path:
        return self._inside(self._repo_dir(repo) / safe_name(branch))

    def _has_ref(self, mirror: Path, ref: str) -> bool:
        return (
            self._git("rev-parse", "--verify", "--quiet", ref, cwd=mirror, check=False).returncode
            == 0
        )

    # -- the port ----------------------------------------------------------------------------

    def prepare_worktree(self, repo: str, branch: str, fresh: bool = False) -> Path:
        _, default = self._remote(repo)
        if fresh:
            # a task's first attempt: nothing of it was pushed, so a spare checked out at the
            # default branch is what git would make, made ahead
            path = self.worktree_path(repo, branch)
            if self._take_spare(repo, path):
                return path
        with self._locks[repo]:
            path = self.worktree_path(repo, branch)
            # every attempt starts from the branch as the remote has it: another orch process
            # may have pushed the stages since this one last worked on the task, and a crashed
            # agent's half-written files or an unpushed commit must not leak into the retry
            mirror = self.mirror(repo)
            pushed = self._has_ref(mirror, f"refs/remotes/origin/{branch}")
            admin = self._admin_dir(repo, path)
            if path.is_dir() and (admin / "HEAD").exists():
                start = f"origin/{branch}" if pushed else branch
                try:
                    self._in_worktree(
                        repo, path, "checkout", "--quiet", "--force", "-B", branch, start
                    )
                    self._in_worktree(repo, path, "clean", "-fdxq")
                    self._point_at(path, admin)
                    return path
                except ForgeError:
                    # a git killed mid-command (orch itself died) leaves a lock or half a
                    # checkout behind; a worktree is disposable: build it again from the remote
                    self._drop_worktree(mirror, path)
            elif path.exists():
                self._drop_worktree(mirror, path)  # files without git's record of them
            self._git("worktree", "prune", cwd=mirror)
            if pushed:
                start = f"origin/{branch}"
            elif self._has_ref(mirror, f"refs/heads/{branch}"):
                start = branch  # made here and never pushed
            else:
                start = f"origin/{default}"
            # locked: a prune (another task's) must not take its record away should the agent
            # delete the worktree's `.git`
            self._git(
                "worktree", "add", "--quiet", "--lock", "-B", branch, str(path), start, cwd=mirror
            )
            return path

    # -- spare worktrees --------------------------------------------------------------------

    def keep_spares(self, count: int, stop: threading.Event, interval_s: float) -> None:
        """Until `stop`, keep `count` spare worktrees per repository, checked out at its
        default branch's head and untouched: made again at once when one is taken, and replaced
        when the head moved (looked at every `interval_s`)."""
        while not stop.is_set():
            for repo in self.remotes:
                if stop.is_set():
                    return
                try:
                    self.prepare_spares(repo, count)
                except OrchError as exc:  # the remote's trouble: the next round tries again
                    log.warning("spare worktrees of %s not made: %s", repo, exc)
            deadline = time.monotonic() + interval_s
            while not stop.is_set() and time.monotonic() < deadline:
                if self._spares_wanted.wait(0.5):
                    self._spares_wanted.clear()
                    break

    def prepare_spares(self, repo: str, count: int) -> int:
        """Make `repo`'s spares up to `count`, at the default branch's head as the remote has
        it now, dropping those of an older head (and any an earlier process left). How many
        were made."""
        _, default = self._remote(repo)
        with self._locks[repo]:
            mirror = self.mirror(repo)
            base = self._git("rev-parse", f"origin/{default}", cwd=mirror).stdout.strip()
            where = self._repo_dir(repo) / SPARES
            with self._spares_lock:
                held = self._spares[repo]
                stale = [s.path for s in held if s.base != base]
                self._spares[repo] = held = [s for s in held if s.base == base]
                if repo not in self._swept and where.is_dir():
                    known = {s.path for s in held}
                    stale += [p for p in where.iterdir() if p not in known]
                self._swept.add(repo)
            for path in stale:
                self._drop_worktree(mirror, path)
            made = 0
            while len(self._spares_of(repo)) < count:
                path = where / f"spare-{uuid.uuid4().hex[:12]}"
                path.parent.mkdir(exist_ok=True)
                self._git(
                    "worktree", "add", "--quiet", "--lock", "--detach", str(path), base, cwd=mirror
                )
                with self._spares_lock:
                    self._spares[repo].append(_Spare(path, base))
                made += 1
            return made

    def _spares_of(self, repo: str) -> list[_Spare]:
        with self._spares_lock:
            return list(self._spares[repo])

    def _take_spare(self, repo: str, path: Path) -> bool:
        """Make a spare the worktree at `path`, by moving it and its record there as `git
        worktree move` would (both stay locked, so no prune takes them meanwhile)."""
        admin_root = self.mirror_dir(repo) / "worktrees"
        with self._spares_lock:
            held = self._spares.get(repo)
            admin = admin_root / path.name
            if not held or path.exists() or admin.exists():
                return False
            spare = held.pop()
            spare.path.rename(path)
            (admin_root / spare.path.name).rename(admin)
        (admin / "gitdir").write_text(f"{path / '.git'}\n")
        (path / ".git").write_text(f"gitdir: {admin}\n")
        self._spares_wanted.set()
        return True

    def _drop_worktree(self, mirror: Path, path: Path) -> None:
        self._git("worktree", "remove", "-f", "-f", str(path), cwd=mirror, check=False)
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(mirror / "worktrees" / path.name, ignore_errors=True)

    @staticmethod
    def _point_at(worktree: Path, admin: Path) -> None:
        """Put back the worktree's `.git` as git made it, for the agent's own git: a previous
        run may have replaced it. orch itself never reads it."""
        dot_git = worktree / ".git"
        if dot_git.is_dir() and not dot_git.is_symlink():
            shutil.rmtree(dot_git)
        else:
            dot_git.unlink(missing_ok=True)
        dot_git.write_text(f"gitdir: {admin}\n")

    def _exclude_file(self, repo: str) -> Path:
        """The repository's exclude patterns, as a file beside its worktrees (no agent writes
        there), for git's `core.excludesFile`."""
        path = self._repo_dir(repo) / ".orch-exclude"
        text = "".join(f"{p}\n" for p in self.excludes.get(repo, DEFAULT_EXCLUDES))
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path

    def commit_and_push(self, repo: str, worktree: Path, branch: str, message: str) -> str:
        url, default = self._remote(repo)
        if branch == default:
            raise ForgeError(f"orch never pushes to {default}, the default branch, itself")
        # the repository's .gitignore is honoured as git does; caches and dependency trees an
        # agent's tools left behind are not committed either
        excludes = self._exclude_file(repo)
        self._in_worktree(repo, worktree, "-c", f"core.excludesFile={excludes}", "add", "--all")
        staged = self._in_worktree(repo, worktree, "diff", "--cached", "--quiet", check=False)
        if staged.returncode not in (0, 1):
            raise ForgeError(f"git diff failed: {staged.stderr.strip()}")
        if staged.returncode == 1:
            self._in_worktree(repo, worktree, "commit", "--quiet", "--no-verify", "-m", message)
        head = self._in_worktree(repo, worktree, "rev-parse", "HEAD").stdout.strip()
        # the mirror's remote-tracking ref is updated with the push, and a fetch in another
        # thread updates it too: under the repository's lock, or git refuses one of them
        with self._locks[repo]:
            refspec = f"{head}:refs/heads/{branch}"
            pushed = self._in_worktree(repo, worktree, "push", "--quiet", url, refspec, check=False)
            theirs = self.branch_head(repo, branch) if pushed.returncode != 0 else head
            if theirs != head:
                # (at `head`: pushed, and only the answer was lost; git's own retry of it was
                # then refused as stale)
                if theirs is None or not _refused_as_behind(pushed.stderr):
                    said = pushed.stderr.strip().splitlines()
                    raise git_failure(
                        f"git push failed: {said[-1] if said else pushed.returncode}",
                        pushed.stderr,
                    )
                # the worktree started from the branch as the remote had it, so whatever came
                # after was pushed by a worker that lost this job (paused, then resumed before it
                # learnt so): the job's holder owns the task branch, and replaces exactly that
                lease = f"--force-with-lease=refs/heads/{branch}:{theirs}"
                self._in_worktree(repo, worktree, "push", "--quiet", lease, url, refspec)
            self._git(
                "update-ref", f"refs/remotes/origin/{branch}", head, cwd=self.mirror_dir(repo)
            )
        return head

    def mirror_dir(self, repo: str) -> Path:
        return self._repo_dir(repo) / ".mirror.git"

    def branch_head(self, repo: str, branch: str) -> str | None:
        url, _ = self._remote(repo)
        out = self._git("ls-remote", url, f"refs/heads/{branch}").stdout.split()
        return out[0] if out else None

    def merge_candidate(
        self, repo: str, branch: str, expected_head: str, message: str
    ) -> Candidate:
        """The merge of exactly `expected_head` onto the default branch as the remote has it
        now, built with `merge-tree` and `commit-tree` in the mirror and not pushed."""
        _, default = self._remote(repo)
        with self._locks[repo]:
            mirror = self.mirror(repo)
            landed = self._landed(mirror, default, expected_head)
            if landed:
                return Candidate(landed, landed, expected_head, landed=True)
            head = self.branch_head(repo, branch)
            if head != expected_head:
                raise HeadMoved(f"{branch} is at {head}, not the approved {expected_head}")
            base = self._git("rev-parse", f"origin/{default}", cwd=mirror).stdout.strip()
            tree = self._git(
                "merge-tree",
                "--write-tree",
                "--name-only",
                base,
                expected_head,
                cwd=mirror,
                check=False,
            )
            if tree.returncode not in (0, 1):
                raise ForgeError(f"git merge-tree failed: {tree.stderr.strip()}")
            # on a conflict, the tree git wrote holds the conflicted files with their markers
            files = tuple(ln for ln in tree.stdout.split("\n\n")[0].splitlines()[1:] if ln)
            if files:
                message += "\n\nConflicts:\n" + "".join(f"\t{f}\n" for f in files)
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
            return Candidate(commit, base, expected_head, conflicts=files)

    def land(self, repo: str, candidate: Candidate) -> str:
        """Push the candidate with the default branch's expected old head as the lease: the
        push happens only if the remote's default branch is still the candidate's base, which
        makes it a fast-forward (the base is the candidate's first parent), never a rewrite."""
        url, default = self._remote(repo)
        if candidate.landed:
            return candidate.sha
        if candidate.conflicts:
            raise MergeConflict(f"{candidate.sha[:12]} holds conflicts; it never lands")
        with self._locks[repo]:
            mirror = self.mirror_dir(repo)
            pushed = self._git(
                "push",
                "--quiet",
                f"--force-with-lease=refs/heads/{default}:{candidate.base}",
                url,
                f"{candidate.sha}:refs/heads/{default}",
                cwd=mirror,
                check=False,
            )
            if pushed.returncode == 0:
                crashpoints.hit("forge.request.sent")  # merged on the remote, not yet told
                self._fetch(repo, mirror)
                self._spares_wanted.set()  # at the head before this merge: made again
                return candidate.sha
            self._fetch(repo, mirror)
            now = self._git("rev-parse", f"origin/{default}", cwd=mirror).stdout.strip()
            if now != candidate.base:
                raise DefaultMoved(f"{default} moved from {candidate.base[:12]} to {now[:12]}")
            detail = (pushed.stderr or pushed.stdout).strip().splitlines()
            raise git_failure(
                f"git push failed: {detail[-1] if detail else pushed.returncode}",
                f"{pushed.stderr}\n{pushed.stdout}",
            )

    def adopt(self, repo: str, branch: str, candidate: Candidate) -> None:
        url, _ = self._remote(repo)
        with self._locks[repo]:
            mirror = self.mirror_dir(repo)
            self._git(
                "push",
                "--quiet",
                f"--force-with-lease=refs/heads/{branch}:{candidate.head}",
                url,
                f"{candidate.sha}:refs/heads/{branch}",
                cwd=mirror,
            )
            self._git("update-ref", f"refs/remotes/origin/{branch}", candidate.sha, cwd=mirror)

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

    def read_file(self, repo: str, sha: str, path: str) -> str | None:
        """A file as commit `sha` holds it; None if it has no such file."""
        shown = self._git("show", f"{sha}:{path}", cwd=self.mirror_dir(repo), check=False)
        return shown.stdout if shown.returncode == 0 else None

    def diff(self, repo: str, head: str) -> str:
        _, default = self._remote(repo)
        # no external diff or textconv driver runs: a repository's attributes choose those
        return self._git(
            "diff",
            "-U0",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            f"origin/{default}...{head}",
            cwd=self.mirror_dir(repo),
        ).stdout

    def is_ancestor(self, repo: str, ancestor: str, descendant: str) -> bool:
        found = self._git(
            "merge-base",
            "--is-ancestor",
            ancestor,
            descendant,
            cwd=self.mirror_dir(repo),
            check=False,
        )
        if found.returncode not in (0, 1):
            raise ForgeError(f"git merge-base failed: {found.stderr.strip()}")
        return found.returncode == 0

    def round_base(self, repo: str, head: str, marker: str) -> str:
        """The commit a round started from: walking back from `head` along first parents, the
        first whose message does not end with `marker` (orch's own commits of the round do)."""
        # a round holds a commit per attempt that got that far: a few, never a long history
        out = self._git(
            "log",
            "-n",
            str(ROUND_COMMITS),
            "--first-parent",
            "--format=%H%x00%B%x1e",
            head,
            cwd=self.mirror_dir(repo),
        ).stdout
        for record in out.split("\x1e"):
            sha, _, body = record.strip("\n").partition("\x00")
            if sha and _last_line(body) != marker:
                return sha
        return head

    def checkout(self, repo: str, worktree: Path, sha: str) -> None:
        """Make the worktree exactly `sha`'s tree: what a test or an agent left there, ignored
        files included, must not reach what runs next (a deploy above all)."""
        self._in_worktree(repo, worktree, "checkout", "--quiet", "--force", "--detach", sha)
        self._in_worktree(repo, worktree, "clean", "-ffdxq")
        self._point_at(worktree, self._admin_dir(repo, worktree))

    def remove_worktree(self, repo: str, branch: str) -> None:
        with self._locks[repo]:
            path = self.worktree_path(repo, branch)
            mirror = self.mirror_dir(repo)
            if path.exists():
                self._drop_worktree(mirror, path)
            self._git("worktree", "prune", cwd=mirror, check=False)

    def delete_branch(self, repo: str, branch: str) -> None:
        """Delete a task branch, on the remote and in the mirror. Never the default branch."""
        url, default = self._remote(repo)
        if branch in (default, f"refs/heads/{default}") or not branch.startswith("orch/"):
            raise ForgeError(f"refusing to delete {branch}: orch deletes only its task branches")
        with self._locks[repo]:
            mirror = self.mirror(repo)
            if self._git("ls-remote", url, f"refs/heads/{branch}").stdout.strip():
                self._git("push", "--quiet", url, "--delete", f"refs/heads/{branch}", cwd=mirror)
            path = self.worktree_path(repo, branch)
            if path.exists():
                self._drop_worktree(mirror, path)
            self._git("worktree", "prune", cwd=mirror, check=False)
            # the remote-tracking ref goes too, or a new task on the branch would start from it
            self._git("update-ref", "-d", f"refs/remotes/origin/{branch}", cwd=mirror, check=False)
            if self._has_ref(mirror, f"refs/heads/{branch}"):
                self._git("branch", "--quiet", "-D", branch, cwd=mirror)


def _last_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _refused_as_behind(stderr: str) -> bool:
    """Whether git refused a push because the remote branch has commits the pushed one lacks."""
    return any(s in stderr for s in ("non-fast-forward", "fetch first", "[rejected]"))
