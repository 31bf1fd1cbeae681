"""The task commands through a running `orch serve`: with ORCH_TOKEN set they go over the API
as the token's holder (whose name the server records on every decision), its refusals come back
as one `error:` line, and a server that is not there is named by its address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orch.demo import sample

from .conftest import one_error, orch, write_config
from .test_api_access import Site, serve
from .test_serve import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from serve(tmp_path, (("vic", "viewer"), ("ann", "operator")))


def as_holder(site: Site, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An orch command run by the holder of a token, with no settings file at all: the API is
    all it reaches."""
    return orch(*args, env={"ORCH_TOKEN": site.tokens[name], "ORCH_URL": site.url})


def api(site: Site) -> httpx.Client:
    return httpx.Client(
        base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {site.tokens['vic']}"}
    )


def test_an_operator_files_watches_and_approves_a_task_to_done_through_the_api(
    site: Site,
) -> None:
    filed = as_holder(site, "ann", "task", "add", "sample", "Add slugify", "--json")
    assert filed.returncode == 0, filed.stderr
    key = json.loads(filed.stdout)["key"]
    assert json.loads(filed.stdout)["history"][0]["actor"] == "ann"

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_TOKEN=site.tokens["vic"], ORCH_URL=site.url, PYTHONUNBUFFERED="1")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "orch.cli", "task", "watch", key.lower()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        with api(site) as client:

            def waiting_at(checkpoint: str):  # type: ignore[no-untyped-def]
                def check() -> bool:
                    body = client.get(f"/api/v1/tasks/{key}").json()
                    return body["status"] == "waiting" and body["waiting_for"] == checkpoint

                return check

            wait_for(waiting_at("approve-plan"), "the plan checkpoint", 60)
            approved = as_holder(site, "ann", "task", "approve", key.lower(), "--json")
            assert json.loads(approved.stdout) == {
                "key": key,
                "checkpoint": "approve-plan",
                "recorded": True,
            }
            wait_for(waiting_at("confirm-deploy"), "the deploy checkpoint", 60)
            again = as_holder(site, "ann", "task", "approve", key, "--comment", "ship it")
            assert again.stdout.strip() == f"approval of confirm-deploy recorded for {key}"
            out, err = watcher.communicate(timeout=120)
            task = client.get(f"/api/v1/tasks/{key}").json()
            listed = client.get("/api/v1/tasks").json()
    finally:
        watcher.kill()
        watcher.wait()

    assert watcher.returncode == 0, err
    assert out.startswith(f"watching {key}: Add slugify")
    for seen in ("analysis started", "approve-plan", "development started", ": done"):
        assert seen in out
    approvers = [h["actor"] for h in task["history"] if "approved by" in h["reason"]]
    assert approvers == ["ann", "ann"]
    # what the CLI prints with --json is what the API answers
    assert json.loads(as_holder(site, "vic", "task", "show", key, "--json").stdout) == task
    assert json.loads(as_holder(site, "vic", "task", "list", "--json").stdout) == listed
    done_already = one_error(as_holder(site, "ann", "task", "approve", key))
    assert f"{key} is not waiting at a checkpoint" in done_already


def test_the_apis_refusals_are_one_error_line_and_change_nothing(site: Site) -> None:
    key = json.loads(as_holder(site, "ann", "task", "add", "sample", "x", "--json").stdout)["key"]
    assert one_error(as_holder(site, "vic", "task", "stop", key)) == (
        "error: vic is a viewer; this needs operator"
    )
    with api(site) as client:
        assert client.get(f"/api/v1/tasks/{key}").json()["cancel"] is None
    listed = as_holder(site, "vic", "task", "list")
    assert listed.returncode == 0 and key in listed.stdout
    assert one_error(as_holder(site, "vic", "task", "show", "nope-9")) == (
        "error: no task for ticket nope-9"
    )
    refused = one_error(as_holder(site, "ann", "task", "retry", key))  # 409: it is not parked
    assert refused.endswith("only a task that needs an operator is retried")
    revoked = orch("task", "list", env={"ORCH_TOKEN": "orch_guess", "ORCH_URL": site.url})
    assert one_error(revoked) == (
        f"error: unknown or revoked token (the ORCH_TOKEN given to {site.url})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_is_not_running_is_named_by_its_address(tmp_path: Path) -> None:
    port = free_port()
    given = orch("task", "list", env={"ORCH_TOKEN": "t", "ORCH_URL": f"http://127.0.0.1:{port}"})
    assert one_error(given).startswith(f"error: no orch serve answers at http://127.0.0.1:{port}")

    # no ORCH_URL: where the settings say orch serve listens, on this machine's loopback
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote, api={"host": "0.0.0.0", "port": port})
    by_settings = orch("-c", str(config), "task", "show", "SAM-1", env={"ORCH_TOKEN": "t"})
    assert one_error(by_settings).startswith(
        f"error: no orch serve answers at http://127.0.0.1:{port}"
    )
    assert not (tmp_path / "orch.db").exists()  # the store was not touched


def test_a_cancelled_ticket_is_started_again_through_the_api_once(site: Site) -> None:
    filed = as_holder(site, "ann", "task", "add", "sample", "Try again", "--json")
    key = json.loads(filed.stdout)["key"]
    assert as_holder(site, "ann", "task", "stop", key).returncode == 0
    with api(site) as client:
        wait_for(lambda: client.get(f"/api/v1/tasks/{key}").json()["status"] == "cancelled", key)

    started = as_holder(site, "ann", "task", "start", key.lower(), "--json")
    again = as_holder(site, "ann", "task", "start", key)
    refused = as_holder(site, "vic", "task", "start", key)

    assert started.returncode == 0, started.stderr
    task = json.loads(started.stdout)
    assert (task["key"], task["status"], task["version"]) == (key, "active", 1)
    assert task["history"][0]["actor"] == "ann"
    assert "already has a task that is not cancelled" in one_error(again)
    assert "viewer" in one_error(refused)
