"""The lookups the sweep and the API make every time they run read through an index, whatever
else the store holds: the plans SQLite and PostgreSQL make for them, over a store of thousands of
finished tasks with a few live ones among them, name the index meant for each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from orch.adapters.store import schema as t
from orch.adapters.store.sql import SqlStore
from orch.domain.ledger import Usage

FINISHED = 3000  # tasks that ended long ago: what a lookup must not read


@dataclass
class Asked:
    """The statements a store sent, with their parameters."""

    statements: list[tuple[str, Any]] = field(default_factory=list)

    def __call__(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))


@pytest.fixture
def store(sql_store: SqlStore) -> SqlStore:
    """A store of many finished tasks, each with its job, run and merge, and one of each live
    thing a lookup looks for."""
    fill(sql_store)
    return sql_store


def fill(store: SqlStore) -> None:
    now = store.now()
    tasks, jobs, runs, effects = [], [], [], []
    for n in range(1, FINISHED + 1):
        # a third of them were stopped: their STOP's time stays on them
        cancelled = n % 3 == 0
        tasks.append(
            task_row(n, "cancelled" if cancelled else "done", now - 9000 if cancelled else None)
        )
        jobs.append(job_row(n, n, "cancelled" if cancelled else "succeeded", None))
        runs.append(run_row(n, n, now - 8000, accounted=True))
        effects.append(effect_row(n, n, "SUCCEEDED"))
    live = FINISHED + 1
    # the live task: a STOP waits on it, its job runs under a lease that expired, its run is
    # open and not in the ledger, its merge's outcome is unknown
    tasks.append(task_row(live, "active", now - 9000))
    jobs.append(job_row(live, live, "running", now - 60))
    runs.append(run_row(live, live, None, accounted=False))
    effects.append(effect_row(live, live, "UNKNOWN"))
    with store.engine.begin() as conn:
        filed_with = conn.execute(
            sa.insert(t.pipelines)
            .values(digest=t.pipeline_digest({}), body={})
            .returning(t.pipelines.c.id)
        ).scalar_one()
        for row in tasks:
            row["pipeline_id"] = filed_with
        for table, rows in ((t.tasks, tasks), (t.jobs, jobs), (t.runs, runs), (t.effects, effects)):
            conn.execute(sa.insert(table), rows)
        if store.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE")


def task_row(n: int, status: str, cancel_requested_at: float | None) -> dict[str, Any]:
    return {
        "id": n,
        "key": f"APP-{n}",
        "repo": "app",
        "title": "t",
        "stage": "done" if status == "done" else "development",
        "status": status,
        "version": 1,
        "branch": f"orch/APP-{n}",
        "cancel_requested_at": cancel_requested_at,
        "created_at": 0.0,
        "updated_at": 0.0,
    }


def job_row(n: int, task_id: int, state: str, expires_at: float | None) -> dict[str, Any]:
    return {
        "id": n,
        "task_id": task_id,
        "repo": "app",
        "version": 1,
        "stage": "development",
        "state": state,
        "attempt": 1,
        "lease_token": 1,
        "lease_owner": "host:1:1:gone" if state == "running" else None,
        "lease_expires_at": expires_at,
        "run_after": 0.0,
        "created_at": 0.0,
        "updated_at": 0.0,
    }


def run_row(n: int, job_id: int, ended_at: float | None, accounted: bool) -> dict[str, Any]:
    return {
        "id": n,
        "task_id": job_id,
        "job_id": job_id,
        "stage": "development",
        "attempt": 1,
        "agent": "claude",
        "started_at": 0.0,
        "ended_at": ended_at,
        "accounted_at": ended_at if accounted else None,
        "owner": "host:1:1:gone",
    }


def effect_row(n: int, task_id: int, state: str) -> dict[str, Any]:
    return {
        "id": n,
        "key": f"APP-{n}:deploy:merge",
        "task_id": task_id,
        "repo": f"repo-{n}",
        "kind": "merge",
        "state": state,
        "result": {},
        "lease_token": 1,
        "created_at": 0.0,
        "updated_at": 0.0,
    }


def sent(store: SqlStore, call: Callable[[], object], wanted: Callable[[str], bool]) -> list[Any]:
    """The statements `call` sends that `wanted` picks, with their parameters."""
    asked = Asked()
    sa.event.listen(store.engine, "before_cursor_execute", asked)
    try:
        call()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", asked)
    picked = [(s, p) for s, p in asked.statements if wanted(" ".join(s.split()))]
    assert picked, "the call sent none of the statements looked for"
    return picked


def plan(store: SqlStore, statement: str, parameters: Any) -> str:
    """The database's plan for the statement, as one line of text."""
    explain = "EXPLAIN QUERY PLAN" if store.dialect == "sqlite" else "EXPLAIN"
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"{explain} {statement}", parameters).all()
    return " | ".join(str(row[-1]).strip() for row in rows)


