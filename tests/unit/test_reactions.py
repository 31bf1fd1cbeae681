"""The forge reacts to a task's pull request (orch.services.reactions): its repository's own CI
failing, a reviewer asking for changes, a person closing it. On memory adapters; the deliveries
are shaped as Gitea sends them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orch.domain.model import Task
from orch.domain.news import NewsKind
from orch.domain.states import EventKind, Stage, TaskStatus
from orch.services.reactions import ForgeSync
from orch.testing import InstantAgent, Rig, rig

REPO = {"full_name": "app", "name": "app", "owner": {"login": "team"}}


@dataclass
class World:
    rig: Rig
    agent: InstantAgent
    sync: ForgeSync
    deliveries: int = 0

    def deliver(self, event: str, payload: dict[str, Any], delivery: str = "") -> bool:
        self.deliveries += 1
        stored = self.sync.receive(
            delivery or f"d-{self.deliveries}", event, json.dumps(payload).encode()
        )
        self.sync.drain()
        return stored

    def head(self, task: Task) -> str:
        head = self.rig.forge.branch_head("app", task.branch)
        assert head is not None
        return head

    def ci_failed(self, task: Task, context: str = "ci/build", sha: str = "") -> dict[str, Any]:
        return {
            "sha": sha or self.head(task),
            "context": context,
            "state": "failure",
            "description": "3 tests failed",
            "target_url": "https://ci.example/runs/7",
            "repository": REPO,
            "sender": {"login": "ci-bot"},
        }

    def pull(self, task: Task, **more: Any) -> dict[str, Any]:
        return {"number": 1, "head": {"ref": task.branch, "sha": self.head(task)}, **more}

    def now(self, task: Task) -> Task:
        return self.rig.store.get_task(task.id)

    def prompts(self, stage: Stage) -> list[str]:
        return [r.prompt for r in self.agent.started if r.stage == stage]


@pytest.fixture
def world() -> Iterator[World]:
    agent = InstantAgent()
    r = rig({"default": agent})
    yield World(r, agent, ForgeSync(r.store, r.forge, r.forge, r.intake))
    r.close()


def at_review(w: World) -> Task:
    """A task whose development is pushed and whose review is next."""
    task = w.rig.intake.file("app", "Add a greeting", "Say hello.")
    w.rig.run_until_idle()
    assert w.rig.intake.decide(task.key, True, "ann")
    while w.now(task).stage != Stage.REVIEW:
        assert w.rig.dispatcher.run_once()
    return w.now(task)


def test_a_failing_check_of_the_repositorys_ci_sends_the_task_back_with_what_it_said(
    world: World,
) -> None:
    task = at_review(world)
    assert world.deliver("status", world.ci_failed(task))
    world.rig.dispatcher.run_once()
    back = world.now(task)
    assert (back.stage, back.rework_rounds) == (Stage.DEVELOPMENT, 1)
    world.rig.dispatcher.run_once()
    prompt = world.prompts(Stage.DEVELOPMENT)[-1]
    assert "ci/build" in prompt and "3 tests failed" in prompt
    assert "https://ci.example/runs/7" in prompt
    [event] = [e for e in world.rig.store.events(task.id) if e.kind == EventKind.REWORK]
    assert event.actor == "gitea:ci-bot"


def test_a_status_delivered_again_or_sent_twice_reworks_once(world: World) -> None:
    task = at_review(world)
    failed = world.ci_failed(task)
    assert world.deliver("status", failed, delivery="same")
    assert not world.deliver("status", failed, delivery="same")
    world.deliver("status", failed)  # another delivery of the same status
    reworks = [e for e in world.rig.store.events(task.id) if e.kind == EventKind.REWORK]
    assert len(reworks) == 1


def test_orchs_own_statuses_are_not_reactions(world: World) -> None:
    task = at_review(world)
    world.deliver("status", world.ci_failed(task, context="orch/tests"))
    world.rig.run_until_idle()
    assert world.now(task).rework_rounds == 0
    assert world.rig.store.deliveries("gitea")[-1].outcome.startswith("ignored")


def test_a_failure_of_a_commit_no_tasks_branch_holds_is_ignored(world: World) -> None:
    task = at_review(world)
    # the default branch's own CI fails on a commit pushed there by someone else
    other = world.rig.forge.move_default("app", {"OTHER.md": b"x"})
    world.deliver("status", world.ci_failed(task, sha=other))
    assert world.rig.store.deliveries("gitea")[-1].outcome.startswith("ignored: no live task")
    world.rig.run_until_idle()
    now = world.now(task)
    assert (now.waiting_for, now.rework_rounds) == ("confirm-deploy", 0)


def test_a_review_asking_for_changes_reworks_with_the_review(world: World) -> None:
    task = at_review(world)
    review = {
        "action": "reviewed",
        "pull_request": world.pull(task),
        "review": {"type": "pull_request_review_rejected", "content": "Validate the name."},
        "repository": REPO,
        "sender": {"login": "bob"},
    }
    world.deliver("pull_request_rejected", review)
    world.rig.dispatcher.run_once()
    world.rig.dispatcher.run_once()
    assert world.now(task).rework_rounds == 1
    assert "Validate the name." in world.prompts(Stage.DEVELOPMENT)[-1]


def test_a_waiting_task_goes_back_as_a_rejection_sends_it(world: World) -> None:
    task = world.rig.intake.file("app", "Add a greeting")
    world.rig.run_until_idle()
    assert world.now(task).waiting_for == "approve-plan"
    world.deliver("status", world.ci_failed(task))
    world.rig.dispatcher.run_once()
    back = world.now(task)
    assert (back.stage, back.status) == (Stage.ANALYSIS, TaskStatus.ACTIVE)


def test_after_its_rework_rounds_the_task_parks_and_people_hear_why(world: World) -> None:
    task = at_review(world)
    for n in range(4):
        world.deliver("status", world.ci_failed(task, context=f"ci/run-{n}"))
        world.rig.dispatcher.run_once()
        while world.now(task).stage != Stage.REVIEW:
            if world.now(task).status == TaskStatus.NEEDS_OPERATOR:
                break
            assert world.rig.dispatcher.run_once()
    parked = world.now(task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "rework rounds used" in parked.status_reason
    parked_news = [n for _, n in world.rig.notifier.news if n.kind == NewsKind.PARKED]
    assert parked_news and "ci/run-3" in parked_news[-1].reason


def closing(w: World, task: Task, number: int, sender: str = "carol") -> dict[str, Any]:
    return {
        "action": "closed",
        "pull_request": {**w.pull(task, merged=False), "number": number},
        "repository": REPO,
        "sender": {"login": sender},
    }


def test_a_pull_request_closed_by_a_person_cancels_the_task(world: World) -> None:
    task = at_review(world)
    pull = world.rig.forge.find_pull("app", task.branch)
    assert pull is not None
    world.rig.forge.close_pull("app", pull.number)
    world.deliver("pull_request", closing(world, task, pull.number))
    world.rig.run_until_idle()
    gone = world.now(task)
    assert gone.status == TaskStatus.CANCELLED
    assert "gitea:carol" in gone.status_reason


def test_a_reaction_after_the_change_landed_is_ignored(world: World) -> None:
    task = at_review(world)
    world.rig.run_until_idle()  # review, testing, merge, staging: waits to deploy
    merged_head = world.rig.forge.merges[0][1]
    failed = world.ci_failed(task, sha=merged_head)
    world.deliver("status", failed)
    world.rig.run_until_idle()
    assert world.now(task).waiting_for == "confirm-deploy"
    assert world.now(task).rework_rounds == 0


def test_a_close_that_is_not_so_now_or_is_orchs_own_cancels_nothing(world: World) -> None:
    task = at_review(world)
    pull = world.rig.forge.find_pull("app", task.branch)
    assert pull is not None
    # a replayed close of a pull request that is open now (reopened, or another one)
    world.deliver("pull_request", closing(world, task, pull.number))
    # orch's own deletion of a branch closes its pull request: no reaction to itself
    world.rig.forge.close_pull("app", pull.number)
    world.deliver("pull_request", closing(world, task, pull.number, sender="orch"))
    world.rig.run_until_idle()
    assert world.now(task).status != TaskStatus.CANCELLED
    outcomes = [d.outcome for d in world.rig.store.deliveries("gitea")]
    assert outcomes == [
        "ignored: APP-1's pull request is not closed now",
        "ignored: pull_request is nothing orch reacts to",
    ]


def test_an_edited_or_plain_comment_is_no_review(world: World) -> None:
    task = at_review(world)
    for event, action in (
        ("pull_request_review_comment", "edited"),
        ("pull_request_comment", "created"),
    ):
        comment = {
            "action": action,
            "pull_request": world.pull(task),
            "comment": {"id": 9, "body": "LGTM"},
            "repository": REPO,
            "sender": {"login": "bob"},
        }
        world.deliver(event, comment)
    assert not [e for e in world.rig.store.events(task.id) if e.kind == EventKind.REWORK]


def merging(w: World, task: Task, number: int, sender: str = "carol") -> dict[str, Any]:
    return {
        "action": "closed",
        "pull_request": {**w.pull(task, merged=True), "number": number},
        "repository": REPO,
        "sender": {"login": sender},
    }


def test_a_pull_request_merged_by_a_person_ends_the_task_done_with_no_merge_of_orchs(
    world: World,
) -> None:
    task = at_review(world)
    pull = world.rig.forge.find_pull("app", task.branch)
    assert pull is not None
    landed = world.rig.forge.merge_by_hand("app", pull.number)
    world.deliver("pull_request", merging(world, task, pull.number))
    world.rig.run_until_idle()
    done = world.now(task)
    assert (done.stage, done.status) == (Stage.DONE, TaskStatus.DONE)
    assert "merged by hand by gitea:carol" in done.status_reason
    assert landed[:12] in done.status_reason
    assert world.rig.forge.merges == []  # orch merged nothing
    assert not [r for r in world.agent.started if r.stage == Stage.TESTING]
    news = [n for _, n in world.rig.notifier.news if n.task_key == task.key]
    assert news[-1].kind == NewsKind.DONE


def test_a_merge_by_hand_delivered_again_ends_the_task_once(world: World) -> None:
    task = at_review(world)
    pull = world.rig.forge.find_pull("app", task.branch)
    assert pull is not None
    world.rig.forge.merge_by_hand("app", pull.number)
    world.deliver("pull_request", merging(world, task, pull.number), delivery="same")
    world.deliver("pull_request", merging(world, task, pull.number))
    world.rig.run_until_idle()
    world.deliver("pull_request", merging(world, task, pull.number))
    landed = [e for e in world.rig.store.events(task.id) if e.kind == EventKind.LANDED]
    assert len(landed) == 1
    assert world.now(task).status == TaskStatus.DONE
    outcomes = [d.outcome for d in world.rig.store.deliveries("gitea")]
    assert outcomes == [
        "merged by hand: APP-1",
        "ignored: merged already",
        f"ignored: no live task has {task.branch}",
    ]


def test_a_merge_that_is_not_so_now_ends_nothing(world: World) -> None:
    task = at_review(world)
    pull = world.rig.forge.find_pull("app", task.branch)
    assert pull is not None
    # a forged or replayed "merged" for a pull request that is open
    world.deliver("pull_request", merging(world, task, pull.number))
    world.rig.run_until_idle()
    assert world.now(task).waiting_for == "confirm-deploy"
    assert not [e for e in world.rig.store.events(task.id) if e.kind == EventKind.LANDED]


def test_orchs_own_merge_coming_back_as_merged_is_not_a_merge_by_hand(world: World) -> None:
    task = at_review(world)
    world.rig.run_until_idle()  # review, testing, its own merge, staging: waits to deploy
    pull = world.rig.forge.find_pull("app", task.branch)
    assert pull is not None and pull.state == "merged"
    world.deliver("pull_request", merging(world, task, pull.number, sender="reviewer"))
    world.rig.run_until_idle()
    waits = world.now(task)
    assert (waits.status, waits.waiting_for) == (TaskStatus.WAITING, "confirm-deploy")
    assert len(world.rig.forge.merges) == 1
    # the worker read the hint and found the landing its own
    [landed] = [e for e in world.rig.store.events(task.id) if e.kind == EventKind.LANDED]
    assert landed.processed_at is not None


def test_a_push_tells_which_branch_moved_whoever_pushed_and_a_tag_tells_nothing(
    world: World,
) -> None:
    moved: list[tuple[str, str]] = []
    world.sync = ForgeSync(
        world.rig.store,
        world.rig.forge,
        world.rig.forge,
        world.rig.intake,
        lambda repo, branch: moved.append((repo, branch)),
    )

    def push(ref: str, who: str) -> None:
        world.deliver(
            "push",
            {
                "ref": ref,
                "after": "c0ffee" * 6 + "abcd",
                "repository": REPO,
                "sender": {"login": who},
            },
        )

    push("refs/heads/main", "ann")
    push("refs/heads/main", "orch")  # orch's own merge may change the pipeline file too
    push("refs/tags/v1", "ann")

    assert moved == [("app", "main"), ("app", "main")]
    outcomes = [d.outcome for d in world.rig.store.deliveries("gitea")]
    assert outcomes[:2] == ["app:main moved to c0ffeec0ffee"] * 2
    assert outcomes[2].startswith("ignored")
