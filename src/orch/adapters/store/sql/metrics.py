"""What `GET /metrics` reads, in the SQL store: aggregates computed by the database in one read
transaction, so a scrape costs a handful of GROUP BYs however long the history grows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import SqlBase
from orch.domain.ledger import Usage
from orch.domain.metrics import (
    RECLAIMED_RUN_DETAIL,
    RUN_BUCKETS_S,
    RUNNING,
    STAGE_BUCKETS_S,
    UNRECORDED,
    Histogram,
    MetricsSnapshot,
)
from orch.domain.states import JobState, RunOutcome


class MetricsRecords(SqlBase):
    def metrics(self) -> MetricsSnapshot:
        def fn(c: Connection) -> MetricsSnapshot:
            now = self._db_now(c)
            depth, oldest = _queue(c, now)
            return MetricsSnapshot(
                at=now,
                tasks=_counts(c, t.tasks.c.stage, t.tasks.c.status),
                transitions=_counts(
                    c,
                    t.transitions.c.from_stage,
                    t.transitions.c.to_stage,
                    t.transitions.c.to_status,
                ),
                stage_seconds=_stage_seconds(c),
                run_seconds=_run_seconds(c),
                runs=_runs(c),
                usage=_usage(c),
                jobs=_counts(c, t.jobs.c.state),
                queue_depth=depth,
                oldest_wait_s=oldest,
                reclaimed_runs=_reclaimed(c),
                effects=_counts(c, t.effects.c.kind, t.effects.c.state),
                counters={r.name: int(r.value) for r in c.execute(sa.select(t.counters))},
            )

        snapshot: MetricsSnapshot = self._read(fn)
        return snapshot


def _counts(c: Connection, *columns: Any) -> Any:
    """COUNT(*) grouped by `columns`: a key of one column is that column's value, else a tuple."""
    rows = c.execute(sa.select(*columns, sa.func.count()).group_by(*columns)).all()
    if len(columns) == 1:
        return {r[0]: int(r[1]) for r in rows}
    return {tuple(r[:-1]): int(r[-1]) for r in rows}


def _buckets(duration: Any, bounds: Sequence[float]) -> list[Any]:
    """COUNT(*), SUM(duration) and a SUM(CASE WHEN duration <= bound) for each bound."""
    return [
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(duration), 0.0),
        *(sa.func.sum(sa.case((duration <= bound, 1), else_=0)) for bound in bounds),
    ]


def _histogram(row: Sequence[Any], start: int, bounds: Sequence[float]) -> Histogram:
    count, total, *cumulative = row[start:]
    return Histogram(tuple(bounds), tuple(int(n or 0) for n in cumulative), int(count), total)


def _stage_seconds(c: Connection) -> dict[str, Any]:
    """A stage is left by a transition to another stage; it was entered by the task's previous
    such transition, or when the task was made. Writes that keep the stage (a wait for a person,
    a retry) are part of the stage's time, so they are left out before the window is taken."""
    tr = t.transitions
    entered = sa.func.lag(tr.c.at).over(partition_by=tr.c.task_id, order_by=tr.c.version)
    visits = (
        sa.select(
            tr.c.from_stage.label("stage"),
            (tr.c.at - sa.func.coalesce(entered, t.tasks.c.created_at)).label("duration"),
        )
        .join(t.tasks, t.tasks.c.id == tr.c.task_id)
        .where(tr.c.from_stage != tr.c.to_stage)
        .subquery()
    )
    rows = c.execute(
        sa.select(visits.c.stage, *_buckets(visits.c.duration, STAGE_BUCKETS_S)).group_by(
            visits.c.stage
        )
    ).all()
    return {r[0]: _histogram(r, 1, STAGE_BUCKETS_S) for r in rows}


def _run_seconds(c: Connection) -> dict[tuple[str, str], Histogram]:
    runs = t.runs
    duration = runs.c.ended_at - runs.c.started_at
    rows = c.execute(
        sa.select(runs.c.stage, runs.c.agent, *_buckets(duration, RUN_BUCKETS_S))
        .where(runs.c.ended_at.is_not(None))
        .group_by(runs.c.stage, runs.c.agent)
    ).all()
    return {(r[0], r[1]): _histogram(r, 2, RUN_BUCKETS_S) for r in rows}


def _runs(c: Connection) -> dict[tuple[str, str, str], int]:
    runs = t.runs
    outcome = sa.func.coalesce(
        runs.c.outcome, sa.case((runs.c.ended_at.is_(None), RUNNING), else_=UNRECORDED)
    ).label("outcome")
    rows = c.execute(
        sa.select(runs.c.stage, runs.c.agent, outcome, sa.func.count()).group_by(
            runs.c.stage, runs.c.agent, outcome
        )
    ).all()
    return {(r[0], r[1], r[2]): int(r[3]) for r in rows}


def _usage(c: Connection) -> dict[tuple[str, str, str], Usage]:
    runs = t.runs

    def counted(column: sa.ColumnElement[Any]) -> Any:
        # counters only grow: what a run in flight noted is replaced by its account, maybe by
        # less, so a run counts once it is accounted
        return sa.func.sum(sa.case((runs.c.accounted_at.is_not(None), column), else_=0))

    rows = c.execute(
        sa.select(
            t.tasks.c.repo,
            runs.c.stage,
            runs.c.agent,
            counted(runs.c.tokens_in),
            counted(runs.c.tokens_out),
            counted(runs.c.cache_read),
            counted(runs.c.cache_write),
            counted(runs.c.cost_usd),
        )
        .join(t.tasks, t.tasks.c.id == runs.c.task_id)
        .group_by(t.tasks.c.repo, runs.c.stage, runs.c.agent)
    ).all()
    return {
        (r[0], r[1], r[2]): Usage(int(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7]))
        for r in rows
    }


def _queue(c: Connection, now: float) -> tuple[int, float]:
    jobs = t.jobs
    depth, due_since = c.execute(
        sa.select(sa.func.count(), sa.func.min(jobs.c.run_after)).where(
            jobs.c.state == JobState.QUEUED.value, jobs.c.run_after <= now
        )
    ).one()
    return int(depth), max(0.0, now - due_since) if due_since is not None else 0.0


def _reclaimed(c: Connection) -> int:
    runs = t.runs
    return int(
        c.execute(
            sa.select(sa.func.count()).where(
                runs.c.outcome == RunOutcome.LEASE_LOST.value,
                runs.c.detail == RECLAIMED_RUN_DETAIL,
            )
        ).scalar_one()
    )
