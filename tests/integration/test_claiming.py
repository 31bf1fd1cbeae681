"""Claiming is driven by what the store commits, here or in another process: an idle orch writes
nothing, and work or a STOP written elsewhere reaches this process's claimer and running jobs by
a wake-up, with no poll to wait for."""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from orch.adapters.agents.scripted import ScriptedAgent
from orch.adapters.store.sql import SqlStore, sqlite_path
from orch.domain.access import Role
from orch.domain.states import Stage, TaskStatus
from orch.services.intake import Intake
from orch.testing import Rig, rig

T = TypeVar("T")
NEVER_S = 3600.0  # a poll or heartbeat this slow never happens within a test
WAIT_S = 60.0  # how long an outcome may take before the test gives up on it

WRITES = ("insert", "update", "delete", "notify", "begin immediate")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/orch.db"
    return str(request.getfixturevalue("pg_empty"))


@pytest.fixture
def stores(url: str) -> Iterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one database, as two orch processes hold it."""
    here, there = SqlStore(url), SqlStore(url)
    here.migrate()
    try:
        yield here, there
    finally:
        here.close()
        there.close()


def until(found: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"{what}: not within {WAIT_S:g}s")


def statements(store: SqlStore) -> list[str]:
    """Every statement `store` sends from now on, lower-cased."""
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.strip().lower())

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    return sent


def hearing_ready(here: SqlStore, there: SqlStore) -> None:
    """Write from `there` until `here` hears it: its hearing thread is listening from then."""
    names = (f"warm-{i}" for i in itertools.count())
    start = here.changes.count
    while here.changes.wait(start, timeout_s=0.2) == start:
        name = next(names)
        there.add_token(name, Role.VIEWER, name)


@contextlib.contextmanager
def hearing_only(here: SqlStore, there: SqlStore) -> Iterator[tuple[Rig, Intake]]:
    """A dispatcher on `here` that never polls nor renews (its agent hangs), listening; and an
    intake on `there`, another process's: only a wake-up carries what that one writes."""
    hang = ScriptedAgent(playbook={"stages": {"analysis": {"mode": "hang"}}})
    never = {"heartbeat_s": NEVER_S, "poll_interval_s": NEVER_S, "sweep_interval_s": NEVER_S}
    r = rig({"default": hang}, store=here, kill_grace_s=0.5, **never)
    r.dispatcher.start()
    try:
        hearing_ready(here, there)
        yield r, Intake(there, r.repos, lambda _repo: r.pipeline)
    finally:
        r.dispatcher.stop()
        r.close()


def test_an_idle_orch_looks_for_work_and_writes_nothing(
    stores: tuple[SqlStore, SqlStore], tmp_path: Path
) -> None:
    here, _ = stores
    r = rig({"default": ScriptedAgent()}, store=here, poll_interval_s=0.01, sweep_interval_s=0.01)
    task = r.intake.file("app", "Add a greeting")
    r.dispatcher.start()
    try:
        until(
            lambda: r.store.get_task(task.id).status == TaskStatus.WAITING,
            "the task reached its first checkpoint",
        )
        time.sleep(0.5)  # its last writes are over
        path = sqlite_path(here.url)
        outside = sqlite3.connect(path) if path else None
        version = outside.execute("PRAGMA data_version").fetchone() if outside else None
        sent = statements(here)
        time.sleep(1.0)  # a hundred polls and sweeps
        looked = list(sent)
        after = outside.execute("PRAGMA data_version").fetchone() if outside else None
    finally:
        r.dispatcher.stop()
        r.close()

    assert sum(s.startswith("select") for s in looked) >= 20
    assert [s for s in looked if s.startswith(WRITES) or "for update" in s] == []
    assert after == version  # SQLite's own word: no connection committed a write


def test_work_filed_by_another_process_is_claimed_without_polling(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    here, there = stores
    with hearing_only(here, there) as (_, elsewhere):
        task = elsewhere.file("app", "Add a greeting")
        [run] = until(lambda: here.runs(task.id), "the job filed elsewhere started its agent")

    assert run.stage == Stage.ANALYSIS


def test_a_stop_written_by_another_process_reaches_the_running_job_without_polling(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    here, there = stores
    with hearing_only(here, there) as (r, elsewhere):
        task = r.intake.file("app", "Add a greeting")
        [run] = until(lambda: [x for x in here.runs(task.id) if x.pid], "the agent started")
        _, recorded = elsewhere.stop(task.key, "ann", "changed our minds")
        final = until(
            lambda: next(
                (t for t in [here.get_task(task.id)] if t.status == TaskStatus.CANCELLED), None
            ),
            "the STOP was applied",
        )

    assert recorded
    assert final.stage == Stage.CANCELLED
    assert "changed our minds" in here.transitions(task.id)[-1].reason
    assert run.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(run.pid, 0)


def test_only_a_change_heard_from_another_process_has_the_stops_of_running_jobs_read(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    """A STOP asked in this process reaches its job directly (Engine.stop_asked): this
    process's own commits send no read of the STOPs asked for the jobs it runs."""
    here, there = stores
    with hearing_only(here, there) as (r, _):
        task = r.intake.file("app", "Add a greeting")
        until(lambda: [x for x in here.runs(task.id) if x.pid], "the agent started")
        sent = statements(here)

        def stop_reads() -> list[str]:
            return [s for s in sent if "cancel_requested_at is not null" in s and " in (" in s]

        for i in range(5):  # its one slot is busy: these wait, and only commit here
            r.intake.file("app", f"Another ticket {i}")
        time.sleep(0.5)
        after_own = stop_reads()
        there.add_token("elsewhere", Role.VIEWER, "elsewhere")
        heard = until(stop_reads, "a change heard from another process had the STOPs read")

    assert after_own == []
    assert heard


def test_a_job_the_sweep_takes_back_is_claimed_without_waiting_for_a_poll(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    """A worker elsewhere died holding a job: once its lease expires, the sweep here gives the
    job back and the claimer hears of it from the sweep itself, polls or not."""
    here, there = stores
    r = rig(
        {"default": ScriptedAgent()},
        store=here,
        heartbeat_s=NEVER_S,
        poll_interval_s=NEVER_S,
        sweep_interval_s=0.05,
    )
    try:
        task = Intake(there, r.repos, lambda _repo: r.pipeline).file("app", "Add a greeting")
        held = there.claim("elsewhere:1:-:dead", 0.2, lambda _repo: 1)  # and never renewed
        assert held is not None and held.task_id == task.id
        r.dispatcher.start()
        [run] = until(lambda: here.runs(task.id), "the job given back started its agent")
    finally:
        r.dispatcher.stop()
        r.close()
    assert run.stage == Stage.ANALYSIS
