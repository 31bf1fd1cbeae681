"""The statements a stage transition runs, built once per store.

Each of these runs about once per transition. Building a SQLAlchemy statement (coercing its
clauses, then computing its cache key on execute) costs several times what executing an already
built one does, so they are built here, once, with bound parameters. They embed the store's
clock, so each store builds its own.

Parameters are named `b_*`, except those an INSERT or UPDATE takes for its columns at execute
(`start_run`, `finish_run`, `account_run`, `insert_transition`, `enqueue`). A parameter named
for a column overrides what the statement sets that column to, so none is ever passed to a
statement that sets the column itself (`lease_owner=None`, `slot=None` and the like).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from orch.adapters.store import schema as t
from orch.adapters.store.sql.hearing import ANNOUNCED_CHANGES
from orch.domain.states import JobState


def insert_ignore(dialect: str, table: sa.Table) -> Any:
    """An INSERT that does nothing when a unique key is taken."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def slot_freed(now: Any) -> dict[str, Any]:
    """A task's values as it gives its repository slot back: the time it held it is work."""
    held = sa.func.coalesce(now - t.tasks.c.slot_since, 0.0)
    return {"slot": None, "slot_since": None, "worked_s": t.tasks.c.worked_s + held}


def tasks_with_pipelines() -> Any:
    """Tasks' rows, each with the body of the pipeline it was filed with as `pipeline`: what a
    read that builds one Task at a time selects from."""
    return sa.select(t.tasks, t.pipelines.c.body.label("pipeline")).join(
        t.pipelines, t.pipelines.c.id == t.tasks.c.pipeline_id
    )


