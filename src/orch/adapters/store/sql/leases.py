"""Claims, leases, the sweeper and the one write of a job, in the SQL store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch import crashpoints
from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import (
    SqlBase,
    _effect,
    _event,
    _job,
    _job_end,
    _run,
    _task,
)
from orch.adapters.store.sql.statements import slot_freed, tasks_with_pipelines
from orch.domain import machine
from orch.domain.errors import CancelRequested, Conflict
from orch.domain.machine import TaskChange
from orch.domain.metrics import LEASE_RECLAIMS
from orch.domain.model import Claim, Event, Job, Run, Task
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    JobState,
    RunOutcome,
    Stage,
    TaskStatus,
)
from orch.ports import OverdueCancel, SweepResult


class Leases(SqlBase):
    """Claims, leases, the sweeper, and writing a TaskChange under a lease."""

    # -- leases ------------------------------------------------------------------------------

    def claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None:
        # looked at first in a read: finding nothing to claim writes nothing, so an idle orch
        # (and every wake-up that finds the work taken) costs no write transaction
        if not self._read(lambda conn: self._claimable(conn, repo_limit)):
            return None

        def fn(conn: Connection) -> Claim | None:
            now = self._db_now(conn)
            candidates = conn.execute(self.sql.candidates, {"b_now": now}).all()
            used = self._slots_used(conn, candidates)
            for cand in candidates:
                free = self._slot_for(cand, used, repo_limit)
                if free is None:
                    continue
                if free >= 0:
                    # a task takes a repository slot at its first claim and keeps it while
                    # active; the unique index on (repo, slot) makes a race fail closed
                    took = conn.execute(
                        self.sql.take_slot, {"b_task": cand.task_id, "b_slot": free, "b_now": now}
                    )
                    if took.rowcount != 1:
                        continue
                    used[cand.repo].add(free)
                    crashpoints.hit("slot.acquired")
                row = conn.execute(
                    self.sql.claim_job,
                    {"b_job": cand.id, "b_owner": owner, "b_ttl": ttl_s, "b_now": now},
                ).first()
                if row is not None:
                    task, events, last_run = self._claimed(conn, row.task_id)
                    return Claim(
                        job_id=row.id,
                        task_id=row.task_id,
                        version=row.version,
                        stage=Stage(row.stage),
                        attempt=row.attempt,
                        token=row.lease_token,
                        owner=owner,
                        last_error=row.last_error,
                        task=task,
                        events=events,
                        last_run=last_run,
                    )
            return None

        return self._write(fn, shown=lambda claim: claim is not None)  # type: ignore[no-any-return]

    def _claimable(self, conn: Connection, repo_limit: Callable[[str], int]) -> bool:
        candidates = conn.execute(self.sql.peek_candidates, {"b_now": self._db_now(conn)}).all()
        used = self._slots_used(conn, candidates)
        return any(self._slot_for(cand, used, repo_limit) is not None for cand in candidates)

    def _slots_used(self, conn: Connection, candidates: Sequence[Any]) -> dict[str, set[int]]:
        repos = {c.repo for c in candidates}
        used: dict[str, set[int]] = {r: set() for r in repos}
        if repos:
            for r in conn.execute(self.sql.slots_in_use, {"b_repos": sorted(repos)}):
                used[r.repo].add(r.slot)
        return used

    @staticmethod
    def _slot_for(
        cand: Any, used: dict[str, set[int]], repo_limit: Callable[[str], int]
    ) -> int | None:
        """The repository slot a candidate job would take: -1 when it needs none (it holds
        one, or its work is not on the repository), None when every slot is taken."""
        # reading a waiting or parked task's inbox, or applying a STOP, is not work on the
        # repository: it needs no slot, so a full repository never delays it
        needs_slot = machine.needs_slot(
            TaskStatus(cand.status), cand.cancel_requested_at is not None
        )
        if not needs_slot or cand.slot is not None:
            return -1
        limit = max(repo_limit(cand.repo), 0)
        return next((s for s in range(limit) if s not in used[cand.repo]), None)

    def _claimed(
        self, conn: Connection, task_id: int
    ) -> tuple[Task, tuple[Event, ...], Run | None]:
        """What a job starts from, read in its claim's transaction: the task, its unread
        events, its latest agent run."""
        task = _task(conn.execute(self.sql.task, {"b_task": task_id}).one())
        events = conn.execute(self.sql.unread, {"b_task": task_id}).all()
        run = conn.execute(self.sql.last_run, {"b_task": task_id}).first()
        return task, tuple(_event(e) for e in events), _run(run) if run is not None else None

    def renew(self, claim: Claim, ttl_s: float) -> bool:
        """Extend the lease; whether a STOP is asked for the task, carried back with it."""

        def fn(conn: Connection) -> bool:
            fence = {"b_job": claim.job_id, "b_token": claim.token, "b_ttl": ttl_s}
            self._fenced(conn.execute(self.sql.renew, fence), claim)
            return bool(conn.execute(self.sql.cancel_flag, {"b_task": claim.task_id}).scalar())

        return bool(self._write(fn, shown=lambda _: False))  # a later expiry shows nowhere

    def unaccounted_runs(self) -> list[Run]:
        """Runs not in the ledger: running now, or their worker died mid-run (and the run may
        have been closed for it since)."""
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.runs).where(t.runs.c.accounted_at.is_(None)).order_by(t.runs.c.id)
            ).all()
        )
        return [_run(r) for r in rows]

    def lease_owners(self) -> list[str]:
        """The incarnations holding running jobs."""
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.jobs.c.lease_owner)
                .where(t.jobs.c.state == JobState.RUNNING.value)
                .distinct()
            ).all()
        )
        return sorted(r[0] for r in rows if r[0])

    def live_jobs(self) -> list[Job]:
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.jobs)
                .where(t.jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
                .order_by(t.jobs.c.id)
            ).all()
        )
        return [_job(r) for r in rows]

    def void_leases(self, owner: str) -> int:
        """Expire every lease `owner` holds now: it is known dead, so its jobs need not wait out
        their TTL. The sweep that follows requeues them (or dead-letters them)."""

        def fn(conn: Connection) -> int:
            now = self._db_now(conn)
            res = conn.execute(
                sa.update(t.jobs)
                .where(
                    t.jobs.c.state == JobState.RUNNING.value,
                    t.jobs.c.lease_owner == owner,
                    t.jobs.c.lease_expires_at >= now,
                )
                .values(lease_expires_at=now - 1.0, updated_at=now)
            )
            return int(res.rowcount)

        return self._write(fn, shown=lambda voided: voided > 0)  # type: ignore[no-any-return]

    def sweep(self, max_attempts: int) -> SweepResult:
        expired_now = sa.select(
            t.jobs.c.id,
            t.jobs.c.task_id,
            t.jobs.c.version,
            t.jobs.c.lease_token,
            t.jobs.c.attempt,
        ).where(
            t.jobs.c.state == JobState.RUNNING.value,
            t.jobs.c.lease_expires_at < sa.bindparam("b_now"),
        )
        # looked for first in a read: a sweep that finds nothing writes nothing
        if not self._read(
            lambda c: c.execute(expired_now.limit(1), {"b_now": self._db_now(c)}).first()
        ):
            return SweepResult(requeued=0, dead=0)

        def fn(conn: Connection) -> SweepResult:
            now = self._db_now(conn)
            expired = conn.execute(expired_now, {"b_now": now}).all()
            requeued = dead = 0
            for job in expired:
                end = machine.lease_expired(job.attempt, max_attempts)
                res = conn.execute(
                    sa.update(t.jobs)
                    .where(
                        t.jobs.c.id == job.id,
                        t.jobs.c.state == JobState.RUNNING.value,
                        t.jobs.c.lease_token == job.lease_token,
                        t.jobs.c.lease_expires_at < now,
                    )
                    .values(
                        state=end.state.value,
                        lease_owner=None,
                        lease_expires_at=None,
                        run_after=now,
                        last_error=end.error or "",
                        updated_at=now,
                    )
                )
                if res.rowcount != 1:
                    continue
                self._close_runs(
                    conn, job.id, RunOutcome.LEASE_LOST, "its worker's lease expired", now
                )
                if end.state == JobState.DEAD:
                    dead += 1
                    self._park_in_txn(
                        conn,
                        job.task_id,
                        job.version,
                        lambda task, held, n=job.attempt: machine.dead_lettered(task, n, held),
                    )
                else:
                    requeued += 1
            if requeued or dead:
                self._count(conn, LEASE_RECLAIMS, requeued + dead)
            return SweepResult(requeued=requeued, dead=dead)

        result: SweepResult = self._write(fn, shown=lambda r: bool(r.requeued or r.dead))
        if result.requeued or result.dead:
            self._notify()
        return result

    def _park_in_txn(
        self,
        conn: Connection,
        task_id: int,
        version: int,
        plan: Callable[[Task, bool], TaskChange],
    ) -> bool:
        """Park the task at `version` as `plan` says, given the task and whether it has a merge
        or deploy in flight."""
        row = conn.execute(
            tasks_with_pipelines()
            .where(t.tasks.c.id == task_id, t.tasks.c.version == version)
            .with_for_update(of=t.tasks)
        ).first()
        if row is None:
            return False
        effects = conn.execute(sa.select(t.effects).where(t.effects.c.task_id == task_id)).all()
        held = any(machine.holds_a_slot(_effect(e)) for e in effects)
        self._apply(conn, task_id, version, plan(_task(row), held))
        return True

    def overdue_cancels(self, bound_s: float) -> list[OverdueCancel]:
        """Tasks whose STOP has waited longer than `bound_s`."""

        def fn(conn: Connection) -> list[OverdueCancel]:
            now = self._db_now(conn)
            # a live lease holds it, or a queued job (one just requeued from a dead worker, say)
            # will: either applies the STOP once the effect resolves
            held = (
                sa.select(t.jobs.c.id)
                .where(
                    t.jobs.c.task_id == t.tasks.c.id,
                    sa.or_(
                        sa.and_(
                            t.jobs.c.state == JobState.RUNNING.value,
                            t.jobs.c.lease_expires_at >= now,
                        ),
                        t.jobs.c.state == JobState.QUEUED.value,
                    ),
                )
                .exists()
            )
            in_flight = (
                sa.select(t.effects.c.id)
                .where(
                    t.effects.c.task_id == t.tasks.c.id,
                    t.effects.c.state.in_([st.value for st in UNRESOLVED_EFFECT_STATES]),
                    t.effects.c.kind != "notify",
                )
                .exists()
            )
            rows = conn.execute(
                sa.select(
                    t.tasks.c.id,
                    t.tasks.c.key,
                    t.tasks.c.version,
                    t.tasks.c.status,
                    held,
                    in_flight,
                ).where(
                    # the STOPs not yet applied, stated as their partial index states them
                    t.tasks.c.cancel_requested_at.is_not(None),
                    sa.text(t.LIVE_TASK),
                    t.tasks.c.cancel_requested_at < now - bound_s,
                )
            ).all()
            return [
                OverdueCancel(
                    r[0],
                    r[1],
                    r[2],
                    r[3] == TaskStatus.NEEDS_OPERATOR.value,
                    bool(r[4]),
                    bool(r[5]),
                )
                for r in rows
            ]

        return self._read(fn)  # type: ignore[no-any-return]

    def park(self, task_id: int, version: int, reason: str, actor: str) -> bool:
        """Park a task no worker holds (a guarded write on its version)."""

        return self._write(  # type: ignore[no-any-return]
            lambda conn: self._park_in_txn(
                conn,
                task_id,
                version,
                lambda task, held: machine.park(task, reason, actor, held),
            ),
            wakes=True,
        )

    def next_run_after(self) -> float | None:
        value = self._read(
            lambda c: c.execute(
                sa.select(sa.func.min(t.jobs.c.run_after)).where(
                    t.jobs.c.state == JobState.QUEUED.value
                )
            ).scalar()
        )
        return float(value) if value is not None else None

    # -- writes under a lease ----------------------------------------------------------------

    def apply(self, claim: Claim, change: TaskChange) -> None:
        """Write what the domain decided, in one transaction: the job's end under the claim's
        fencing token, the stage write as a compare-and-set on (task, stage, version) with its
        history row, the events it answers, and the next job."""
        self._write(
            lambda conn: self._apply(conn, claim.task_id, claim.version, change, claim), wakes=True
        )
        if change.write is not None:
            crashpoints.hit("next_job.enqueued")
        if change.releases_slot:
            crashpoints.hit("slot.released")

    def _apply(
        self,
        conn: Connection,
        task_id: int,
        version: int,
        change: TaskChange,
        claim: Claim | None = None,
    ) -> None:
        now = self._db_now(conn)
        # the task's row is locked first, as append_event locks it before it reads the task:
        # an event appended meanwhile is either seen below, or sees what this change wrote
        current, stopped = conn.execute(self.sql.lock_task, {"b_task": task_id}).one()
        if change.write is not None and change.write.unless_stopped and stopped:
            raise CancelRequested("stop requested")
        if change.read:
            conn.execute(self.sql.mark_read, {"b_ids": list(change.read), "b_now": now})
        # only a job of the task's current version runs again for its events: a stale one that
        # did would find the task moved on, and run again, for ever
        rerun = (
            bool(change.rerun_if_unread)
            and current == version
            and conn.execute(
                self.sql.unread_of_kinds,
                {"b_task": task_id, "b_kinds": sorted(change.rerun_if_unread)},
            ).first()
            is not None
        )
        if claim is not None and change.job is not None:
            self._end_job(conn, claim, now, *_job_end(change, rerun, now))
        write = change.write
        if write is None:
            if change.free_slot:
                conn.execute(
                    sa.update(t.tasks)
                    .where(t.tasks.c.id == task_id, t.tasks.c.version == version)
                    .values(**slot_freed(now))
                )
            return
        # a waiting or parked task holds no slot
        stmt = self.sql.move(
            write.status != TaskStatus.ACTIVE, write.clear_cancel, write.budgets is not None
        )
        params: dict[str, Any] = {
            "b_task": task_id,
            "b_from": write.from_stage.value,
            "b_version": version,
            "b_next": version + 1,
            "b_stage": write.stage.value,
            "b_status": write.status.value,
            "b_waiting_for": write.waiting_for,
            "b_reason": write.reason,
            "b_feedback": write.feedback,
            "b_rework_rounds": write.rework_rounds,
            "b_now": now,
        }
        if write.budgets is not None:
            params["b_budgets"] = write.budgets
        res = conn.execute(stmt, params).first()
        if res is None:
            raise Conflict(f"task {task_id} is not at {write.from_stage} version {version}")
        crashpoints.hit("stage.cas")  # inside the transaction: a crash here rolls it back
        conn.execute(
            self.sql.insert_transition,
            {
                "task_id": task_id,
                "version": version + 1,
                "from_stage": write.from_stage.value,
                "to_stage": write.stage.value,
                "from_status": write.from_status.value,
                "to_status": write.status.value,
                "actor": write.actor,
                "reason": write.reason,
                "at": now,
            },
        )
        due = 0.0 if rerun else change.next_job_in_s
        if due is not None:
            self._enqueue(conn, task_id, res.repo, version + 1, write.stage, now, now + due)
