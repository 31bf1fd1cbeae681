"""An active task that is not moving says why: the repository slot and who holds it, the
circuit of its agent and until when, its backoff and attempt, its place in the queue, or, while
it runs, its agent's provider retries."""

from __future__ import annotations

import pytest

from orch.domain.ledger import Usage
from orch.domain.model import Task
from orch.ports import RepoSettings
from orch.services.breaker import Breakers
from orch.services.views import task_detail, task_summary
from orch.services.waits import Waits
from orch.testing import InstantAgent, Rig, SimClock, retry, rig

OWNER = "test:1:1:worker"


def world(max_active: int = 1) -> tuple[Rig, SimClock]:
    clock = SimClock(1_000_000.0)
    r = rig(
        {"default": InstantAgent()},
        repo=RepoSettings(name="app", test_command="true", key_prefix="APP", max_active=max_active),
        clock=clock,
    )
    return r, clock


def filed(r: Rig, title: str) -> Task:
    return r.intake.file("app", title, "", actor="test")


def test_a_task_behind_a_full_repository_names_the_tasks_holding_its_slots() -> None:
    r, _ = world(max_active=1)
    first, second = filed(r, "first"), filed(r, "second")
    assert r.store.claim(OWNER, 60, r.repos.limit) is not None  # the first takes the slot

    held = Waits(r.store, r.repos.limit).why(r.store.get_task(second.id))

    assert held is not None and held.kind == "repo_slot"
    assert held.text == f"waiting for a slot of repository app, held by {first.key}"
    summary = task_summary(r.store.get_task(second.id), Waits(r.store, r.repos.limit))
    assert summary["held_up"]["kind"] == "repo_slot"


def test_a_task_in_backoff_says_until_when_and_which_attempt_comes_next() -> None:
    r, _ = world()
    task = filed(r, "flaky")
    claim = r.store.claim(OWNER, 60, r.repos.limit)
    assert claim is not None
    retry(r.store, claim, "agent default exited 1: boom", backoff_s=90)

    held = Waits(r.store, r.repos.limit, wall=lambda: 0.0).why(r.store.get_task(task.id))

    assert held is not None and held.kind == "backoff"
    assert held.until == 90.0
    assert "before attempt 2 of 3: agent default exited 1: boom" in held.text


def test_a_task_whose_agent_circuit_is_open_says_until_when_and_why() -> None:
    r, _ = world()
    task = filed(r, "blocked")
    circuits = {"default": {"circuit": "open", "retry_in_s": 30.0, "reason": "HTTP 529"}}

    held = Waits(r.store, r.repos.limit, circuits, wall=lambda: 100.0).why(task)

    assert held is not None and held.kind == "circuit"
    assert held.until == 130.0
    assert held.text.startswith("the circuit of agent default is open until ")
    assert held.text.endswith("(HTTP 529)")


def test_a_task_queued_behind_others_says_how_many_are_ahead() -> None:
    r, _ = world(max_active=3)
    filed(r, "one")
    filed(r, "two")
    third = filed(r, "three")

    held = Waits(r.store, r.repos.limit).why(third)

    assert held is not None and held.kind == "queue"
    assert held.text == "queued behind 2 job(s); 0 running"


def test_a_running_task_whose_agent_retries_its_provider_says_so() -> None:
    r, _ = world()
    task = filed(r, "running")
    assert r.store.claim(OWNER, 60, r.repos.limit) is not None
    said = {task.id: "the provider failed: HTTP 529 overloaded_error"}

    held = Waits(r.store, r.repos.limit, retrying=said.get).why(r.store.get_task(task.id))
    quiet = Waits(r.store, r.repos.limit, retrying={}.get).why(r.store.get_task(task.id))

    assert held is not None and held.kind == "provider_retries"
    assert held.text == (
        "its agent is in provider retries: the provider failed: HTTP 529 overloaded_error"
    )
    assert quiet is None


def test_a_task_run_by_another_process_in_provider_retries_says_so_from_its_note() -> None:
    r, _ = world()
    task = filed(r, "running elsewhere")
    claim = r.store.claim("worker:2:elsewhere", 60, r.repos.limit)
    assert claim is not None
    run_id = r.store.start_run(claim, "default", None, "/tmp/run.log")
    r.store.note_spending(run_id, Usage(), "the provider failed: HTTP 503")

    # this process runs nothing: what it knows is what the other process noted
    held = Waits(r.store, r.repos.limit, retrying={}.get).why(r.store.get_task(task.id))

    assert held is not None and held.kind == "provider_retries"
    assert held.text == "its agent is in provider retries: the provider failed: HTTP 503"
    # the process running it knows better than its last note: it got an answer since
    here = Waits(r.store, r.repos.limit, retrying=lambda _task: "").why(r.store.get_task(task.id))
    assert here is None


def test_a_task_held_back_by_a_circuit_another_process_opened_says_so() -> None:
    r, _ = world()
    task = filed(r, "blocked elsewhere")
    r.store.open_circuit("default", r.store.now() + 90, 90, "HTTP 529")
    here = Breakers(shared=r.store)  # this process saw no failure of its own

    held = Waits(r.store, r.repos.limit, here.states(), wall=lambda: 100.0).why(task)

    assert held is not None and held.kind == "circuit"
    assert held.until == pytest.approx(190.0)
    assert held.text.endswith("(HTTP 529)")


def test_a_task_that_waits_for_a_person_or_is_parked_is_not_held_up() -> None:
    r, _ = world()
    task = filed(r, "done soon")
    r.run_until_idle()  # it runs to the first checkpoint, where it waits for a person
    waiting = r.store.get_task(task.id)
    assert waiting.waiting_for

    assert Waits(r.store, r.repos.limit).why(waiting) is None
    assert task_detail(r.store, waiting)["held_up"] is None
