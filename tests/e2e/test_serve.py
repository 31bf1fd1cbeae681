"""`orch serve` as a subprocess, driven over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orch.adapters.store.sql import SqlStore
from orch.demo import sample
from orch.domain.states import JobState, RunOutcome

from .conftest import orch, write_config

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    config: Path
    root: Path


def start_serve(config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "orch.cli", "--config", str(config), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote)
    proc = start_serve(config)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        assert match, f"no address in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield Served(match.group(0), proc, config, tmp_path)
    finally:
        stop(proc)


def wait_for(predicate, what: str, bound_s: float = 30.0):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; the bound only turns a hang into a failure."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never saw {what}")


def test_filed_ticket_runs_analysis_and_waits_for_plan_approval(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        created = client.post(
            "/api/v1/tasks", json={"repo": "sample", "title": "Add a slugify helper"}
        )
        assert created.status_code == 201
        key = created.json()["key"]
        assert key == "SAM-1"

        def waiting() -> dict | None:
            body = client.get(f"/api/v1/tasks/{key}").json()
            return body if body["status"] == "waiting" else None

        task = wait_for(waiting, "the task waiting at its checkpoint")
        assert task["waiting_for"] == "approve-plan"
        assert task["stage"] == "architecture"
        assert [(g["stage"], g["gate"], g["passed"]) for g in task["gates"]] == [
            ("analysis", "spec", True)
        ]
        assert [h["version"] for h in task["history"]] == [1, 2]
        assert task["history"][0]["actor"] == "api"
        assert (task["runs"][0]["exit_code"], task["runs"][0]["outcome"]) == (0, "exited")
        listed = client.get("/api/v1/tasks", params={"status": "waiting"}).json()["tasks"]
        assert [t["key"] for t in listed] == [key]
        assert client.get("/api/v1/tasks", params={"status": "needs_operator"}).json() == {
            "tasks": []
        }
        assert client.get("/api/v1/tasks", params={"status": "sideways"}).status_code == 422

        state = client.get("/api/v1/state").json()
        closed = {"circuit": "closed", "failures_in_a_row": 0, "retry_in_s": 0.0, "reason": ""}
        # the agent's, and the forge's that every stage passes through
        assert state["circuits"] == {"default": closed, "forge": closed}
        assert state["tasks"]["by_status"] == {"waiting": 1}
        assert state["running"] == []
        assert [t["task"] for t in state["recent_transitions"]] == [key, key]

    shown = orch("--config", str(served.config), "task", "show", key)
    assert shown.returncode == 0, shown.stderr
    assert "approve-plan" in shown.stdout

    with httpx.Client(base_url=served.url, timeout=10) as client:
        approved = client.post(f"/api/v1/tasks/{key}/approve", json={"actor": "alice"})
        assert approved.json()["recorded"] is True
        # the wait is answered: a rejection sent after it would never be acted on
        refused = client.post(f"/api/v1/tasks/{key}/reject", json={"actor": "bob"})
        assert refused.status_code == 409
        assert "approved by alice" in refused.json()["error"]


def test_api_answers_bad_requests_with_clear_errors(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        unknown = client.post("/api/v1/tasks", json={"repo": "nope", "title": "x"})
        assert unknown.status_code == 404
        assert "unknown repository 'nope'" in unknown.json()["error"]
        missing = client.get("/api/v1/tasks/SAM-99")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no task for ticket SAM-99"}
        invalid = client.post("/api/v1/tasks", json={"repo": "sample"})
        assert invalid.status_code == 422
        assert client.get("/api/v1/state").json()["tasks"]["by_status"] == {}


def test_a_retry_that_raises_a_budget_is_checked_before_it_is_recorded(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Tidy"}).json()["key"]
        for bad in ({"budget_usd": 0}, {"budget_tokens": -5}, {"budget_usd": "lots"}):
            refused = client.post(f"/api/v1/tasks/{key}/retry", json=bad)
            assert refused.status_code == 422, bad
        not_parked = client.post(f"/api/v1/tasks/{key}/retry", json={"budget_usd": 2.5})
        assert not_parked.status_code == 409
        assert "only a task that needs an operator is retried" in not_parked.json()["error"]
        events = client.get(f"/api/v1/tasks/{key}").json()["events"]
        assert [e for e in events if e["kind"] == "retry"] == []


def test_second_serve_on_the_same_sqlite_file_is_refused(served: Served) -> None:
    second = start_serve(served.config)
    try:
        _, err = second.communicate(timeout=60)
    finally:
        stop(second)
    assert second.returncode != 0
    assert "another orch serve is already using" in err
    assert httpx.get(f"{served.url}/api/v1/health", timeout=10).json()["ok"] is True


def test_approvals_over_the_api_carry_a_ticket_to_done_and_merge_it_once(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Tidy"}).json()["key"]

        def waiting_at(checkpoint: str):  # type: ignore[no-untyped-def]
            def check() -> bool:
                body = client.get(f"/api/v1/tasks/{key}").json()
                return body["status"] == "waiting" and body["waiting_for"] == checkpoint

            return check

        wait_for(waiting_at("approve-plan"), "the plan checkpoint")
        early = client.post(f"/api/v1/tasks/{key}/approve", json={"actor": "ann"})
        assert early.json() == {"key": key, "checkpoint": "approve-plan", "recorded": True}
        wait_for(waiting_at("confirm-deploy"), "the deploy checkpoint")
        assert client.post(f"/api/v1/tasks/{key}/approve", json={"actor": "bob"}).status_code == 200

        def done() -> dict | None:
            body = client.get(f"/api/v1/tasks/{key}").json()
            return body if body["status"] == "done" else None

        task = wait_for(done, "the task done")
        not_waiting = client.post(f"/api/v1/tasks/{key}/approve")
        assert not_waiting.status_code == 409

    approvers = [
        h["actor"] for h in task["history"] if h["reason"].endswith("approved by " + h["actor"])
    ]
    assert approvers == ["ann", "bob"]
    merges = [e for e in task["effects"] if e["kind"] == "merge"]
    assert [e["state"] for e in merges] == ["SUCCEEDED"]
    remote_main = subprocess.run(
        ["git", "--git-dir", str(served.root / "sample.git"), "rev-parse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert remote_main == merges[0]["result"]["merge_sha"]


def test_stop_over_the_api_cancels_a_waiting_task_and_deletes_its_branch(served: Served) -> None:
    remote = served.root / "sample.git"
    with httpx.Client(base_url=served.url, timeout=10) as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Tidy"}).json()["key"]

        def waiting() -> bool:
            return client.get(f"/api/v1/tasks/{key}").json()["status"] == "waiting"

        wait_for(waiting, "the plan checkpoint")
        branch = f"refs/heads/orch/{key}"
        assert (
            subprocess.run(
                ["git", "--git-dir", str(remote), "rev-parse", "--verify", branch],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        stopped = client.post(f"/api/v1/tasks/{key}/stop", json={"actor": "ann", "reason": "dup"})
        assert stopped.json() == {"key": key, "status": "waiting", "recorded": True}
        again = client.post(f"/api/v1/tasks/{key}/stop", json={"actor": "bob"})
        assert again.json()["recorded"] is False

        def cancelled() -> dict | None:
            body = client.get(f"/api/v1/tasks/{key}").json()
            return body if body["status"] == "cancelled" else None

        task = wait_for(cancelled, "the task cancelled")
    assert task["history"][-1]["actor"] == "ann"
    assert "dup" in task["history"][-1]["reason"]
    assert [(e["kind"], e["actor"]) for e in task["events"]] == [("stop", "ann")]
    assert (
        subprocess.run(
            ["git", "--git-dir", str(remote), "rev-parse", "--verify", branch],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    )


def test_a_worker_on_the_workspace_of_a_running_serve_is_refused(served: Served) -> None:
    refused = orch("--config", str(served.config), "worker", timeout=60)
    assert refused.returncode == 2
    assert "another orch process runs workers in" in refused.stderr
    assert "give each serve or worker its own workspace_root" in refused.stderr


def test_serve_stopped_by_sigterm_gives_its_running_job_back_and_closes_the_run(
    tmp_path: Path,
) -> None:
    _, remote = sample.create(tmp_path)
    # an agent that works until it is stopped
    agents = {"default": {"kind": "command", "command": ["sleep", "600"]}}
    config = write_config(tmp_path, remote, agents=agents)
    proc = start_serve(config)
    try:
        assert proc.stdout is not None
        url = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
        assert url, proc.stderr.read() if proc.stderr else ""
        with httpx.Client(base_url=url.group(0), timeout=10) as client:
            key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Work"}).json()[
                "key"
            ]
            wait_for(
                lambda: client.get(f"/api/v1/tasks/{key}").json()["runs"], "the agent to start"
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop(proc)
    store = SqlStore(f"sqlite:///{tmp_path / 'orch.db'}")
    try:
        task = store.find_task(key)
        assert task is not None
        [job] = store.jobs(task.id)
        # given back, not held by a dead owner, and not counted as an attempt
        assert (job.state, job.owner, job.attempt) == (JobState.QUEUED, None, 0)
        [run] = store.runs(task.id)
        assert run.outcome == RunOutcome.SHUTDOWN
        assert run.ended_at is not None
    finally:
        store.close()
