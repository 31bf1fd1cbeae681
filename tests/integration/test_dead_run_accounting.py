"""What the runs of dead workers spent is read back from their logs and written in one
transaction, however many there are: a sweep that finds fifty writes once, not fifty times."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orch.adapters.agents.claude_code import ClaudeCodeAgent
from orch.adapters.store.sql import SqlStore
from orch.domain.ledger import Figure, Prices, Usage, UsageFrom
from orch.testing import InstantAgent, MemoryProcessTable, Rig, rig

DEAD = "gone:1:x"
LIVE = "live:2:y"
WRITES = ("INSERT", "UPDATE", "DELETE")


def claude_log(input_tokens: int, output_tokens: int) -> str:
    """A log of one model message, as the claude agent writes it."""
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    events = [
        {"type": "system", "subtype": "init", "session_id": "s-1"},
        {
            "type": "stream_event",
            "api_message_id": "m1",
            "event": {"type": "message_delta", "usage": usage},
        },
    ]
    return "".join(json.dumps(e) + "\n" for e in events)


class WriteTransactions:
    """The transactions committed on an engine that wrote something, each as its statements."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.committed: list[list[str]] = []
        self._open: dict[int, list[str]] = {}

    def __enter__(self) -> WriteTransactions:
        sa.event.listen(self.engine, "before_cursor_execute", self._executed)
        sa.event.listen(self.engine, "commit", self._commit)
        sa.event.listen(self.engine, "rollback", self._rollback)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._executed)
        sa.event.remove(self.engine, "commit", self._commit)
        sa.event.remove(self.engine, "rollback", self._rollback)

    def _executed(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self._open.setdefault(id(conn), []).append(" ".join(statement.split()))

    def _commit(self, conn: Any) -> None:
        statements = self._open.pop(id(conn), [])
        if any(s.upper().startswith(WRITES) for s in statements):
            self.committed.append(statements)

    def _rollback(self, conn: Any) -> None:
        self._open.pop(id(conn), None)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Rig, Path]]:
    if request.param == "sqlite":
        store = SqlStore(f"sqlite:///{tmp_path / 'orch.db'}")
    else:
        store = SqlStore(request.getfixturevalue("pg_empty"))
    store.migrate()
    claude = ClaudeCodeAgent(
        "claude",
        command="/nonexistent/claude",
        prices=Prices(input=3.0, output=15.0),
        environ={},
        euid=lambda: 1000,
    )
    processes = MemoryProcessTable()
    r = rig({"default": InstantAgent(), "claude": claude}, store=store, processes=processes)
    try:
        yield r, tmp_path
    finally:
        r.close()


def test_the_runs_of_dead_workers_are_accounted_in_one_transaction(
    world: tuple[Rig, Path],
) -> None:
    r, logs = world
    store = r.store
    assert isinstance(store, SqlStore)
    dead_runs: dict[int, int] = {}  # run id -> the task it spent for
    for n in range(1, 6):
        task = r.intake.file("app", f"ticket {n}", "")
        held = store.claim(DEAD, 60.0, lambda _repo: 10)
        assert held is not None and held.task_id == task.id
        log = logs / f"run-{n}.log"
        log.write_text(claude_log(100 * n, 10 * n))
        dead_runs[store.start_run(held, "claude", 4000 + n, str(log))] = task.id
    # a live worker's run is left to it
    live_task = r.intake.file("app", "still running", "")
    alive = store.claim(LIVE, 60.0, lambda _repo: 10)
    assert alive is not None and alive.task_id == live_task.id
    live_run = store.start_run(alive, "claude", 4999, str(logs / "live.log"))
    assert isinstance(r.processes, MemoryProcessTable)
    r.processes.dead.add(DEAD)

    with WriteTransactions(store.engine) as writes:
        accounted = r.engine.account_dead_runs(r.processes.is_dead)

    assert accounted == len(dead_runs)
    [written] = writes.committed
    counted = [s for s in written if s.startswith("UPDATE runs SET") and "accounted_at" in s]
    assert len(counted) == len(dead_runs)
    for n, (run_id, task_id) in enumerate(sorted(dead_runs.items()), start=1):
        [run] = [x for x in store.runs(task_id) if x.id == run_id]
        assert (run.tokens_in, run.tokens_out) == (100 * n, 10 * n)
        assert run.accounted_at is not None
        spent = store.get_task(task_id).spent
        assert (spent.tokens_in, spent.tokens_out) == (100 * n, 10 * n)
        assert spent.cost_usd == pytest.approx((100 * n * 3.0 + 10 * n * 15.0) / 1e6)
    assert [x.id for x in store.unaccounted_runs()] == [live_run]

    # counted once: the next sweep finds nothing of theirs, and writes nothing
    with WriteTransactions(store.engine) as again:
        assert r.engine.account_dead_runs(r.processes.is_dead) == 0
    assert again.committed == []


def test_a_dead_run_whose_log_says_nothing_is_counted_from_what_it_noted_as_it_ran(
    world: tuple[Rig, Path],
) -> None:
    r, logs = world
    task = r.intake.file("app", "a ticket", "")
    held = r.store.claim(DEAD, 60.0, lambda _repo: 10)
    assert held is not None
    run_id = r.store.start_run(held, "claude", 4001, str(logs / "never-written.log"))
    r.store.note_spending(run_id, Usage(700, 70, 0, 0, 0.42))
    assert isinstance(r.processes, MemoryProcessTable)
    r.processes.dead.add(DEAD)

    assert r.engine.account_dead_runs(r.processes.is_dead) == 1

    [run] = r.store.runs(task.id)
    assert run.usage == Usage(700, 70, 0, 0, 0.42)
    assert run.usage_from == UsageFrom(Figure.ESTIMATED, Figure.ESTIMATED)
    assert r.store.get_task(task.id).spent == Usage(700, 70, 0, 0, 0.42)
