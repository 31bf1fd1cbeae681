"""`orch demo --scenario plane-gitea` as a user runs it: a subprocess whose JSON summary says what
Plane, Gitea and Telegram (orch's fakes, over real HTTP) saw of the ticket's way to main."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import orch

pytestmark = pytest.mark.slow

ACTOR = "telegram:4242:ada"  # the configured Telegram user, as orch records an actor


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("plane-gitea")
    home = root / "home"
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}
    done = orch("demo", "--scenario", "plane-gitea", "--dir", str(root / "demo"), "--json", env=env)
    assert done.returncode == 0, done.stderr
    return home, json.loads(done.stdout)


@pytest.fixture(scope="module")
def report(run: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return run[1]["scenario"]


def test_the_demo_succeeds_and_leaves_the_users_data_directory_alone(
    run: tuple[Path, dict[str, Any]],
) -> None:
    home, summary = run
    assert (summary["ok"], summary["reason"]) == (True, "done")
    assert summary["scenario"]["problem"] == ""
    assert summary["scenario"]["task"]["status"] == "done"
    assert not (home / ".local" / "share" / "orch").exists()


def test_the_change_lands_through_one_merge_of_the_pull_request(report: dict[str, Any]) -> None:
    merge, pull = report["merge"], report["pull_request"]
    assert merge["succeeded"] == 1
    assert [e["state"] for e in merge["effects"]] == ["SUCCEEDED"]
    assert merge["merge_requests"] == [200]  # Gitea was asked to merge once, and did
    assert (pull["state"], pull["merged"]) == ("closed", True)
    assert pull["url"].endswith(f"/orch/sample/pulls/{pull['number']}")
    # fast-forward only: main holds exactly the commit orch merged
    assert pull["merge_commit"] == merge["merge_sha"] == pull["default_branch_head"]
    assert len(merge["merge_sha"]) == 40


def test_every_gate_verdict_is_a_successful_commit_status(report: dict[str, Any]) -> None:
    statuses = report["pull_request"]["statuses"]
    assert {"orch/spec", "orch/adr", "orch/tests", "orch/review", "orch/test-report"} <= set(
        statuses
    )
    assert set(statuses.values()) == {"success"}


def test_a_plane_webhook_starts_the_task_and_every_delivery_is_answered(
    report: dict[str, Any],
) -> None:
    deliveries = report["deliveries"]
    assert deliveries
    assert {d["http_status"] for d in deliveries} == {200}
    assert all(d["outcome"] for d in deliveries)  # each was worked, once
    assert len({d["id"] for d in deliveries}) == len(deliveries)
    assert [d["outcome"] for d in deliveries if d["outcome"].startswith("started")] == [
        "started DEMO-1 (task 1)"
    ]
    assert report["started_by"].startswith("plane:")
    assert report["started_by"] != "plane:poll"
    # the person's moves came from the web app; orch's own moves came back too, and did nothing
    assert any(d["field"] == "state_id" for d in deliveries)
    assert any(d["outcome"] == "ignored: orch's own change" for d in deliveries)


def test_the_plan_is_approved_with_the_telegram_button_by_the_configured_user(
    report: dict[str, Any],
) -> None:
    decisions = {d["checkpoint"]: d for d in report["decisions"]}
    assert decisions["approve-plan"] == {
        "kind": "approve",
        "checkpoint": "approve-plan",
        "actor": ACTOR,
    }
    assert decisions["confirm-deploy"]["actor"].startswith("plane:")
    telegram = report["telegram"]
    asked = [m for m in telegram["messages"] if "Approve" in m["buttons"]]
    assert len(asked) == 1
    assert asked[0]["buttons"] == ["Approve", "Reject", "STOP"]
    assert "approve-plan" in asked[0]["detail"]
    answer = telegram["press"]["answer"]
    assert "approve-plan approved" in answer
    assert ACTOR in answer
    assert any(m["buttons"] == ["Confirm deploy", "Reject", "STOP"] for m in telegram["messages"])
    assert any("is done" in m["detail"] for m in telegram["messages"])


def test_the_plane_item_ends_done_with_orchs_comments(report: dict[str, Any]) -> None:
    plane = report["plane"]
    assert plane["state"] == plane["done_state"] == "Done"
    comments = plane["comments"]
    assert comments
    assert len({c["external_id"] for c in comments}) == len(comments)  # each said once
    assert all("DEMO-1" in c["text"] for c in comments)
    assert comments[-1]["text"].endswith("Done")


def test_no_request_broke_the_providers_specifications(report: dict[str, Any]) -> None:
    assert report["violations"] == {"gitea": [], "plane": [], "telegram": []}


def test_the_task_has_one_pull_request(report: dict[str, Any]) -> None:
    assert [p["number"] for p in report["pull_requests"]] == [report["pull_request"]["number"]]


def test_the_merged_head_shows_its_checks(report: dict[str, Any]) -> None:
    head_statuses = report["pull_request"]["head_statuses"]
    assert {"orch/merge-candidate", "orch/integrity"} <= set(head_statuses)
    assert set(head_statuses.values()) == {"success"}
