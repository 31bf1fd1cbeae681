"""The Forge port's behaviour, the same on every adapter: memory, local git (a bare repository)
and Gitea (the Gitea forge against the fake Gitea); and the PullRequests port's, on memory and
Gitea. A Gitea case fails on any request or answer the Gitea document does not allow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orch.adapters.forges.gitea import GiteaForge
from orch.adapters.forges.local_git import LocalGitForge
from orch.adapters.forges.memory import MemoryForge
from orch.domain.errors import DefaultMoved, ForgeError, HeadMoved, MergeConflict
from orch.fakes.faults import Fault
from orch.fakes.gitea import GiteaFake, commit_files, init_bare
from orch.ports import PullState, StatusState

REPO = "sample"
TOKEN = "gitea-token-0123456789abcdef"
FILES = {"README.md": "hello\n", "src/app.py": "print('hi')\n"}


@dataclass
class Case:
    forge: Any  # a Forge, and on memory and Gitea PullRequests too
    move_default: Callable[[dict[str, str]], str]  # someone else's commit on the default branch
    statuses: Callable[[str], dict[str, str]]  # what the forge shows of a commit: context -> state
    title_of: Callable[[int], str]  # a pull request's title
    fake: GiteaFake | None = None


def _memory(tmp_path: Path) -> Iterator[Case]:
    forge = MemoryForge({REPO: {k: v.encode() for k, v in FILES.items()}})

    def statuses(sha: str) -> dict[str, str]:
        return {c: str(s[0]) for c, s in forge.statuses.get((REPO, sha), {}).items()}

    def title_of(number: int) -> str:
        return next(p.title for p in forge.pulls[REPO] if p.number == number)

    def move(files: dict[str, str]) -> str:
        return forge.move_default(REPO, {k: v.encode() for k, v in files.items()})

    yield Case(forge, move, statuses, title_of)
    forge.close()


def _local(tmp_path: Path) -> Iterator[Case]:
    bare = tmp_path / "remote" / f"{REPO}.git"
    init_bare(bare, FILES)
    forge = LocalGitForge(tmp_path / "ws", {REPO: (str(bare), "main")})

    def unsupported(_: Any) -> Any:
        raise NotImplementedError("the local forge has no pull requests")

    yield Case(forge, lambda files: commit_files(bare, "main", files), unsupported, unsupported)


def _gitea(tmp_path: Path) -> Iterator[Case]:
    with GiteaFake(tmp_path / "gitea", TOKEN) as fake:
        url = fake.create_repo(REPO, FILES)
        forge = GiteaForge(tmp_path / "ws", fake.url, TOKEN, {REPO: (url, "main")}, sleep=_no_wait)

        def title_of(number: int) -> str:
            return str(next(p["title"] for p in fake.pulls(REPO) if p["number"] == number))

        yield Case(
            forge,
            lambda files: fake.push_to_default(REPO, files),
            lambda sha: fake.statuses(REPO, sha),
            title_of,
            fake,
        )
        forge.close()
        assert fake.violations == []


def _no_wait(_: float) -> None:
    pass


BUILDERS = {"memory": _memory, "local": _local, "gitea": _gitea}


@pytest.fixture(params=sorted(BUILDERS))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    yield from BUILDERS[request.param](tmp_path)


@pytest.fixture(params=["gitea", "memory"])
def pulls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    yield from BUILDERS[request.param](tmp_path)


def change(case: Case, branch: str, files: dict[str, str]) -> str:
    worktree = case.forge.prepare_worktree(REPO, branch)
    for rel, text in files.items():
        (worktree / rel).parent.mkdir(parents=True, exist_ok=True)
        (worktree / rel).write_text(text)
    return str(case.forge.commit_and_push(REPO, worktree, branch, f"change {', '.join(files)}"))


def land(case: Case, branch: str, head: str) -> str:
    candidate = case.forge.merge_candidate(REPO, branch, head, f"Merge {branch}")
    return str(case.forge.land(REPO, candidate))


# -- the Forge port ---------------------------------------------------------------------------


def test_a_worktree_starts_from_the_default_branch(case: Case) -> None:
    worktree = case.forge.prepare_worktree(REPO, "orch/T-1")
    assert (worktree / "README.md").read_text() == "hello\n"
    assert (worktree / "src" / "app.py").read_text() == "print('hi')\n"


def test_a_pushed_commit_is_the_branch_head(case: Case) -> None:
    head = change(case, "orch/T-1", {"NOTES.md": "notes\n"})
    assert case.forge.branch_head(REPO, "orch/T-1") == head
    assert case.forge.read_file(REPO, head, "NOTES.md") == "notes\n"
    assert "NOTES.md" in case.forge.diff(REPO, head)
    assert case.forge.branch_head(REPO, "orch/none") is None


def test_a_commit_with_nothing_changed_keeps_the_head(case: Case) -> None:
    head = change(case, "orch/T-1", {"NOTES.md": "notes\n"})
    worktree = case.forge.prepare_worktree(REPO, "orch/T-1")
    assert case.forge.commit_and_push(REPO, worktree, "orch/T-1", "nothing") == head


def test_a_landed_candidate_is_the_default_branch_and_is_found_again(case: Case) -> None:
    head = change(case, "orch/T-1", {"NOTES.md": "notes\n"})
    assert case.forge.find_merge(REPO, head) is None
    candidate = case.forge.merge_candidate(REPO, "orch/T-1", head, "Merge orch/T-1")
    assert (candidate.head, candidate.landed, candidate.conflicts) == (head, False, ())
    assert case.forge.read_default_file(REPO, "NOTES.md") is None  # built, not landed
    landed = case.forge.land(REPO, candidate)
    assert case.forge.read_default_file(REPO, "NOTES.md") == "notes\n"
    assert case.forge.is_ancestor(REPO, head, landed)
    assert case.forge.find_merge(REPO, head) == landed
    again = case.forge.merge_candidate(REPO, "orch/T-1", head, "Merge orch/T-1")
    assert (again.landed, again.sha) == (True, landed)
    assert case.forge.land(REPO, again) == landed


def test_a_candidate_does_not_land_once_the_default_branch_moved(case: Case) -> None:
    head = change(case, "orch/T-1", {"NOTES.md": "notes\n"})
    candidate = case.forge.merge_candidate(REPO, "orch/T-1", head, "Merge orch/T-1")
    theirs = case.move_default({"OTHER.md": "theirs\n"})
    with pytest.raises(DefaultMoved):
        case.forge.land(REPO, candidate)
    assert case.forge.read_default_file(REPO, "NOTES.md") is None
    # built again on the new head, it lands, keeping both changes
    rebuilt = case.forge.merge_candidate(REPO, "orch/T-1", head, "Merge orch/T-1")
    assert rebuilt.base == theirs
    case.forge.land(REPO, rebuilt)
    assert case.forge.read_default_file(REPO, "NOTES.md") == "notes\n"
    assert case.forge.read_default_file(REPO, "OTHER.md") == "theirs\n"


def test_a_branch_that_moved_past_the_approved_head_is_not_merged(case: Case) -> None:
    approved = change(case, "orch/T-1", {"NOTES.md": "one\n"})
    change(case, "orch/T-1", {"NOTES.md": "two\n"})
    with pytest.raises(HeadMoved):
        case.forge.merge_candidate(REPO, "orch/T-1", approved, "Merge orch/T-1")
    assert case.forge.read_default_file(REPO, "NOTES.md") is None


def test_a_conflicting_change_is_named_and_never_lands(case: Case) -> None:
    head = change(case, "orch/T-1", {"README.md": "ours\n"})
    case.move_default({"README.md": "theirs\n"})
    candidate = case.forge.merge_candidate(REPO, "orch/T-1", head, "Merge orch/T-1")
    assert candidate.conflicts == ("README.md",)
    marked = case.forge.read_file(REPO, candidate.sha, "README.md") or ""
    assert "<<<<<<<" in marked and "ours" in marked and "theirs" in marked
    with pytest.raises(MergeConflict):
        case.forge.land(REPO, candidate)
    assert case.forge.read_default_file(REPO, "README.md") == "theirs\n"
    # adopted, the conflict is the branch's to resolve
    case.forge.adopt(REPO, "orch/T-1", candidate)
    assert case.forge.branch_head(REPO, "orch/T-1") == candidate.sha


def test_the_default_branch_is_never_deleted(case: Case) -> None:
    before = case.forge.branch_head(REPO, "main")
    with pytest.raises(ForgeError):
        case.forge.delete_branch(REPO, "main")
    assert case.forge.branch_head(REPO, "main") == before


def test_a_deleted_task_branch_is_gone(case: Case) -> None:
    change(case, "orch/T-1", {"NOTES.md": "notes\n"})
    case.forge.delete_branch(REPO, "orch/T-1")
    assert case.forge.branch_head(REPO, "orch/T-1") is None
    # a new task on the same branch starts from the default branch again
    worktree = case.forge.prepare_worktree(REPO, "orch/T-1")
    assert not (worktree / "NOTES.md").exists()


def test_a_missing_default_file_reads_as_none(case: Case) -> None:
    assert case.forge.read_default_file(REPO, "nope.txt") is None
    assert case.forge.read_default_file(REPO, "README.md") == "hello\n"


# -- the PullRequests port --------------------------------------------------------------------


def test_opening_a_pull_request_again_finds_the_open_one(pulls: Case) -> None:
    head = change(pulls, "orch/T-1", {"NOTES.md": "notes\n"})
    first = pulls.forge.open_pull(REPO, "orch/T-1", "T-1: notes", "body")
    again = pulls.forge.open_pull(REPO, "orch/T-1", "T-1: notes", "body")
    assert again.number == first.number
    assert (first.state, first.head) == (PullState.OPEN, head)
    assert pulls.forge.find_pull(REPO, "orch/T-1") == again


def test_a_branch_without_a_pull_request_has_none(pulls: Case) -> None:
    change(pulls, "orch/T-1", {"NOTES.md": "notes\n"})
    assert pulls.forge.find_pull(REPO, "orch/T-1") is None


def test_statuses_show_the_newest_state_of_each_context(pulls: Case) -> None:
    head = change(pulls, "orch/T-1", {"NOTES.md": "notes\n"})
    pulls.forge.set_status(REPO, head, "orch/tests", StatusState.PENDING, "running")
    pulls.forge.set_status(REPO, head, "orch/review", StatusState.SUCCESS, "", "http://x/1")
    pulls.forge.set_status(REPO, head, "orch/tests", StatusState.FAILURE, "2 failed")
    assert pulls.statuses(head) == {"orch/tests": "failure", "orch/review": "success"}


def test_describing_a_pull_request_changes_its_title(pulls: Case) -> None:
    change(pulls, "orch/T-1", {"NOTES.md": "notes\n"})
    opened = pulls.forge.open_pull(REPO, "orch/T-1", "T-1: draft", "")
    pulls.forge.describe_pull(REPO, opened.number, "T-1: notes", "what changed")
    assert pulls.title_of(opened.number) == "T-1: notes"


def test_landing_marks_the_pull_request_merged(pulls: Case) -> None:
    head = change(pulls, "orch/T-1", {"NOTES.md": "notes\n"})
    opened = pulls.forge.open_pull(REPO, "orch/T-1", "T-1: notes", "")
    landed = land(pulls, "orch/T-1", head)
    merged = pulls.forge.find_pull(REPO, "orch/T-1")
    assert merged is not None
    assert (merged.number, merged.state, merged.merge_sha) == (opened.number, "merged", landed)


@pytest.mark.parametrize("pulls", ["gitea"], indirect=True)
def test_a_conflict_on_opening_finds_the_pull_request_opened_meanwhile(pulls: Case) -> None:
    change(pulls, "orch/T-1", {"NOTES.md": "notes\n"})
    opened = pulls.forge.open_pull(REPO, "orch/T-1", "T-1: notes", "")
    assert pulls.fake is not None
    # the lookup misses it (opened by a try whose answer was lost): the create is refused
    pulls.fake.faults.add(Fault(method="GET", path=r"/pulls/main/orch", status=404))
    again = pulls.forge.open_pull(REPO, "orch/T-1", "T-1: notes", "")
    assert again.number == opened.number
    refused = [e for e in pulls.fake.exchanges if e.method == "POST" and e.path.endswith("/pulls")]
    assert [e.status for e in refused] == [201, 409]
