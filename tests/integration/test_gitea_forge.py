"""The Gitea forge against the fake Gitea: where its token goes (nowhere but its own requests),
how it rides out Gitea's refusals and faults, and how a merge whose answer was lost is resolved
by asking, never by merging again."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orch.adapters.forges.gitea import GiteaForge
from orch.domain.errors import ConfigError, DefaultMoved, ForgeError, ForgeUnavailable, HeadMoved
from orch.fakes.faults import Fault
from orch.fakes.gitea import GiteaFake
from orch.ports import Candidate, PullState, StatusState

TOKEN = "s3cr3t-gitea-token-5d1e"
REPO = "sample"
BRANCH = "orch/T-1"
MERGE = r"/pulls/\d+/merge$"


@dataclass
class World:
    fake: GiteaFake
    root: Path
    sleeps: list[float] = field(default_factory=list)
    forges: list[GiteaForge] = field(default_factory=list)

    def forge(
        self, token: str = TOKEN, merge_style: str = "fast-forward-only", timeout_s: float = 10.0
    ) -> GiteaForge:
        made = GiteaForge(
            self.root,
            self.fake.url,
            token,
            {REPO: (self.fake.clone_url(REPO), "main")},
            merge_style=merge_style,
            timeout_s=timeout_s,
            sleep=self.sleeps.append,
        )
        self.forges.append(made)
        return made

    def calls(self, method: str, pattern: str) -> list[int]:
        """The statuses of the requests made so far whose path `pattern` finds."""
        return [
            e.status
            for e in self.fake.exchanges
            if e.method == method and re.search(pattern, e.path)
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with GiteaFake(tmp_path / "gitea", TOKEN) as fake:
        fake.create_repo(REPO, {"README.md": "hello\n"})
        world = World(fake, tmp_path / "ws")
        yield world
        for forge in world.forges:
            forge.close()
        assert fake.violations == []


def change(forge: GiteaForge, files: dict[str, str], branch: str = BRANCH) -> str:
    worktree = forge.prepare_worktree(REPO, branch)
    for rel, text in files.items():
        (worktree / rel).write_text(text)
    return forge.commit_and_push(REPO, worktree, branch, "change")


def candidate(forge: GiteaForge, head: str, branch: str = BRANCH) -> Candidate:
    return forge.merge_candidate(REPO, branch, head, f"Merge {branch}: T-1 notes")


def test_the_token_is_nowhere_in_the_workspace(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    pull = forge.open_pull(REPO, BRANCH, "T-1", "")
    forge.set_status(REPO, head, "orch/tests", StatusState.SUCCESS)
    landed = forge.land(REPO, candidate(forge, head))
    change(forge, {"MORE.md": "more\n"}, "orch/T-2")
    forge.delete_branch(REPO, BRANCH)
    merged = forge.find_pull(REPO, BRANCH)
    assert merged is not None and (merged.number, merged.merge_sha) == (pull.number, landed)
    holding = [p for p in world.root.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert holding == []
    mirror = forge.mirror_dir(REPO)
    config = subprocess.run(
        ["git", "--git-dir", str(mirror), "config", "--list", "--local"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert world.fake.url not in config and "extraheader" not in config.lower()
    assert TOKEN not in repr(forge)


def test_errors_do_not_show_the_token(world: World) -> None:
    wrong = "wrong-token-7f3a9c"
    with pytest.raises(ForgeError) as failed_git:
        world.forge(token=wrong).prepare_worktree(REPO, BRANCH)
    assert wrong not in str(failed_git.value)
    forge = world.forge()
    world.fake.faults.add(Fault(method="POST", path="/statuses/", status=500, times=9))
    with pytest.raises(ForgeError) as failed_rest:
        forge.set_status(REPO, "0" * 40, "orch/tests", StatusState.PENDING)
    assert TOKEN not in str(failed_rest.value) and "500" in str(failed_rest.value)


def test_a_merge_asked_while_gitea_checks_mergeability_is_tried_again(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    pull = forge.open_pull(REPO, BRANCH, "T-1", "")
    world.fake.checking(REPO, pull.number, times=2)
    landed = forge.land(REPO, candidate(forge, head))
    assert world.calls("POST", MERGE) == [405, 405, 200]
    assert len(world.sleeps) == 2
    assert world.fake.head(REPO, "main") == landed


def test_gitea_refusing_a_moved_head_is_head_moved(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    before = world.fake.head(REPO, "main")
    world.fake.on_merge = lambda repo, _: world.fake.push(repo, BRANCH, {"LATE.md": "late\n"})
    with pytest.raises(HeadMoved):
        forge.land(REPO, candidate(forge, head))
    assert world.fake.head(REPO, "main") == before
    assert world.calls("POST", MERGE) == [409]


def test_a_merge_whose_answer_was_lost_is_resolved_by_asking(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    world.fake.faults.add(Fault(method="POST", path=MERGE, drop=True))
    landed = forge.land(REPO, candidate(forge, head))
    assert landed == world.fake.head(REPO, "main")
    assert forge.read_default_file(REPO, "NOTES.md") == "notes\n"
    assert world.calls("POST", MERGE) == [0]  # asked once, never again
    assert world.calls("GET", MERGE) == [204]
    assert forge.find_merge(REPO, head) == landed


def test_a_failed_merge_is_unknown_until_asked_again_and_never_sent_twice(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    before = world.fake.head(REPO, "main")
    world.fake.faults.add(Fault(method="POST", path=MERGE, status=502))
    # not merged yet is no answer: Gitea may still carry out a request it took
    with pytest.raises(ForgeUnavailable, match="will merge is unknown"):
        forge.land(REPO, candidate(forge, head))
    assert world.calls("POST", MERGE) == [502]
    assert world.calls("GET", MERGE) == [404]
    assert world.fake.head(REPO, "main") == before


def test_rate_limits_and_unavailability_are_waited_out(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    world.fake.faults.add(Fault(method="GET", path="/branches/main", status=503, retry_after=2))
    world.fake.faults.add(Fault(method="POST", path=MERGE, status=429, retry_after=3))
    world.fake.faults.add(Fault(method="POST", path="/statuses/", status=429, retry_after=1))
    forge.set_status(REPO, head, "orch/tests", StatusState.SUCCESS)
    landed = forge.land(REPO, candidate(forge, head))
    assert world.fake.head(REPO, "main") == landed
    assert world.fake.statuses(REPO, head) == {"orch/tests": "success"}
    assert sorted(world.sleeps) == [1.0, 2.0, 3.0]
    assert world.calls("POST", MERGE) == [429, 200]


def test_a_read_that_times_out_is_tried_again(world: World) -> None:
    forge = world.forge(timeout_s=0.2)
    change(forge, {"NOTES.md": "notes\n"})
    opened = forge.open_pull(REPO, BRANCH, "T-1", "")
    world.fake.faults.add(Fault(method="GET", path="/pulls/main/", delay_s=0.6))
    found = forge.find_pull(REPO, BRANCH)
    assert found is not None and found.number == opened.number
    assert len(world.sleeps) == 1


def test_deleting_the_default_branch_is_refused_without_asking_gitea(world: World) -> None:
    forge = world.forge()
    asked = len(world.fake.exchanges)
    with pytest.raises(ForgeError):
        forge.delete_branch(REPO, "main")
    assert len(world.fake.exchanges) == asked
    assert world.fake.head(REPO, "main") is not None


def test_a_protected_branch_is_not_deleted(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    world.fake.protect_branch(REPO, BRANCH)
    with pytest.raises(ForgeError, match="protected"):
        forge.delete_branch(REPO, BRANCH)
    assert world.fake.head(REPO, BRANCH) == head


def test_a_default_branch_that_moves_as_gitea_merges_is_built_on_again(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    first = candidate(forge, head)

    def someone_lands_first(repo: str, _: int) -> None:
        world.fake.on_merge = None
        world.fake.push_to_default(repo, {"OTHER.md": "theirs\n"})

    world.fake.on_merge = someone_lands_first
    with pytest.raises(DefaultMoved):
        forge.land(REPO, first)
    # the branch holds the first candidate now; the next one merges it, and lands
    assert world.fake.head(REPO, BRANCH) == first.sha
    second = candidate(forge, head)
    assert second.head == first.sha and second.conflicts == ()
    landed = forge.land(REPO, second)
    assert world.fake.head(REPO, "main") == landed
    assert forge.read_default_file(REPO, "NOTES.md") == "notes\n"
    assert forge.read_default_file(REPO, "OTHER.md") == "theirs\n"
    assert forge.find_merge(REPO, head) is not None


def test_a_branch_moved_by_someone_else_is_not_taken_for_a_candidate(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    world.fake.push(REPO, BRANCH, {"EXTRA.md": "not reviewed\n"})
    with pytest.raises(HeadMoved):
        candidate(forge, head)


@pytest.mark.parametrize("style", ["merge", "squash"])
def test_other_merge_styles_land_gitea_s_own_commit(world: World, style: str) -> None:
    forge = world.forge(merge_style=style)
    head = change(forge, {"NOTES.md": "notes\n"})
    built = candidate(forge, head)
    landed = forge.land(REPO, built)
    assert landed == world.fake.head(REPO, "main") != built.sha
    pull = forge.find_pull(REPO, BRANCH)
    assert pull is not None and (pull.state, pull.merge_sha) == (PullState.MERGED, landed)
    assert forge.find_merge(REPO, head) == landed
    assert candidate(forge, head).landed


def test_a_pull_request_a_person_merged_counts_as_landed(world: World) -> None:
    forge = world.forge()
    head = change(forge, {"NOTES.md": "notes\n"})
    pull = forge.open_pull(REPO, BRANCH, "T-1", "")
    merged = world.fake.merge_by_hand(REPO, pull.number)
    again = candidate(forge, head)
    assert (again.landed, again.sha) == (True, merged)
    assert forge.land(REPO, again) == merged
    assert world.calls("POST", MERGE) == []


def test_a_remote_on_another_server_is_refused(world: World) -> None:
    with pytest.raises(ConfigError):
        GiteaForge(world.root, world.fake.url, TOKEN, {REPO: ("https://elsewhere/o/r.git", "main")})


@pytest.mark.parametrize(
    "fault",
    [
        Fault("POST", r"git-receive-pack$", status=502),
        Fault("POST", r"git-receive-pack$", status=429, retry_after=1),
        Fault("GET", r"/info/refs$", status=503),
        Fault("GET", r"/info/refs$", drop=True),
    ],
)
def test_a_push_gitea_does_not_take_is_the_forge_unavailable(world: World, fault: Fault) -> None:
    forge = world.forge()
    change(forge, {"NOTES.md": "notes\n"})
    worktree = forge.prepare_worktree(REPO, BRANCH)
    (worktree / "MORE.md").write_text("more\n")
    fault.times = 5
    world.fake.faults.add(fault)
    # not the task's failure: its work waits for the forge, and counts no attempt
    with pytest.raises(ForgeUnavailable):
        forge.commit_and_push(REPO, worktree, BRANCH, "more")


@pytest.mark.parametrize("new_branch", [True, False])
def test_a_push_gitea_took_whose_answer_was_lost_counts_as_pushed(
    world: World, new_branch: bool
) -> None:
    forge = world.forge()
    if not new_branch:
        change(forge, {"NOTES.md": "notes\n"})
    worktree = forge.prepare_worktree(REPO, BRANCH)
    (worktree / "MORE.md").write_text("more\n")
    # carried out, then the connection drops; git's own retry is refused as stale
    world.fake.faults.add(Fault("POST", r"git-receive-pack$", drop=True))
    head = forge.commit_and_push(REPO, worktree, BRANCH, "more")
    assert forge.branch_head(REPO, BRANCH) == head
    assert world.fake.head(REPO, BRANCH) == head
