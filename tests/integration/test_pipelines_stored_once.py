"""A task's pipeline is stored once for every task filed with its like, in pipelines, and read
back with the task exactly as it was filed: by the reads of one task (joined), by a list (each
distinct pipeline read once, not once a task), and across the migration that moved the copies
each task held into pipelines, both ways, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from orch.adapters.store import schema as t
from orch.adapters.store.revisions import alembic_config
from orch.adapters.store.sql import SqlStore, normalise_url
from orch.domain import pipeline as pl
from orch.domain.model import Ticket

FLOW = replace(pl.default_pipeline(), checkpoints=())
OTHER = replace(FLOW, stages=FLOW.stages[:2])
BEFORE = "0010"  # the revision whose tasks held their own pipeline


def canonical(value: Any) -> str:
    """JSON that tells apart what equality of dicts does not (1 from 1.0, True from 1)."""
    return json.dumps(value, sort_keys=True)


def file(store: SqlStore, pipeline: pl.Pipeline, body: dict[str, Any] | None = None) -> int:
    return store.file_and_create(
        "app", "APP", "t", "", pl.to_dict(pipeline) if body is None else body,
        pl.start(pipeline), "t",
    ).id  # fmt: skip


def pipeline_ids(store: SqlStore) -> dict[int, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(t.tasks.c.id, t.tasks.c.pipeline_id)).all())


def pipeline_rows(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(t.pipelines)).scalar_one())


def test_tasks_filed_with_one_pipeline_share_its_row_and_another_gets_its_own(
    sql_store: SqlStore,
) -> None:
    flow = pl.to_dict(FLOW)
    first, second = file(sql_store, FLOW), file(sql_store, FLOW)
    other = file(sql_store, OTHER)
    # the same pipeline with its keys in another order is the same pipeline
    reordered = file(sql_store, FLOW, dict(reversed(list(flow.items()))))
    ticket = Ticket(key="HAND-1", repo="app", title="t")
    by_hand = sql_store.create_task(ticket, "orch/HAND-1", flow, pl.start(FLOW), "t").id

    ids = pipeline_ids(sql_store)
    assert ids[first] == ids[second] == ids[reordered] == ids[by_hand]
    assert ids[other] != ids[first]
    assert pipeline_rows(sql_store) == 2
    for task_id in (first, second, reordered, by_hand):
        assert canonical(sql_store.get_task(task_id).pipeline) == canonical(flow)
    assert sql_store.get_task(other).pipeline == pl.to_dict(OTHER)
    found = sql_store.find_task("HAND-1")
    assert found is not None and found.pipeline == flow
    claim = sql_store.claim("host:1:1:w", 60.0, lambda _repo: 10)
    assert claim is not None and claim.task is not None
    assert claim.task.pipeline == sql_store.get_task(claim.task_id).pipeline


@pytest.mark.postgres
def test_filings_of_one_new_pipeline_at_once_all_commit_and_store_it_once(pg_empty: str) -> None:
    store = SqlStore(pg_empty)
    filers = 8
    barrier = threading.Barrier(filers)
    filed: list[int] = []
    errors: list[BaseException] = []

    def filer() -> None:
        barrier.wait()
        try:
            filed.append(file(store, OTHER))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=filer) for _ in range(filers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(filed) == filers
        assert len(set(pipeline_ids(store).values())) == 1
        assert pipeline_rows(store) == 1
    finally:
        store.close()


def test_a_list_reads_each_distinct_pipeline_once(sql_store: SqlStore) -> None:
    shapes = (FLOW, OTHER, replace(FLOW, max_attempts=7))
    filed = {file(sql_store, shapes[n % 3]): pl.to_dict(shapes[n % 3]) for n in range(12)}
    asked: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        asked.append((" ".join(statement.split()).lower(), parameters))

    sa.event.listen(sql_store.engine, "before_cursor_execute", seen)
    try:
        listed = sql_store.list_tasks()
        summary = sql_store.summary()
    finally:
        sa.event.remove(sql_store.engine, "before_cursor_execute", seen)

    assert {task.id: task.pipeline for task in listed} == filed
    assert summary.by_status == {"active": 12}
    reading_pipelines = [(s, p) for s, p in asked if "from pipelines" in s or "join pipelines" in s]
    # one statement, for the three pipelines: the tasks' own rows do not carry them
    [(statement, parameters)] = reading_pipelines
    assert statement.startswith("select pipelines.id, pipelines.body from pipelines where")
    assert len(parameters) == 3


# -- the migration -------------------------------------------------------------------------------

# what tasks held at the previous revision: shared, shared with the keys in another order, text
# that is not ASCII, numbers JSON tells apart, nothing at all
HELD: tuple[dict[str, Any], ...] = (
    pl.to_dict(FLOW),
    pl.to_dict(FLOW),
    dict(reversed(list(pl.to_dict(FLOW).items()))),
    {"stages": [{"stage": "analysis", "prompt": 'é ✓ "quoted"\n'}], "flag": True, "none": None},
    {"max_attempts": 1},
    {"max_attempts": 1.0},
    {},
)
DISTINCT = 5  # FLOW (three tasks), the text, 1, 1.0, {}


def hold_pipelines(conn: sa.Connection) -> None:
    """Tasks, each with a job and its first transition, as the previous revision held them."""
    tables = sa.MetaData()
    tasks, jobs, transitions = (
        sa.Table(name, tables, autoload_with=conn) for name in ("tasks", "jobs", "transitions")
    )
    for n, body in enumerate(HELD, start=1):
        task_id = conn.execute(
            sa.insert(tasks).values(
                key=f"OLD-{n}", repo="app", title="t", stage="analysis",
                status="active", version=1, branch=f"orch/OLD-{n}", pipeline=body,
                tokens_in=n, cost_usd=0.5, created_at=0.0, updated_at=0.0,
            ).returning(tasks.c.id)
        ).scalar_one()  # fmt: skip
        assert task_id == n  # the store is empty: HELD[n - 1] is task n
        conn.execute(
            sa.insert(jobs).values(
                task_id=task_id, repo="app", version=1, stage="analysis", state="queued",
                run_after=0.0, created_at=0.0, updated_at=0.0,
            )
        )  # fmt: skip
        conn.execute(
            sa.insert(transitions).values(
                task_id=task_id, version=1, from_stage="analysis", to_stage="analysis",
                from_status="active", to_status="active", actor="t", at=0.0,
            )
        )  # fmt: skip


def triggers(conn: sa.Connection) -> set[tuple[str, str]]:
    """The triggers on tasks, each with its definition."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'tasks'"
        )
    else:
        rows = conn.exec_driver_sql(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal"
        )
    return {(r[0], r[1]) for r in rows}


