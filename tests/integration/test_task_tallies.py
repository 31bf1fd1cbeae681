"""What /state shows of the tasks (how many at each stage and in each status, what each
repository's tasks spent) is read from tallies the database keeps in the transaction that changes
a task, not counted from every task: whatever changes tasks, and however, the tallies equal a
count made from scratch, on SQLite and PostgreSQL, and a store from before them starts with them
counted."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st

from orch.adapters.store import schema as t
from orch.adapters.store.revisions import alembic_config
from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.domain.ledger import Usage
from orch.domain.model import Ticket
from orch.domain.states import Stage, TaskStatus
from orch.ports import StateSummary, Store
from orch.testing import advance

FLOW = replace(pl.default_pipeline(), checkpoints=())
REPOS = ("app", "web", "docs")
KEYS = itertools.count(1)  # a new ticket key for every task any example makes


def create(store: Store, repo: str) -> int:
    key = f"T-{next(KEYS)}"
    ticket = Ticket(key=key, repo=repo, title=key, body="")
    return store.create_task(ticket, f"orch/{key}", pl.to_dict(FLOW), pl.start(FLOW), "t").id


def recount(store: SqlStore) -> StateSummary:
    """The tasks counted from scratch, by stage, by status and by repository."""
    tasks = t.tasks.c
    with store.engine.connect() as conn:
        by_stage = {
            r[0]: int(r[1])
            for r in conn.execute(sa.select(tasks.stage, sa.func.count()).group_by(tasks.stage))
        }
        by_status = {
            r[0]: int(r[1])
            for r in conn.execute(sa.select(tasks.status, sa.func.count()).group_by(tasks.status))
        }
        spend = [tasks.tokens_in, tasks.tokens_out, tasks.cache_read, tasks.cache_write]
        by_repo = {
            r[0]: Usage(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))
            for r in conn.execute(
                sa.select(
                    tasks.repo, *(sa.func.sum(c) for c in spend), sa.func.sum(tasks.cost_usd)
                ).group_by(tasks.repo)
            )
        }
    return StateSummary(
        by_stage=by_stage,
        by_status=by_status,
        running=[],
        recent=[],
        spent=sum(by_repo.values(), Usage()),
        spent_by_repo=by_repo,
    )


def assert_counted(store: SqlStore) -> None:
    shown, counted = store.summary(), recount(store)
    assert shown.by_stage == counted.by_stage
    assert shown.by_status == counted.by_status
    assert shown.spent_by_repo == counted.spent_by_repo
    assert shown.spent == counted.spent


# what may happen to a task, each as one statement (or the store's own write) the way any
# writer of tasks might make it: the tallies must follow whoever writes
CREATE = st.tuples(st.just("create"), st.sampled_from(REPOS))
MOVE = st.tuples(
    st.just("move"),
    st.integers(0, 50),
    st.sampled_from([s.value for s in Stage]),
    st.sampled_from([s.value for s in TaskStatus]),
)
# costs in 64ths of a dollar: binary fractions, so sums in any order are exact
SPEND = st.tuples(
    st.just("spend"),
    st.integers(0, 50),
    st.lists(st.integers(0, 10_000), min_size=4, max_size=4),
    st.integers(0, 6_400).map(lambda n: n / 64),
)
REHOME = st.tuples(st.just("rehome"), st.integers(0, 50), st.sampled_from(REPOS))
DELETE = st.tuples(st.just("delete"), st.integers(0, 50))
CHANGE = st.one_of(CREATE, MOVE, SPEND, REHOME, DELETE)


def change(store: SqlStore, made: list[int], step: tuple[Any, ...]) -> None:
    if step[0] == "create":
        made.append(create(store, step[1]))
        return
    if not made:
        return
    task_id = made[step[1] % len(made)]
    tasks = t.tasks
    with store.engine.begin() as conn:
        if step[0] == "move":
            conn.execute(
                sa.update(tasks)
                .where(tasks.c.id == task_id)
                .values(stage=step[2], status=step[3], version=tasks.c.version + 1)
            )
        elif step[0] == "spend":
            tokens_in, tokens_out, cache_read, cache_write = step[2]
            # the ledger's own statement, as a finished run's usage is written
            conn.execute(
                store.sql.account_task,
                {
                    "b_task": task_id,
                    "b_tokens_in": tokens_in,
                    "b_tokens_out": tokens_out,
                    "b_cache_read": cache_read,
                    "b_cache_write": cache_write,
                    "b_cost_usd": step[3],
                },
            )
        elif step[0] == "rehome":
            conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(repo=step[2]))
        else:
            for table in (t.transitions, t.jobs):
                conn.execute(sa.delete(table).where(table.c.task_id == task_id))
            conn.execute(sa.delete(tasks).where(tasks.c.id == task_id))
            made.remove(task_id)


def test_the_tallies_equal_a_count_from_scratch_whatever_changes_the_tasks(
    sql_store: SqlStore,
) -> None:
    @settings(max_examples=40, deadline=None)
    @given(st.lists(CHANGE, max_size=25))
    def changes(steps: list[tuple[Any, ...]]) -> None:
        # every example from no task and no tally, so a failure replays as it happened
        with sql_store.engine.begin() as conn:
            for table in (t.transitions, t.jobs, t.tasks, t.task_tallies):
                conn.execute(sa.delete(table))
        made: list[int] = []
        for step in steps:
            change(sql_store, made, step)
        assert_counted(sql_store)

    changes()


def test_state_reads_the_tallies_and_counts_no_task(sql_store: SqlStore) -> None:
    for repo in REPOS:
        create(sql_store, repo)
    asked: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        asked.append(" ".join(statement.split()).lower())

    sa.event.listen(sql_store.engine, "before_cursor_execute", seen)
    try:
        shown = sql_store.summary()
    finally:
        sa.event.remove(sql_store.engine, "before_cursor_execute", seen)
    assert shown.by_status == {"active": 3}
    assert any("from task_tallies" in s for s in asked)
    for statement in asked:
        assert "group by" not in statement, statement
        assert "count(" not in statement and "sum(" not in statement, statement


def test_every_store_shows_the_tasks_it_lists(store: Store) -> None:
    """The memory store counts its tasks, the SQL stores read their tallies: all show the same."""
    first, second, third = create(store, "app"), create(store, "app"), create(store, "web")
    work = store.claim("host:1:1:w", 60.0, lambda _repo: 1)
    assert work is not None and work.task_id == first
    run = store.start_run(work, "claude", 7, "/tmp/run.log")
    store.finish_run(work, run, 0, Usage(10, 5, 1, 2, 0.25))
    advance(store, work, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    stopped = store.claim("host:1:1:w", 60.0, lambda _repo: 1)
    assert stopped is not None and stopped.task_id == third
    advance(store, stopped, Stage.ANALYSIS, pl.on_stop(Stage.ANALYSIS, "ann", "no"), "ann")
    listed = store.list_tasks()
    assert {x.id for x in listed} == {first, second, third}

    shown = store.summary()
    assert shown.by_stage == dict(Counter(x.stage.value for x in listed))
    assert shown.by_status == dict(Counter(x.status.value for x in listed))
    assert shown.spent_by_repo == {"app": Usage(10, 5, 1, 2, 0.25), "web": Usage()}
    assert shown.spent == Usage(10, 5, 1, 2, 0.25)


def test_a_store_from_before_the_tallies_starts_with_its_tasks_counted(
    sql_store: SqlStore,
) -> None:
    cfg = alembic_config()
    with sql_store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    with sql_store.engine.begin() as conn:
        tasks_then = sa.Table("tasks", sa.MetaData(), autoload_with=conn)  # as 0009 has it
        for n, (repo, stage, status, cost) in enumerate(
            [
                ("app", "analysis", "active", 0.5),
                ("app", "done", "done", 1.25),
                ("web", "review", "waiting", 0.0),
                ("web", "done", "cancelled", 2.0),
            ],
            start=1,
        ):
            conn.execute(
                sa.insert(tasks_then).values(
                    key=f"OLD-{n}",
                    repo=repo,
                    title="t",
                    stage=stage,
                    status=status,
                    version=1,
                    branch=f"orch/OLD-{n}",
                    pipeline={},
                    tokens_in=n,
                    cost_usd=cost,
                    created_at=0.0,
                    updated_at=0.0,
                )
            )
    sql_store.migrate()

    shown = sql_store.summary()
    assert shown.by_status == {"active": 1, "done": 1, "waiting": 1, "cancelled": 1}
    assert shown.by_stage == {"analysis": 1, "done": 2, "review": 1}
    assert shown.spent_by_repo == {
        "app": Usage(tokens_in=3, cost_usd=1.75),
        "web": Usage(tokens_in=7, cost_usd=2.0),
    }
    # and kept from there on
    create(sql_store, "docs")
    assert_counted(sql_store)


@pytest.mark.postgres
def test_concurrent_moves_between_the_same_stages_all_commit_and_are_counted(
    pg_empty: str,
) -> None:
    """Moves one way and the other between two stages, at once: each takes from one tally and
    gives to the other, always locking them in one order, so none waits on another in a cycle
    (PostgreSQL would abort one as a deadlock)."""
    store = SqlStore(pg_empty)
    try:
        made = [create(store, "app") for _ in range(8)]
        barrier = threading.Barrier(len(made))
        errors: list[BaseException] = []

        def mover(task_id: int, forward: bool) -> None:
            there, back = ("review", "development") if forward else ("development", "review")
            barrier.wait()
            try:
                for n in range(30):
                    with store.engine.begin() as conn:
                        conn.execute(
                            sa.update(t.tasks)
                            .where(t.tasks.c.id == task_id)
                            .values(stage=there if n % 2 == 0 else back)
                        )
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [
            threading.Thread(target=mover, args=(task_id, i % 2 == 0))
            for i, task_id in enumerate(made)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert_counted(store)
    finally:
        store.close()
