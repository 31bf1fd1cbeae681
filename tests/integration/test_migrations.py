"""The store's migrations: a store made by an earlier orch is brought to the current schema,
keeping its data, and the migrated schema is exactly the one the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from orch.adapters.store import schema
from orch.adapters.store.revisions import alembic_config
from orch.adapters.store.sql import SqlStore
from orch.domain.ledger import Usage
from orch.domain.states import EffectState, RunOutcome


def upgrade(engine: sa.Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), schema.metadata))


def test_a_store_from_before_the_ledger_keeps_its_runs_and_gains_the_budget_outcome(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tasks (id, key, repo, title, stage, status, version, branch,"
                " pipeline, cost_usd, tokens_in, tokens_out, created_at, updated_at) VALUES"
                " (1, 'APP-1', 'app', 't', 'analysis', 'active', 1, 'orch/APP-1', '{}',"
                " 0.5, 10, 4, 0, 0)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, task_id, repo, version, stage, state, attempt,"
                " lease_token, run_after, created_at, updated_at)"
                " VALUES (1, 1, 'app', 1, 'analysis', 'queued', 0, 0, 0, 0, 0)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO runs (task_id, job_id, stage, attempt, agent, started_at,"
                " ended_at, outcome, tokens_in, tokens_out, cost_usd) VALUES"
                " (1, 1, 'analysis', 1, 'scripted', 1, 2, 'exited', 10, 4, 0.5)"
            )
        )
    engine.dispose()

    store = SqlStore(url)
    try:
        store.migrate()
        [run] = store.runs(1)
        assert run.usage == Usage(10, 4, 0, 0, 0.5)
        assert run.outcome == RunOutcome.EXITED
        task = store.get_task(1)
        assert task.spent == Usage(10, 4, 0, 0, 0.5)
        assert task.budgets == {}
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE runs SET outcome = 'budget'"))
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(sa.text("UPDATE runs SET outcome = 'bogus'"))
        assert differences(store.engine) == []
    finally:
        store.close()


@pytest.mark.postgres
def test_the_migrated_postgresql_schema_is_the_declared_one(pg_migrated: str) -> None:
    store = SqlStore(pg_migrated)
    try:
        assert differences(store.engine) == []
    finally:
        store.close()


def test_deploys_an_earlier_orch_left_begun_twice_migrate_to_one_in_flight(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tasks (id, key, repo, title, stage, status, version, branch,"
                " pipeline, cost_usd, tokens_in, tokens_out, created_at, updated_at) VALUES"
                " (1, 'APP-1', 'app', 't', 'deploy', 'active', 1, 'orch/APP-1', '{}',"
                " 0, 0, 0, 0, 0)"
            )
        )
        for key in ("d-old", "d-new"):
            conn.execute(
                sa.text(
                    "INSERT INTO effects (key, task_id, repo, kind, state, precondition, result,"
                    " lease_token, created_at, updated_at) VALUES"
                    f" ('{key}', 1, 'app', 'deploy:production', 'INITIATED', 'sha', '{{}}',"
                    " 1, 0, 0)"
                )
            )
    engine.dispose()

    store = SqlStore(url)
    try:
        store.migrate()
        old, new = store.get_effect("d-old"), store.get_effect("d-new")
        assert old is not None and new is not None
        assert (old.state, new.state) == (EffectState.UNKNOWN, EffectState.INITIATED)
        assert differences(store.engine) == []
    finally:
        store.close()


def test_a_task_in_flight_keeps_the_working_time_it_had_before_the_slot_clock(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tasks (id, key, repo, title, stage, status, version, branch,"
                " pipeline, slot, cost_usd, tokens_in, tokens_out, created_at, updated_at) VALUES"
                " (1, 'APP-1', 'app', 't', 'development', 'active', 4, 'orch/APP-1', '{}', 0,"
                " 0, 0, 0, 100, 400)"
            )
        )
        # active 100..150, waiting 150..350 (not work), active again from 350, moved at 400
        for version, status, at in (
            (1, "active", 100),
            (2, "waiting", 150),
            (3, "active", 350),
            (4, "active", 400),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO transitions (task_id, version, from_stage, to_stage,"
                    " from_status, to_status, actor, reason, at) VALUES"
                    f" (1, {version}, 'development', 'development', 'active', '{status}',"
                    f" 't', '', {at})"
                )
            )
    engine.dispose()

    store = SqlStore(url)
    try:
        store.migrate()
        task = store.get_task(1)
        assert (task.worked_s, task.slot_since) == (100.0, 400.0)
        assert task.worked(460.0) == 160.0
        assert differences(store.engine) == []
    finally:
        store.close()
