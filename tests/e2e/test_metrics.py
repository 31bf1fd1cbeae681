"""`GET /metrics` on a running `orch serve`: the Prometheus text format, read from the store at
each scrape, behind the same tokens as the rest of the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_api_access import Site, client, serve
from .test_serve import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from serve(tmp_path, (("vic", "viewer"), ("ann", "operator")))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(viewer: httpx.Client) -> Samples:
    answer = viewer.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def task_at(operator: httpx.Client, key: str, checkpoint: str) -> dict:  # type: ignore[type-arg]
    def waiting() -> dict | None:  # type: ignore[type-arg]
        body = operator.get(f"/api/v1/tasks/{key}").json()
        ok = body["status"] == "waiting" and body["waiting_for"] == checkpoint
        return body if ok else None

    return wait_for(waiting, f"{key} waiting for {checkpoint}")  # type: ignore[no-any-return]


def test_metrics_follow_a_task_from_stage_to_stage(site: Site) -> None:
    with client(site, "vic") as viewer, client(site, "ann") as operator:
        before = scrape(viewer)
        assert sample(before, "orch_tasks", stage="analysis", status="active") == 0
        assert total(before, "orch_transitions_total") == 0
        assert sample(before, "orch_circuit_state", circuit="default", state="closed") == 1

        key = operator.post("/api/v1/tasks", json={"repo": "sample", "title": "Tidy"}).json()["key"]
        planned = task_at(operator, key, "approve-plan")
        at_plan = scrape(viewer)
        assert sample(at_plan, "orch_tasks", stage=planned["stage"], status="waiting") == 1
        assert sum(v for (n, _), v in at_plan.items() if n == "orch_tasks") == 1
        assert total(at_plan, "orch_transitions_total") == len(planned["history"])
        into_plan = {"from_stage": "analysis", "to_stage": planned["stage"], "to_status": "waiting"}
        assert sample(at_plan, "orch_transitions_total", **into_plan) == 1
        # analysis was left once, and its agent run ended by itself
        assert sample(at_plan, "orch_stage_duration_seconds_count", stage="analysis") == 1
        assert (
            sample(
                at_plan,
                "orch_agent_runs_total",
                stage="analysis",
                agent="default",
                outcome="exited",
            )
            == 1
        )
        assert (
            sample(
                at_plan, "orch_agent_run_duration_seconds_count", stage="analysis", agent="default"
            )
            == 1
        )
        assert sample(at_plan, "orch_queue_depth") == 0

        assert operator.post(f"/api/v1/tasks/{key}/approve").json()["recorded"] is True
        confirming = task_at(operator, key, "confirm-deploy")
        at_deploy = scrape(viewer)
        assert sample(at_deploy, "orch_tasks", stage=planned["stage"], status="waiting") == 0
        assert sample(at_deploy, "orch_tasks", stage=confirming["stage"], status="waiting") == 1
        assert total(at_deploy, "orch_transitions_total") == len(confirming["history"])
        assert total(at_deploy, "orch_transitions_total") > total(at_plan, "orch_transitions_total")
        assert sample(at_deploy, "orch_stage_duration_seconds_count", stage=planned["stage"]) == 1
        merged = sample(at_deploy, "orch_effects", kind="merge", state="SUCCEEDED")
        assert merged == len([e for e in confirming["effects"] if e["kind"] == "merge"])


def test_metrics_need_a_token_once_one_exists(site: Site) -> None:
    with client(site) as anonymous:
        refused = anonymous.get("/metrics")
        assert refused.status_code == 401
        assert "bearer token is required" in refused.json()["error"]
        forged = anonymous.get("/metrics", headers={"Authorization": "Bearer orch_guess"})
        assert forged.status_code == 401
    with client(site, "vic") as viewer:
        samples = scrape(viewer)
    # every family the scrape promises is there, with its HELP and TYPE, and parses
    names = {name for name, _ in samples}
    for expected in (
        "orch_tasks",
        "orch_jobs",
        "orch_queue_depth",
        "orch_queue_oldest_wait_seconds",
        "orch_agent_runs_reclaimed_total",
        "orch_lease_reclaims_total",
        "orch_fenced_writes_total",
        "orch_notifications",
        "orch_circuit_state",
        "orch_event_loop_lag_seconds_count",
    ):
        assert expected in names, expected