def tallies(conn: sa.Connection) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = conn.execute(sa.select(t.task_tallies).where(t.task_tallies.c.tasks != 0))
    return {(r.kind, r.name): tuple(r)[2:] for r in rows}


def held_then(conn: sa.Connection) -> dict[int, str]:
    rows = conn.exec_driver_sql("SELECT id, pipeline FROM tasks ORDER BY id")
    return {r[0]: canonical(json.loads(r[1]) if isinstance(r[1], str) else r[1]) for r in rows}


def migrate(conn: sa.Connection, revision: str, up: bool) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    (command.upgrade if up else command.downgrade)(cfg, revision)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store at the previous revision, holding HELD: a SQLite file, or the PostgreSQL
    database taken back there (and brought to the head again after)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("pg_empty")
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            if request.param == "sqlite":
                migrate(conn, BEFORE, up=True)
            else:
                migrate(conn, BEFORE, up=False)
            hold_pipelines(conn)
        yield url
    finally:
        with engine.begin() as conn:
            migrate(conn, "head", up=True)
        engine.dispose()


def test_a_store_from_the_previous_revision_keeps_each_tasks_pipeline_both_ways(
    old_store_url: str,
) -> None:
    store = SqlStore(old_store_url)
    try:
        with store.engine.connect() as conn:
            held, made, counted = held_then(conn), triggers(conn), tallies(conn)
        assert held == {n: canonical(body) for n, body in enumerate(HELD, start=1)}

        store.migrate()  # as orch does, with the rows that refer to tasks in place

        for task_id, body in held.items():
            assert canonical(store.get_task(task_id).pipeline) == body
        assert {task.id: canonical(task.pipeline) for task in store.list_tasks()} == held
        assert pipeline_rows(store) == DISTINCT
        ids = pipeline_ids(store)
        assert ids[1] == ids[2] == ids[3]
        assert ids[5] != ids[6]
        with store.engine.connect() as conn:
            assert triggers(conn) == made  # made again, exactly, after tasks was rebuilt
            assert tallies(conn) == counted
            assert list(compare_metadata(MigrationContext.configure(conn), t.metadata)) == []
        # kept by the triggers from here on; a pipeline the migration stored is found again
        new = file(store, FLOW)
        assert pipeline_ids(store)[new] == ids[1]
        with store.engine.connect() as conn:
            assert tallies(conn)[("status", "active")][0] == len(HELD) + 1

        # and back: each task holds its own copy again, the triggers as they were
        with store.engine.begin() as conn:
            conn.execute(sa.delete(t.transitions).where(t.transitions.c.task_id == new))
            conn.execute(sa.delete(t.jobs).where(t.jobs.c.task_id == new))
            conn.execute(sa.delete(t.tasks).where(t.tasks.c.id == new))
    finally:
        store.close()
    engine = sa.create_engine(store.url)  # foreign keys unenforced on SQLite, as migrating needs
    try:
        with engine.begin() as conn:
            migrate(conn, BEFORE, up=False)
        with engine.connect() as conn:
            assert held_then(conn) == held
            assert triggers(conn) == made
            assert tallies(conn) == counted
            assert not sa.inspect(conn).has_table("pipelines")
    finally:
        engine.dispose()