def assert_read_through(store: SqlStore, index: str, statements: list[Any]) -> None:
    for statement, parameters in statements:
        text = plan(store, statement, parameters)
        assert index in text, text


def test_a_task_is_found_by_its_key_through_its_index(store: SqlStore) -> None:
    statements = sent(
        store,
        lambda: store.find_task("APP-7"),
        lambda s: s.startswith("SELECT") and "FROM tasks" in s,
    )
    assert_read_through(store, "ix_tasks_key", statements)
    found = store.find_task("APP-7")
    assert found is not None and found.id == 7


def test_the_stops_still_to_apply_are_found_through_their_index(store: SqlStore) -> None:
    statements = sent(
        store,
        lambda: store.overdue_cancels(60.0),
        lambda s: s.startswith("SELECT") and "cancel_requested_at" in s,
    )
    assert_read_through(store, "ix_tasks_cancel_pending", statements)
    assert [o.key for o in store.overdue_cancels(60.0)] == [f"APP-{FINISHED + 1}"]


def test_the_runs_not_in_the_ledger_are_found_through_their_index(store: SqlStore) -> None:
    statements = sent(
        store,
        store.unaccounted_runs,
        lambda s: s.startswith("SELECT") and "accounted_at IS NULL" in s,
    )
    assert_read_through(store, "ix_runs_unaccounted", statements)
    assert [r.id for r in store.unaccounted_runs()] == [FINISHED + 1]


def test_what_the_runs_in_flight_retry_is_read_through_the_open_runs_index(
    store: SqlStore,
) -> None:
    store.note_spending(FINISHED + 1, Usage(100, 10), "the provider failed: HTTP 529")
    statements = sent(
        store,
        store.retrying_runs,
        lambda s: s.startswith("SELECT") and "retrying" in s,
    )
    assert_read_through(store, "ix_runs_open", statements)
    assert store.retrying_runs() == {FINISHED + 1: "the provider failed: HTTP 529"}


def test_the_merges_left_unsettled_are_found_through_their_index(store: SqlStore) -> None:
    statements = sent(
        store,
        store.unsettled_merges,
        lambda s: s.startswith("SELECT") and "FROM effects" in s,
    )
    assert_read_through(store, "uq_effects_merge_in_flight", statements)


def test_the_sweep_finds_expired_leases_and_their_open_runs_through_their_indexes(
    store: SqlStore,
) -> None:
    asked = Asked()
    sa.event.listen(store.engine, "before_cursor_execute", asked)
    try:
        swept = store.sweep(max_attempts=3)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", asked)
    assert swept.requeued == 1

    def picked(wanted: Callable[[str], bool]) -> list[Any]:
        found = [(s, p) for s, p in asked.statements if wanted(" ".join(s.split()))]
        assert found, "the sweep sent none of the statements looked for"
        return found

    expired = picked(lambda s: s.startswith("SELECT") and "lease_expires_at <" in s)
    assert_read_through(store, "ix_jobs_lease_expiry", expired)
    closed = picked(lambda s: s.startswith("UPDATE runs") and "ended_at IS NULL" in s)
    assert_read_through(store, "ix_runs_open", closed)
