"""`orch serve` with Plane as its tracker and Gitea as its forge, both the built-in fakes over
real HTTP: webhooks are verified before anything else, stored once, and only hints (the item is
read again), so duplicated, reordered and replayed deliveries do nothing twice."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from orch.adapters.store.sql import SqlStore
from orch.demo import sample
from orch.fakes.gitea import GiteaFake
from orch.fakes.plane import PlaneFake

PLANE_KEY, PLANE_SECRET = "plane-key-1", "plane-hook-secret"
GITEA_TOKEN, GITEA_SECRET = "gitea-token-1", "gitea-hook-secret"
STATES = (
    ("Backlog", "backlog"),
    ("To Analyse", "unstarted"),
    ("Analysing", "started"),
    ("Approved", "started"),
    ("Rejected", "started"),
    ("Confirm Deploy", "started"),
    ("Done", "completed"),
    ("STOP", "cancelled"),
)


@dataclass
class Stack:
    url: str
    plane: PlaneFake
    gitea: GiteaFake
    project: str
    store: SqlStore

    def deliveries(self, source: str) -> list[tuple[str, str]]:
        return [(d.delivery, d.outcome) for d in self.store.deliveries(source)]


def until(what: Callable[[], object], timeout_s: float = 30.0) -> object:
    """`what()` once it is truthy; the test fails if it is not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"still not so after {timeout_s}s")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with PlaneFake(PLANE_KEY) as plane, GiteaFake(tmp_path / "gitea", GITEA_TOKEN) as gitea:
        project = plane.add_project("Sample", "SAM", STATES)
        remote = gitea.create_repo("sample", sample.FILES)
        config = {
            "data_dir": str(tmp_path / "data"),
            "store": {"url": f"sqlite:///{tmp_path / 'orch.db'}"},
            "repos": [
                {
                    "name": "sample",
                    "remote": remote,
                    "key_prefix": "SAM",
                    "test_command": sample.test_command(),
                }
            ],
            "worker": {"poll_interval_s": 0.2, "backoff_base_s": 0.1},
            "tracker": {
                "kind": "plane",
                "url": plane.url,
                "workspace": plane.slug,
                "poll_interval_s": 3600,  # the webhooks alone, unless a test polls
                "projects": [{"id": project, "repo": "sample"}],
            },
            "forge": {"kind": "gitea", "url": gitea.url},
        }
        path = tmp_path / "orch.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env |= {
            "PLANE_API_KEY": PLANE_KEY,
            "PLANE_WEBHOOK_SECRET": PLANE_SECRET,
            "GITEA_TOKEN": GITEA_TOKEN,
            "GITEA_WEBHOOK_SECRET": GITEA_SECRET,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "orch.cli", "--config", str(path), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        store = SqlStore(f"sqlite:///{tmp_path / 'orch.db'}")
        try:
            assert proc.stdout is not None
            match = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
            assert match, proc.stderr.read() if proc.stderr else ""
            url = match.group(0)
            plane.subscribe(f"{url}/webhooks/plane", PLANE_SECRET)
            # the reconciler's first round, at start, is over: from here on only a webhook (or a
            # test's own poll) can start an item
            until(lambda: plane.item_listings)
            yield Stack(url, plane, gitea, project, store)
            assert plane.violations == [] and gitea.violations == []
        finally:
            store.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def signed(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_delivery_is_verified_before_anything_and_stored_once(stack: Stack) -> None:
    body = json.dumps({"event": "issue", "action": "updated", "data": {}}).encode()
    headers = {"Content-Type": "application/json", "X-Plane-Delivery": "d-1"}
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for wrong in ("", "0" * 64, signed("another secret", body)):
            refused = client.post(
                "/webhooks/plane", content=body, headers={**headers, "X-Plane-Signature": wrong}
            )
            assert refused.status_code == 401
        assert stack.deliveries("plane") == []
        good = {**headers, "X-Plane-Signature": signed(PLANE_SECRET, body)}
        first = client.post("/webhooks/plane", content=body, headers=good)
        again = client.post("/webhooks/plane", content=body, headers=good)
    assert (first.status_code, first.json()) == (200, {"stored": True})
    assert (again.status_code, again.json()) == (200, {"stored": False})
    assert [d for d, _ in stack.deliveries("plane")] == ["d-1"]


def test_an_item_moved_to_start_is_one_task_however_often_its_delivery_comes(
    stack: Stack,
) -> None:
    plane = stack.plane
    item = plane.add_item(stack.project, "Add a slugify helper", "<p>With tests.</p>")
    plane.person_moves(stack.project, item["id"], "To Analyse")
    assert plane.settle()
    for _ in range(5):
        plane.redeliver()  # the same delivery id, as a replay
    plane.redeliver(new_id=True)  # a retry with an id of its own
    assert plane.settle()
    assert all(d.status == 200 for d in plane.deliveries)
    worked = until(lambda: [o for _, o in stack.deliveries("plane") if o.startswith("started")])
    assert worked == ["started SAM-1 (task 1)"]
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        tasks = client.get("/api/v1/tasks").json()["tasks"]
    assert [t["key"] for t in tasks] == ["SAM-1"]
    # one delivery for the move, one for the retry with a new id: the replays were not stored
    assert len(stack.deliveries("plane")) == 3  # the item's creation, the move, the retry


def test_a_stop_delivered_before_a_stale_start_never_launches_a_task(stack: Stack) -> None:
    plane = stack.plane
    item = plane.add_item(stack.project, "Add a slugify helper")
    assert plane.settle()
    plane.hold_webhooks()
    plane.person_moves(stack.project, item["id"], "To Analyse")
    plane.person_moves(stack.project, item["id"], "STOP")
    plane.release_webhooks(order="reversed")
    assert plane.settle()
    until(
        lambda: all(o for _, o in stack.deliveries("plane")) and len(stack.deliveries("plane")) == 3
    )
    outcomes = [o for _, o in stack.deliveries("plane")]
    assert not any(o.startswith("started") for o in outcomes), outcomes
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        assert client.get("/api/v1/tasks").json()["tasks"] == []


def test_a_gitea_delivery_is_verified_and_stored_once(stack: Stack) -> None:
    body = json.dumps({"sha": "a" * 40, "context": "ci", "state": "failure"}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Gitea-Delivery": "g-1",
        "X-Gitea-Event": "status",
        "X-Gitea-Event-Type": "status",
    }
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        refused = client.post(
            "/webhooks/gitea",
            content=body,
            headers={**headers, "X-Gitea-Signature": signed("wrong", body)},
        )
        good = {**headers, "X-Gitea-Signature": signed(GITEA_SECRET, body)}
        first = client.post("/webhooks/gitea", content=body, headers=good)
        again = client.post("/webhooks/gitea", content=body, headers=good)
    assert refused.status_code == 401
    assert (first.json(), again.json()) == ({"stored": True}, {"stored": False})
    until(lambda: stack.deliveries("gitea") and stack.deliveries("gitea")[0][1])
    assert stack.deliveries("gitea")[0][1].startswith("ignored")
