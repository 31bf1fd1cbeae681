"""Spare worktrees on real git: made ahead at the default branch's head, taken by a task's first
attempt without running git, replaced when the head moves, and never taken by a later attempt."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from orch.adapters.forges.local_git import SPARES, LocalGitForge
from orch.demo import sample

WAIT_S = 60.0


@pytest.fixture
def forge(tmp_path: Path) -> tuple[LocalGitForge, Path, Path]:
    work, remote = sample.create(tmp_path)
    return LocalGitForge(tmp_path / "ws", {"sample": (str(remote), "main")}), remote, work


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def spares(f: LocalGitForge) -> list[Path]:
    where = f.root / "sample" / SPARES
    return sorted(where.iterdir()) if where.is_dir() else []


def test_a_first_attempt_takes_a_spare_without_git_and_pushes_from_it(
    forge: tuple[LocalGitForge, Path, Path],
) -> None:
    f, remote, _ = forge
    assert f.prepare_spares("sample", 1) == 1
    [spare] = spares(f)
    away = remote.with_name("unreachable")
    remote.rename(away)  # any git against the remote fails from here
    try:
        wt = f.prepare_worktree("sample", "orch/A-1", fresh=True)
    finally:
        away.rename(remote)
    (wt / "NOTES.md").write_text("notes\n")
    head = f.commit_and_push("sample", wt, "orch/A-1", "notes")

    assert not spare.exists()
    assert spares(f) == []
    assert wt == f.worktree_path("sample", "orch/A-1")
    assert git(wt, "status", "--porcelain") == ""  # the agent's own git sees its worktree
    assert git(remote, "rev-parse", "orch/A-1") == head
    assert git(remote, "rev-parse", f"{head}^") == git(remote, "rev-parse", "main")


def test_a_later_attempt_or_a_task_whose_worktree_exists_takes_no_spare(
    forge: tuple[LocalGitForge, Path, Path],
) -> None:
    f, _, _ = forge
    f.prepare_spares("sample", 1)
    made = spares(f)
    wt = f.prepare_worktree("sample", "orch/A-1")
    (wt / "NOTES.md").write_text("one\n")
    pushed = f.commit_and_push("sample", wt, "orch/A-1", "one")

    again = f.prepare_worktree("sample", "orch/A-1", fresh=True)

    assert spares(f) == made
    assert git(again, "rev-parse", "HEAD") == pushed


def test_spares_of_an_older_head_are_replaced_when_the_default_branch_moves(
    forge: tuple[LocalGitForge, Path, Path],
) -> None:
    f, remote, work = forge
    f.prepare_spares("sample", 2)
    old = spares(f)
    (work / "MORE.md").write_text("more\n")
    git(work, "add", "MORE.md")
    git(work, "commit", "--quiet", "-m", "more")
    git(work, "push", "--quiet", "origin", "main")

    assert f.prepare_spares("sample", 2) == 2
    new = spares(f)

    assert not set(old) & set(new)
    assert all(not p.exists() for p in old)
    assert {git(p, "rev-parse", "HEAD") for p in new} == {git(remote, "rev-parse", "main")}
    assert "MORE.md" in git(f.prepare_worktree("sample", "orch/B-1", fresh=True), "ls-files")


def test_spares_an_earlier_process_left_are_dropped_and_made_again(
    forge: tuple[LocalGitForge, Path, Path], tmp_path: Path
) -> None:
    f, remote, _ = forge
    f.prepare_spares("sample", 1)
    left = spares(f)
    later = LocalGitForge(tmp_path / "ws", {"sample": (str(remote), "main")})

    assert later.prepare_spares("sample", 1) == 1

    assert all(not p.exists() for p in left)
    assert len(spares(later)) == 1
    worktrees = git(later.mirror_dir("sample"), "worktree", "list", "--porcelain")
    assert all(str(p) not in worktrees for p in left)


def test_a_taken_spare_is_made_again_by_the_keeper(
    forge: tuple[LocalGitForge, Path, Path],
) -> None:
    f, _, _ = forge
    f.prepare_spares("sample", 1)
    [first] = spares(f)
    stop = threading.Event()
    keeper = threading.Thread(target=f.keep_spares, args=(1, stop, 3600.0), daemon=True)
    keeper.start()
    try:
        f.prepare_worktree("sample", "orch/A-1", fresh=True)
        second = until_one(f, other_than=first)
    finally:
        stop.set()
        keeper.join(WAIT_S)

    assert not keeper.is_alive()
    assert not first.exists()
    assert second.exists()


def checked_out(path: Path) -> bool:
    # git must not find a repository above a spare it has not finished making
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(path.parent)}
    said = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, env=env, capture_output=True, check=False
    )
    return said.returncode == 0


def until_one(f: LocalGitForge, other_than: Path | None = None) -> Path:
    """A spare other than `other_than`, once git has made it."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.02)):
        found = [p for p in spares(f) if p != other_than and checked_out(p)]
        if found:
            return found[0]
        done.wait(0.02)
    pytest.fail("no spare was made")


def test_a_merge_orch_lands_has_the_keeper_replace_its_spares_at_once(
    forge: tuple[LocalGitForge, Path, Path],
) -> None:
    f, remote, _ = forge
    wt = f.prepare_worktree("sample", "orch/A-1")
    (wt / "NOTES.md").write_text("notes\n")
    head = f.commit_and_push("sample", wt, "orch/A-1", "notes")
    f.prepare_spares("sample", 1)
    [before] = spares(f)
    stop = threading.Event()
    keeper = threading.Thread(target=f.keep_spares, args=(1, stop, 3600.0), daemon=True)
    keeper.start()
    try:
        merged = f.land("sample", f.merge_candidate("sample", "orch/A-1", head, "merge A-1"))
        after = until_one(f, other_than=before)
    finally:
        stop.set()
        keeper.join(WAIT_S)

    assert git(after, "rev-parse", "HEAD") == merged == git(remote, "rev-parse", "main")
    assert not before.exists()
