"""Claims, leases, the sweeper and the one write of a job, in the memory store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from orch import crashpoints
from orch.adapters.store.memory.base import MemoryBase, _Tables
from orch.domain import machine
from orch.domain.errors import CancelRequested, Conflict
from orch.domain.machine import TaskChange
from orch.domain.metrics import LEASE_RECLAIMS
from orch.domain.model import Claim, Job, Run, Task
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    JobState,
    RunOutcome,
    TaskStatus,
    is_terminal,
)
from orch.ports import OverdueCancel, SweepResult


class Leases(MemoryBase):
    """Claims, leases, the sweeper, and writing a TaskChange under a lease."""

    # -- leases ------------------------------------------------------------------------------

    def claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None:
        claimed = self._claim(owner, ttl_s, repo_limit)
        if claimed is not None:
            self.changes.bump()  # a claim that found nothing changed nothing to show
        return claimed

    def _claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None:
        with self._write(shown=False) as t:
            now = self.now()
            candidates = sorted(
                (j for j in t.jobs.values() if j.state == JobState.QUEUED and j.run_after <= now),
                key=lambda j: (j.run_after, j.id),
            )[:64]
            used: dict[str, set[int]] = {j.repo: set() for j in candidates}
            for other in t.tasks.values():
                if other.slot is not None and other.repo in used:
                    used[other.repo].add(other.slot)
            for job in candidates:
                task = t.tasks[job.task_id]
                needs = machine.needs_slot(task.status, task.cancel_requested_at is not None)
                if needs and task.slot is None:
                    limit = max(repo_limit(job.repo), 0)
                    free = next((s for s in range(limit) if s not in used[job.repo]), None)
                    if free is None:
                        continue
                    t.tasks[task.id] = replace(task, slot=free, slot_since=now)
                    used[job.repo].add(free)
                    crashpoints.hit("slot.acquired")
                held = replace(
                    job,
                    state=JobState.RUNNING,
                    attempt=job.attempt + 1,
                    token=job.token + 1,
                    owner=owner,
                    expires_at=now + ttl_s,
                )
                t.jobs[job.id] = held
                return Claim(
                    job_id=held.id,
                    task_id=held.task_id,
                    version=held.version,
                    stage=held.stage,
                    attempt=held.attempt,
                    token=held.token,
                    owner=owner,
                    last_error=held.last_error,
                    # what the job starts from, read in the claim's own write
                    task=t.tasks[held.task_id],
                    events=tuple(
                        e
                        for e in t.events.values()
                        if e.task_id == held.task_id and e.processed_at is None
                    ),
                    last_run=next(
                        (r for r in reversed(t.runs.values()) if r.task_id == held.task_id), None
                    ),
                )
        return None

    def renew(self, claim: Claim, ttl_s: float) -> bool:
        """Extend the lease; whether a STOP is asked for the task, carried back with it."""
        with self._write(shown=False) as t:  # a later expiry shows nowhere
            self._guard(t, claim, expires_at=self.now() + ttl_s)
            return t.tasks[claim.task_id].cancel_requested_at is not None

    def unaccounted_runs(self) -> list[Run]:
        return [r for r in self._t.runs.values() if r.accounted_at is None]

    def lease_owners(self) -> list[str]:
        running = {j.owner for j in self._t.jobs.values() if j.state == JobState.RUNNING}
        return sorted(o for o in running if o)

    def live_jobs(self) -> list[Job]:
        live = (JobState.QUEUED, JobState.RUNNING)
        return sorted(
            (j for j in list(self._t.jobs.values()) if j.state in live), key=lambda j: j.id
        )

    def void_leases(self, owner: str) -> int:
        voided = self._void_leases(owner)
        if voided:
            self.changes.bump()
        return voided

    def _void_leases(self, owner: str) -> int:
        with self._write(shown=False) as t:
            now = self.now()
            voided = 0
            for job in list(t.jobs.values()):
                held = job.state == JobState.RUNNING and job.owner == owner
                if held and job.expires_at is not None and job.expires_at >= now:
                    t.jobs[job.id] = replace(job, expires_at=now - 1.0)
                    voided += 1
            return voided

    def sweep(self, max_attempts: int) -> SweepResult:
        requeued = dead = 0
        with self._write(shown=False) as t:
            now = self.now()
            for job in list(t.jobs.values()):
                expired = job.expires_at is not None and job.expires_at < now
                if job.state != JobState.RUNNING or not expired:
                    continue
                end = machine.lease_expired(job.attempt, max_attempts)
                t.jobs[job.id] = replace(
                    job,
                    state=end.state,
                    owner=None,
                    expires_at=None,
                    run_after=now,
                    last_error=end.error or "",
                )
                self._close_runs(t, job.id, RunOutcome.LEASE_LOST, "its worker's lease expired")
                if end.state == JobState.DEAD:
                    dead += 1
                    self._park(
                        t,
                        job.task_id,
                        job.version,
                        lambda task, held, n=job.attempt: machine.dead_lettered(task, n, held),
                    )
                else:
                    requeued += 1
            if requeued or dead:
                t.counters[LEASE_RECLAIMS] = t.counters.get(LEASE_RECLAIMS, 0) + requeued + dead
        if requeued or dead:
            self.changes.bump()
            self._notify()
        return SweepResult(requeued=requeued, dead=dead)

    def _park(
        self,
        t: _Tables,
        task_id: int,
        version: int,
        plan: Callable[[Task, bool], TaskChange],
    ) -> bool:
        """Park the task at `version` as `plan` says, given the task and whether it has a merge
        or deploy in flight."""
        task = t.tasks.get(task_id)
        if task is None or task.version != version:
            return False
        held = any(machine.holds_a_slot(e) for e in t.effects.values() if e.task_id == task_id)
        self._apply(t, task_id, version, plan(task, held))
        return True

    def overdue_cancels(self, bound_s: float) -> list[OverdueCancel]:
        t = self._t
        now = self.now()
        out = []
        for task in sorted(t.tasks.values(), key=lambda x: x.id):
            asked = task.cancel_requested_at
            if asked is None or asked >= now - bound_s or is_terminal(task.status):
                continue
            held = any(
                j.task_id == task.id
                and (
                    j.state == JobState.QUEUED
                    or (
                        j.state == JobState.RUNNING
                        and j.expires_at is not None
                        and j.expires_at >= now
                    )
                )
                for j in t.jobs.values()
            )
            in_flight = any(
                e.task_id == task.id
                and e.state in UNRESOLVED_EFFECT_STATES
                and e.kind != EffectKind.NOTIFY
                for e in t.effects.values()
            )
            parked = task.status == TaskStatus.NEEDS_OPERATOR
            out.append(OverdueCancel(task.id, task.key, task.version, parked, held, in_flight))
        return out

    def park(self, task_id: int, version: int, reason: str, actor: str) -> bool:
        with self._write(wakes=True) as t:
            return self._park(
                t, task_id, version, lambda task, held: machine.park(task, reason, actor, held)
            )

    def next_run_after(self) -> float | None:
        due = [j.run_after for j in self._t.jobs.values() if j.state == JobState.QUEUED]
        return min(due) if due else None

    # -- writes under a lease ----------------------------------------------------------------

    def apply(self, claim: Claim, change: TaskChange) -> None:
        with self._write(wakes=True) as t:
            self._apply(t, claim.task_id, claim.version, change, claim)
        if change.write is not None:
            crashpoints.hit("next_job.enqueued")
        if change.releases_slot:
            crashpoints.hit("slot.released")

    def _apply(
        self,
        t: _Tables,
        task_id: int,
        version: int,
        change: TaskChange,
        claim: Claim | None = None,
    ) -> None:
        now = self.now()
        task = t.tasks[task_id]
        write = change.write
        if write is not None and write.unless_stopped and task.cancel_requested_at is not None:
            raise CancelRequested("stop requested")
        self._mark(t, change.read, now)
        rerun = task.version == version and any(
            e.task_id == task_id and e.processed_at is None and e.kind in change.rerun_if_unread
            for e in t.events.values()
        )
        if claim is not None and change.job is not None:
            end = change.job
            state, due = end.state, end.due_in_s
            if rerun and change.write is None:
                state, due = JobState.QUEUED, 0.0
            values: dict[str, Any] = {"state": state, "owner": None, "expires_at": None}
            if state == JobState.QUEUED:
                values["run_after"] = now + due
                held = t.jobs[claim.job_id]
                if end.reset_attempts:
                    values["attempt"] = 0
                elif not end.counts:
                    values["attempt"] = held.attempt - 1
            if end.error is not None:
                values["last_error"] = end.error[:2000]
            self._guard(t, claim, **values)
            self._close_runs(t, claim.job_id, RunOutcome.ERROR, "its worker could not record it")
        if write is None:
            if change.free_slot and task.version == version:
                self._free_slot(t, task, now)
            return
        if task.stage != write.from_stage or task.version != version:
            raise Conflict(f"task {task_id} is not at {write.from_stage} version {version}")
        moved = replace(
            task,
            stage=write.stage,
            status=write.status,
            version=version + 1,
            waiting_for=write.waiting_for,
            status_reason=write.reason,
            feedback=write.feedback,
            rework_rounds=write.rework_rounds,
            updated_at=now,
            cancel_requested_at=None if write.clear_cancel else task.cancel_requested_at,
            budgets=task.budgets if write.budgets is None else write.budgets,
        )
        t.tasks[task_id] = moved
        if write.status != TaskStatus.ACTIVE:
            self._free_slot(t, moved, now)
        crashpoints.hit("stage.cas")  # inside the write: a crash here leaves nothing written
        self._history(t, task_id, version + 1, write, now)
        due = 0.0 if rerun else change.next_job_in_s
        if due is not None:
            self._enqueue(t, moved, version + 1, write.stage, now + due, now)