class Statements:
    def __init__(self, now: sa.ColumnElement[Any], dialect: str) -> None:
        p = sa.bindparam
        jobs, tasks, runs, events = t.jobs, t.tasks, t.runs, t.events
        running = jobs.c.state == JobState.RUNNING.value
        fence = (jobs.c.id == p("b_job"), running, jobs.c.lease_token == p("b_token"))
        self._now, self._fence = now, fence
        # the shapes a job's end and a stage write take, each built the first time it is used
        # (two threads may both build one: either is right)
        self._ends: dict[tuple[tuple[str, ...], bool], Any] = {}
        self._moves: dict[tuple[bool, bool, bool], Any] = {}

        self.now = sa.select(now)

        # -- announcing a change a person would see (orch.adapters.store.sql.hearing)
        self.notify = sa.select(sa.func.pg_notify(p("b_channel"), p("b_id")))
        counted = t.counters.c.name == ANNOUNCED_CHANGES
        self.change_count = sa.select(t.counters.c.value).where(counted)
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert

            one_more = insert(t.counters).values(name=ANNOUNCED_CHANGES, value=1)
            self.count_change = one_more.on_conflict_do_update(
                index_elements=["name"], set_={"value": t.counters.c.value + 1}
            ).returning(t.counters.c.value)

        # -- filing: a task's pipeline is stored once for every task filed with its like
        self.pipeline_id = sa.select(t.pipelines.c.id).where(t.pipelines.c.digest == p("b_digest"))
        self.add_pipeline = insert_ignore(dialect, t.pipelines)

        # -- the claim
        self.peek_candidates = (
            sa.select(
                jobs.c.id,
                jobs.c.repo,
                jobs.c.task_id,
                tasks.c.slot,
                tasks.c.status,
                tasks.c.cancel_requested_at,
            )
            .join(tasks, tasks.c.id == jobs.c.task_id)
            .where(jobs.c.state == JobState.QUEUED.value, jobs.c.run_after <= p("b_now"))
            .order_by(jobs.c.run_after, jobs.c.id)
            .limit(64)
        )
        self.candidates = self.peek_candidates.with_for_update(skip_locked=True, of=jobs)
        self.slots_in_use = sa.select(tasks.c.repo, tasks.c.slot).where(
            tasks.c.slot.is_not(None), tasks.c.repo.in_(p("b_repos", expanding=True))
        )
        self.take_slot = (
            sa.update(tasks)
            .where(tasks.c.id == p("b_task"), tasks.c.slot.is_(None))
            .values(slot=p("b_slot"), slot_since=p("b_now"))
        )
        self.claim_job = (
            sa.update(jobs)
            .where(jobs.c.id == p("b_job"), jobs.c.state == JobState.QUEUED.value)
            .values(
                state=JobState.RUNNING.value,
                attempt=jobs.c.attempt + 1,
                lease_token=jobs.c.lease_token + 1,
                lease_owner=p("b_owner"),
                lease_expires_at=now + p("b_ttl", type_=sa.Float),
                updated_at=p("b_now"),
            )
            .returning(
                jobs.c.id,
                jobs.c.task_id,
                jobs.c.version,
                jobs.c.stage,
                jobs.c.attempt,
                jobs.c.lease_token,
                jobs.c.last_error,
            )
        )
        self.task = tasks_with_pipelines().where(tasks.c.id == p("b_task"))
        self.unread = (
            sa.select(events)
            .where(events.c.task_id == p("b_task"), events.c.processed_at.is_(None))
            .order_by(events.c.id)
        )
        self.last_run = (
            sa.select(runs).where(runs.c.task_id == p("b_task")).order_by(runs.c.id.desc()).limit(1)
        )

        # -- the lease
        self.touch = sa.update(jobs).where(*fence).values(updated_at=now)
        self.renew = (
            sa.update(jobs)
            .where(*fence)
            .values(updated_at=now, lease_expires_at=now + p("b_ttl", type_=sa.Float))
        )
        self.cancel_flag = sa.select(tasks.c.cancel_requested_at.is_not(None)).where(
            tasks.c.id == p("b_task")
        )

        # -- a run
        self.start_run = sa.insert(runs).values(started_at=now).returning(runs.c.id)
        self.finish_run = sa.update(runs).where(runs.c.id == p("b_run")).values(ended_at=now)
        self.account_run = (
            sa.update(runs)
            .where(runs.c.id == p("b_run"), runs.c.accounted_at.is_(None))
            .values(accounted_at=now)
        )
        self.account_task = (
            sa.update(tasks)
            .where(tasks.c.id == p("b_task"))
            .values(
                tokens_in=tasks.c.tokens_in + p("b_tokens_in"),
                tokens_out=tasks.c.tokens_out + p("b_tokens_out"),
                cache_read=tasks.c.cache_read + p("b_cache_read"),
                cache_write=tasks.c.cache_write + p("b_cache_write"),
                cost_usd=tasks.c.cost_usd + p("b_cost_usd"),
            )
        )
        self.close_runs = (
            sa.update(runs)
            .where(runs.c.job_id == p("b_job"), runs.c.ended_at.is_(None))
            .values(ended_at=p("b_now"), outcome=p("b_outcome"), detail=p("b_detail"))
        )

        # -- the job's one write
        self.lock_task = (
            sa.select(tasks.c.version, tasks.c.cancel_requested_at.is_not(None))
            .where(tasks.c.id == p("b_task"))
            .with_for_update()
        )
        self.mark_read = (
            sa.update(events)
            .where(events.c.id.in_(p("b_ids", expanding=True)), events.c.processed_at.is_(None))
            .values(processed_at=p("b_now"))
        )
        self.unread_of_kinds = (
            sa.select(events.c.id)
            .where(
                events.c.task_id == p("b_task"),
                events.c.processed_at.is_(None),
                events.c.kind.in_(p("b_kinds", expanding=True)),
            )
            .limit(1)
        )
        self.insert_transition = sa.insert(t.transitions)
        self.enqueue = insert_ignore(dialect, jobs)

    def end_job(self, columns: tuple[str, ...], uncount: bool) -> Any:
        """The fenced write that ends a job and gives its lease back: it sets `columns` from
        `b_<column>` parameters, and with `uncount` takes back the attempt its claim counted."""
        stmt = self._ends.get((columns, uncount))
        if stmt is None:
            values: dict[str, Any] = {c: sa.bindparam(f"b_{c}") for c in columns}
            if uncount:
                values["attempt"] = t.jobs.c.attempt - 1
            stmt = (
                sa.update(t.jobs)
                .where(*self._fence)
                .values(updated_at=self._now, lease_owner=None, lease_expires_at=None, **values)
            )
            self._ends[(columns, uncount)] = stmt
        return stmt

    def move(self, frees_slot: bool, clears_cancel: bool, sets_budgets: bool) -> Any:
        """The stage write: a compare-and-set on (task, stage, version) that moves the task to
        `b_version + 1`, giving its slot back when it stops being active (`frees_slot`)."""
        key = (frees_slot, clears_cancel, sets_budgets)
        stmt = self._moves.get(key)
        if stmt is None:
            p, tasks = sa.bindparam, t.tasks
            values: dict[str, Any] = {
                "stage": p("b_stage"),
                "status": p("b_status"),
                "version": p("b_next"),
                "waiting_for": p("b_waiting_for"),
                "status_reason": p("b_reason"),
                "feedback": p("b_feedback"),
                "rework_rounds": p("b_rework_rounds"),
                "updated_at": p("b_now"),
            }
            if frees_slot:
                values.update(slot_freed(p("b_now", type_=sa.Float)))
            if clears_cancel:
                values["cancel_requested_at"] = None
            if sets_budgets:
                values["budgets"] = p("b_budgets", type_=tasks.c.budgets.type)
            stmt = (
                sa.update(tasks)
                .where(
                    tasks.c.id == p("b_task"),
                    tasks.c.stage == p("b_from"),
                    tasks.c.version == p("b_version"),
                )
                .values(**values)
                .returning(tasks.c.repo)
            )
            self._moves[key] = stmt
        return stmt
