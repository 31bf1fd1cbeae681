"""The local forge on real git: worktrees, pushes and the one merge per head."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from orch.adapters.forges.local_git import LocalGitForge, check_writable, git_failure, safe_name
from orch.config import load_settings
from orch.demo import sample
from orch.domain.errors import (
    ConfigError,
    DefaultMoved,
    ForgeError,
    ForgeUnavailable,
    HeadMoved,
    MergeConflict,
    WorkspaceError,
)
from orch.domain.integrity import DEFAULT_PROTECTED, findings, parse_diff


def rev(remote: Path, ref: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(remote), "rev-parse", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def forge(tmp_path: Path) -> tuple[LocalGitForge, Path]:
    _, remote = sample.create(tmp_path)
    return LocalGitForge(tmp_path / "ws", {"sample": (str(remote), "main")}), remote


def change(forge: LocalGitForge, branch: str, rel: str, text: str) -> str:
    wt = forge.prepare_worktree("sample", branch)
    (wt / rel).write_text(text)
    return forge.commit_and_push("sample", wt, branch, f"change {rel}")


def merge(f: LocalGitForge, branch: str, head: str, message: str) -> str:
    return f.land("sample", f.merge_candidate("sample", branch, head, message))


def test_a_head_is_merged_once_however_often_the_merge_is_asked_for(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, remote = forge
    old_main = rev(remote, "main")
    head = change(f, "orch/A-1", "NOTES.md", "notes\n")
    first = merge(f, "orch/A-1", head, "merge A-1")
    again = merge(f, "orch/A-1", head, "merge A-1 again")
    assert first == again == rev(remote, "main")
    assert rev(remote, f"{first}^1") == old_main
    assert rev(remote, f"{first}^2") == head
    assert f.find_merge("sample", head) == first


def test_an_unmerged_head_is_not_found_on_the_default_branch(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, _ = forge
    head = change(f, "orch/A-1", "NOTES.md", "notes\n")
    assert f.find_merge("sample", head) is None


def test_a_merge_of_a_head_that_moved_is_refused(forge: tuple[LocalGitForge, Path]) -> None:
    f, remote = forge
    approved = change(f, "orch/A-1", "NOTES.md", "one\n")
    change(f, "orch/A-1", "NOTES.md", "two\n")
    before = rev(remote, "main")
    with pytest.raises(HeadMoved):
        merge(f, "orch/A-1", approved, "merge what was approved")
    assert rev(remote, "main") == before


def test_conflicting_branches_merge_the_first_and_refuse_the_second(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, remote = forge
    a = change(f, "orch/A-1", "README.md", "from A\n")
    b = change(f, "orch/B-1", "README.md", "from B\n")
    merged = merge(f, "orch/A-1", a, "merge A")
    candidate = f.merge_candidate("sample", "orch/B-1", b, "merge B")
    assert candidate.conflicts == ("README.md",)
    # the conflicted merge holds both sides, marked, and never lands
    marked = f.read_file("sample", candidate.sha, "README.md") or ""
    assert "<<<<<<<" in marked and "from A" in marked and "from B" in marked
    with pytest.raises(MergeConflict):
        f.land("sample", candidate)
    assert rev(remote, "main") == merged
    # adopted by the task branch, it leaves a merge the developer resolves and lands cleanly
    f.adopt("sample", "orch/B-1", candidate)
    wt = f.prepare_worktree("sample", "orch/B-1")
    assert "<<<<<<<" in (wt / "README.md").read_text()
    (wt / "README.md").write_text("from A and B\n")
    resolved = f.commit_and_push("sample", wt, "orch/B-1", "resolve")
    again = f.merge_candidate("sample", "orch/B-1", resolved, "merge B")
    assert again.conflicts == ()
    f.land("sample", again)
    assert f.read_file("sample", again.sha, "README.md") == "from A and B\n"


def test_a_candidate_lands_only_on_the_head_it_was_built_on(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, remote = forge
    before = rev(remote, "main")
    a = change(f, "orch/A-1", "a.txt", "A\n")
    candidate = f.merge_candidate("sample", "orch/A-1", a, "merge A")
    # built, not pushed: the remote has not moved, and the tree holds both sides
    assert rev(remote, "main") == before
    assert (candidate.base, candidate.head, candidate.landed) == (before, a, False)
    assert f.read_file("sample", candidate.sha, "a.txt") == "A\n"
    # someone else lands first: the candidate is refused, nothing is overwritten
    b = change(f, "orch/B-1", "b.txt", "B\n")
    other = merge(f, "orch/B-1", b, "merge B")
    with pytest.raises(DefaultMoved):
        f.land("sample", candidate)
    assert rev(remote, "main") == other
    # built again on the new head, it lands as exactly that commit, a fast-forward
    again = f.merge_candidate("sample", "orch/A-1", a, "merge A")
    assert again.base == other
    assert f.land("sample", again) == again.sha == rev(remote, "main")
    assert rev(remote, f"{again.sha}^1") == other
    landed = f.merge_candidate("sample", "orch/A-1", a, "merge A")
    assert (landed.sha, landed.landed) == (again.sha, True)


def test_a_retried_worktree_starts_from_the_last_commit(forge: tuple[LocalGitForge, Path]) -> None:
    f, _ = forge
    change(f, "orch/A-1", "NOTES.md", "kept\n")
    wt = f.prepare_worktree("sample", "orch/A-1")
    (wt / "NOTES.md").write_text("half-written by a crashed agent\n")
    (wt / "stray.txt").write_text("junk\n")
    again = f.prepare_worktree("sample", "orch/A-1")
    assert again == wt
    assert (wt / "NOTES.md").read_text() == "kept\n"
    assert not (wt / "stray.txt").exists()


def test_processes_starting_together_each_find_a_shared_root_writable(tmp_path: Path) -> None:
    # serve and a worker started at once check the same logs and workspace roots
    root = tmp_path / "logs"
    failures: list[BaseException] = []

    def start() -> None:
        for _ in range(300):
            try:
                check_writable(root)
            except Exception as exc:  # what went wrong is the finding
                failures.append(exc)
                return

    starting = [threading.Thread(target=start) for _ in range(8)]
    for t in starting:
        t.start()
    for t in starting:
        t.join()

    assert failures == []
    assert list(root.iterdir()) == [], "every probe was taken away"


def test_worktree_names_are_reduced_and_kept_inside_the_root(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, _ = forge
    path = f.worktree_path("sample", "orch/../../etc/passwd")
    assert path.is_relative_to(f.root)
    assert safe_name("orch/KEY 1:x") == "orch-KEY-1-x"
    with pytest.raises(WorkspaceError):
        safe_name("../..")


def test_a_worktree_a_killed_git_left_locked_is_rebuilt_from_the_remote_branch(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, remote = forge
    head = change(f, "orch/APP-1", "NOTES.md", "first\n")
    wt = f.worktree_path("sample", "orch/APP-1")
    lock = subprocess.run(
        ["git", "rev-parse", "--git-path", "index.lock"],
        cwd=wt,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (wt / lock).write_text("")  # what a git killed mid-checkout leaves behind
    (wt / "half-written.txt").write_text("from the attempt that died\n")

    again = f.prepare_worktree("sample", "orch/APP-1")
    assert again == wt
    assert (wt / "NOTES.md").read_text() == "first\n"
    assert not (wt / "half-written.txt").exists()
    assert f.commit_and_push("sample", wt, "orch/APP-1", "nothing new") == head
    assert rev(remote, "refs/heads/orch/APP-1") == head


def test_a_rounds_base_is_found_behind_every_commit_of_that_round(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, _ = forge
    marker = "Orch-Round: A-1#1 v7"
    before = change(f, "orch/A-1", "review.md", "Verdict: request-changes\n")
    wt = f.prepare_worktree("sample", "orch/A-1")
    (wt / "review.md").write_text("Verdict: approve\n")
    first = f.commit_and_push("sample", wt, "orch/A-1", f"review\n\n{marker}")
    # a second attempt of the same round (its first died after the commit) adds another
    (wt / "notes.md").write_text("more\n")
    second = f.commit_and_push("sample", wt, "orch/A-1", f"review again\n\n{marker}")
    assert f.round_base("sample", second, marker) == before
    assert f.round_base("sample", first, marker) == before
    assert f.round_base("sample", before, marker) == before
    # another round's marker: none of these commits is that round's
    assert f.round_base("sample", second, "Orch-Round: A-1#1 v8") == second
    assert f.read_file("sample", before, "review.md") == "Verdict: request-changes\n"
    assert f.read_file("sample", second, "review.md") == "Verdict: approve\n"
    assert f.read_file("sample", before, "no-such-file") is None


def test_commits_leave_out_caches_and_what_the_repository_ignores(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    f = LocalGitForge(
        tmp_path / "ws",
        {"sample": (str(remote), "main")},
        {"sample": ["secrets.txt", "!node_modules/"]},
    )
    wt = f.prepare_worktree("sample", "orch/A-1")
    files = {
        "keep.py": "x = 1\n",
        "pkg/__pycache__/keep.cpython-311.pyc": "bytecode",
        "stray.pyc": "bytecode",
        ".venv/bin/python": "#!",
        ".pytest_cache/v/cache/lastfailed": "{}",
        "secrets.txt": "token\n",
        "node_modules/left/index.js": "module.exports = 1\n",
        ".gitignore": "out/\n",
        "out/report.txt": "generated\n",
    }
    for rel, text in files.items():
        (wt / rel).parent.mkdir(parents=True, exist_ok=True)
        (wt / rel).write_text(text)
    head = f.commit_and_push("sample", wt, "orch/A-1", "work")
    committed = subprocess.run(
        ["git", "--git-dir", str(remote), "ls-tree", "-r", "--name-only", head],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    new = set(committed) & set(files)
    assert new == {"keep.py", ".gitignore", "node_modules/left/index.js"}


def test_a_worktree_holding_only_excluded_files_commits_nothing(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, remote = forge
    wt = f.prepare_worktree("sample", "orch/A-1")
    start = f.commit_and_push("sample", wt, "orch/A-1", "nothing yet")
    (wt / "__pycache__").mkdir()
    (wt / "__pycache__" / "x.pyc").write_text("bytecode")
    assert f.commit_and_push("sample", wt, "orch/A-1", "only a cache") == start
    assert rev(remote, "orch/A-1") == start


@pytest.mark.parametrize("pattern", ["", "  ", "a\nb"])
def test_an_exclude_setting_is_one_gitignore_pattern_per_entry(pattern: str) -> None:
    repo = {"name": "sample", "remote": "/nowhere", "exclude": ["ok/", pattern]}
    with pytest.raises(ConfigError) as info:
        load_settings(repos=[repo])
    assert str(info.value).startswith("invalid setting repos.0.exclude: Value error")


def test_the_diff_of_a_head_is_read_from_where_it_left_the_default_branch(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, _ = forge
    wt = f.prepare_worktree("sample", "orch/A-1")
    test = wt / "tests" / "test_text.py"
    lines = test.read_text().splitlines(keepends=True)
    test.write_text(
        "".join("        self.skipTest('later')\n" if "assertEqual" in ln else ln for ln in lines)
    )
    (wt / ".orch").mkdir()
    (wt / ".orch" / "pipeline.yaml").write_text("stages: []\n")
    head = f.commit_and_push("sample", wt, "orch/A-1", "weaken")
    # the default branch moving on does not show up in the task's change
    change(f, "orch/B-1", "README.md", "other\n")
    merge(f, "orch/B-1", f.branch_head("sample", "orch/B-1") or "", "merge B")
    found = findings(parse_diff(f.diff("sample", head)), DEFAULT_PROTECTED)
    assert found == [
        "touches protected path .orch/pipeline.yaml",
        "removes 1 assertion(s) in tests/test_text.py",
        "adds 1 skip marker(s) in tests/test_text.py",
    ]


def test_a_checkout_leaves_exactly_the_commits_tree(forge: tuple[LocalGitForge, Path]) -> None:
    f, _ = forge
    head = change(f, "orch/A-1", "NOTES.md", "notes\n")
    wt = f.prepare_worktree("sample", "orch/A-1")
    # what a test run leaves behind: an ignored cache, an untracked file, a nested repository
    (wt / "sample" / "__pycache__").mkdir(exist_ok=True)
    (wt / "sample" / "__pycache__" / "text.cpython-311.pyc").write_bytes(b"planted")
    (wt / ".env").write_text("DEPLOY_HOOK=evil\n")
    subprocess.run(["git", "init", "-q", str(wt / "vendored")], check=True)
    f.checkout("sample", wt, head)
    assert not (wt / "sample" / "__pycache__").exists()
    assert not (wt / ".env").exists() and not (wt / "vendored").exists()
    assert (wt / "NOTES.md").read_text() == "notes\n"
    assert (wt / ".git").read_text().startswith("gitdir: ")


def test_a_push_a_stale_worker_made_after_the_attempt_began_is_replaced_by_the_holders(
    forge: tuple[LocalGitForge, Path], tmp_path: Path
) -> None:
    f, remote = forge
    first = change(f, "orch/A-1", "NOTES.md", "the analysis\n")
    mine = f.prepare_worktree("sample", "orch/A-1")  # the job's holder starts its attempt
    # a worker that lost the job, paused until now, pushes what it had made
    stale = LocalGitForge(tmp_path / "stale-ws", {"sample": (str(remote), "main")})
    gone = change(stale, "orch/A-1", "NOTES.md", "an attempt nobody holds\n")
    assert rev(remote, "orch/A-1") == gone
    (mine / "NOTES.md").write_text("the holder's work\n")
    head = f.commit_and_push("sample", mine, "orch/A-1", "the holder's attempt")
    assert rev(remote, "orch/A-1") == head
    assert rev(remote, f"{head}^") == first  # built on the branch as the attempt found it


def test_the_forge_never_pushes_a_commit_to_the_default_branch(
    forge: tuple[LocalGitForge, Path],
) -> None:
    f, remote = forge
    before = rev(remote, "main")
    wt = f.prepare_worktree("sample", "orch/A-1")
    (wt / "NOTES.md").write_text("notes\n")
    with pytest.raises(ForgeError, match="never pushes to main"):
        f.commit_and_push("sample", wt, "main", "straight onto main")
    assert rev(remote, "main") == before


def test_a_remote_that_never_answers_ends_git_and_counts_as_the_forge_unavailable(
    tmp_path: Path,
) -> None:
    # a server that takes every connection and says nothing, as a hung forge does
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def take() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/team/app.git"
    try:
        forge = LocalGitForge(tmp_path / "ws", {"app": (url, "main")}, git_timeout_s=1.0)
        with pytest.raises(ForgeUnavailable, match="did not finish within 1s"):
            forge.branch_head("app", "main")
        assert held, "git never reached the remote"
        left = [p for p in Path("/proc").glob("[0-9]*") if url in _cmdline(p)]
        assert left == []
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize(
    ("output", "unavailable"),
    [
        (
            "error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502\n"
            "send-pack: unexpected disconnect while reading sideband packet\n"
            "error: failed to push some refs to 'https://forge/team/app.git'",
            True,
        ),
        (
            "error: RPC failed; curl 52 Empty reply from server\n"
            "error: failed to push some refs to 'https://forge/team/app.git'",
            True,
        ),
        (
            " ! [rejected]        orch/T-1 -> orch/T-1 (non-fast-forward)\n"
            "error: failed to push some refs to 'https://forge/team/app.git'",
            False,
        ),
        (
            "remote: error: GH006: Protected branch update failed for refs/heads/main.\n"
            "error: failed to push some refs to 'https://forge/team/app.git'",
            False,
        ),
    ],
)
def test_a_failed_push_is_the_forge_unavailable_when_any_line_git_wrote_says_so(
    output: str, unavailable: bool
) -> None:
    error = git_failure(f"git push failed: {output.splitlines()[-1]}", output)
    assert isinstance(error, ForgeUnavailable) is unavailable
    assert str(error).endswith("failed to push some refs to 'https://forge/team/app.git'")
