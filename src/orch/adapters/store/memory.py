"""The store in plain Python structures: no SQL, nothing on disk, one process.

It keeps the same promises as the SQL store (the store contract suite runs on both): writes
under a lease are fenced by the claim's token, a stage write is a compare-and-set, uniqueness
holds where the schema has a unique index, and a write is all or nothing. Each write runs under
one lock on shallow copies of the tables it may change, so a failure (or a simulated crash)
part-way leaves everything as it was. The rules are the domain's (orch.domain.machine), as in
the SQL store: this one only keeps records.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orch import crashpoints
from orch.domain import machine
from orch.domain.errors import Busy, Conflict, LeaseLost, NotFound
from orch.domain.ledger import Usage
from orch.domain.machine import TaskChange
from orch.domain.model import (
    Claim,
    Effect,
    Event,
    GateRecord,
    Job,
    Run,
    Task,
    Ticket,
    Transition,
)
from orch.domain.naming import branch_for
from orch.domain.pipeline import Decision
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    JobState,
    RunOutcome,
    Stage,
    TaskStatus,
    is_terminal,
)
from orch.ports import OverdueCancel, StateSummary, SweepResult

log = logging.getLogger("orch.store")


@dataclass
class _Tables:
    """Every record, by id (or key). Records are frozen: a write replaces them."""

    tickets: dict[str, Ticket] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    transitions: dict[int, Transition] = field(default_factory=dict)
    effects: dict[str, Effect] = field(default_factory=dict)
    effect_ids: dict[str, int] = field(default_factory=dict)
    events: dict[int, Event] = field(default_factory=dict)
    event_keys: dict[str, int] = field(default_factory=dict)
    gates: dict[tuple[int, int, str, str], GateRecord] = field(default_factory=dict)
    runs: dict[int, Run] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)  # the last id given, per table

    def copy(self) -> _Tables:
        return _Tables(**{name: dict(value) for name, value in vars(self).items()})

    def next_id(self, table: str) -> int:
        self.ids[table] = self.ids.get(table, 0) + 1
        return self.ids[table]


class MemoryStore:
    """The store, in this process's memory. `clock` replaces the wall clock (a simulated one,
    for tests that move time past leases and timers without waiting)."""

    url = "memory://"
    display_url = "memory://"

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._t = _Tables()
        self._listeners: list[Callable[[], None]] = []

    # -- plumbing ----------------------------------------------------------------------------

    def now(self) -> float:
        return float(self._clock())

    def migrate(self) -> None:
        """Nothing to migrate: the structures are the schema."""

    def close(self) -> None:
        """Nothing to release."""

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    @contextlib.contextmanager
    def _write(self, *, wakes: bool = False) -> Iterator[_Tables]:
        """One write, all or nothing: it works on copies that replace the tables only if it
        returns."""
        with self._lock:
            work = self._t.copy()
            yield work
            self._t = work
        if wakes:
            self._notify()

    def _guard(self, t: _Tables, claim: Claim, **values: Any) -> None:
        """The fencing check: touch the job only while this claim still holds it."""
        job = t.jobs.get(claim.job_id)
        if job is None or job.state != JobState.RUNNING or job.token != claim.token:
            log.warning(
                "write fenced: job %s token %s of %s", claim.job_id, claim.token, claim.owner
            )
            raise LeaseLost(f"job {claim.job_id} is no longer held with token {claim.token}")
        if values:
            t.jobs[job.id] = replace(job, **values)

    # -- tickets -----------------------------------------------------------------------------

    def _new_ticket(self, t: _Tables, repo: str, prefix: str, title: str, body: str) -> Ticket:
        t.sequences[prefix] = t.sequences.get(prefix, 0) + 1
        ticket = Ticket(key=f"{prefix}-{t.sequences[prefix]}", repo=repo, title=title, body=body)
        t.tickets[ticket.key] = ticket
        return ticket

    def file_ticket(self, repo: str, prefix: str, title: str, body: str) -> Ticket:
        with self._write() as t:
            return self._new_ticket(t, repo, prefix, title, body)

    def file_and_create(
        self,
        repo: str,
        prefix: str,
        title: str,
        body: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task:
        with self._write(wakes=first.status == TaskStatus.ACTIVE) as t:
            ticket = self._new_ticket(t, repo, prefix, title, body)
            task_id = self._create(t, ticket, branch_for(ticket.key), pipeline, first, actor)
        return self.get_task(task_id)

    def get_ticket(self, key: str) -> Ticket | None:
        return self._t.tickets.get(key)

    # -- tasks -------------------------------------------------------------------------------

    def create_task(
        self, ticket: Ticket, branch: str, pipeline: dict[str, Any], first: Decision, actor: str
    ) -> Task:
        with self._write(wakes=first.status == TaskStatus.ACTIVE) as t:
            task_id = self._create(t, ticket, branch, pipeline, first, actor)
        return self.get_task(task_id)

    def _create(
        self,
        t: _Tables,
        ticket: Ticket,
        branch: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> int:
        if any(x.key == ticket.key and x.status != TaskStatus.CANCELLED for x in t.tasks.values()):
            raise Conflict(f"ticket {ticket.key} already has a task that is not cancelled")
        now = self.now()
        write = machine.create(first, actor)
        task = Task(
            id=t.next_id("tasks"),
            key=ticket.key,
            repo=ticket.repo,
            title=ticket.title,
            body=ticket.body,
            stage=write.stage,
            status=write.status,
            version=1,
            branch=branch,
            pipeline=pipeline,
            waiting_for=write.waiting_for,
            created_at=now,
            updated_at=now,
        )
        t.tasks[task.id] = task
        self._history(t, task.id, 1, write, now)
        due = machine.first_job_in_s(first)
        if due is not None:
            self._enqueue(t, task, 1, write.stage, now + due, now)
        return task.id

    def _history(
        self, t: _Tables, task_id: int, version: int, write: machine.StageWrite, now: float
    ) -> None:
        if any(x.task_id == task_id and x.version == version for x in t.transitions.values()):
            raise Conflict(f"task {task_id} already has version {version}")
        t.transitions[t.next_id("transitions")] = Transition(
            task_id,
            version,
            write.from_stage,
            write.stage,
            write.from_status,
            write.status,
            write.actor,
            write.reason,
            now,
        )

    def _enqueue(
        self, t: _Tables, task: Task, version: int, stage: Stage, run_after: float, now: float
    ) -> None:
        # one job per task and version, as the SQL store's unique constraint says
        if any(j.task_id == task.id and j.version == version for j in t.jobs.values()):
            return
        job_id = t.next_id("jobs")
        t.jobs[job_id] = Job(
            job_id,
            task.id,
            task.repo,
            version,
            stage,
            JobState.QUEUED,
            attempt=0,
            token=0,
            owner=None,
            expires_at=None,
            run_after=run_after,
        )

    def get_task(self, task_id: int) -> Task:
        task = self._t.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id}")
        return task

    def find_task(self, key: str) -> Task | None:
        found = [x for x in self._t.tasks.values() if x.key == key]
        return max(found, key=lambda x: x.id) if found else None

    def list_tasks(self, limit: int = 100, status: TaskStatus | None = None) -> list[Task]:
        tasks = sorted(self._t.tasks.values(), key=lambda x: -x.id)
        return [x for x in tasks if status is None or x.status == status][:limit]

    def transitions(self, task_id: int) -> list[Transition]:
        found = [x for x in self._t.transitions.values() if x.task_id == task_id]
        return sorted(found, key=lambda x: x.version)

    def gate_records(self, task_id: int) -> list[GateRecord]:
        return [g for g in self._t.gates.values() if g.task_id == task_id]

    def effects(self, task_id: int) -> list[Effect]:
        t = self._t
        found = [e for e in t.effects.values() if e.task_id == task_id]
        return sorted(found, key=lambda e: t.effect_ids[e.key])

    def runs(self, task_id: int) -> list[Run]:
        return [r for r in self._t.runs.values() if r.task_id == task_id]

    def events(self, task_id: int) -> list[Event]:
        return [e for e in self._t.events.values() if e.task_id == task_id]

    def jobs(self, task_id: int) -> list[Job]:
        return [j for j in self._t.jobs.values() if j.task_id == task_id]

    def summary(self, recent: int = 20) -> StateSummary:
        t = self._t
        by_stage: dict[str, int] = {}
        by_status: dict[str, int] = {}
        by_repo: dict[str, Usage] = {}
        for task in t.tasks.values():
            by_stage[task.stage.value] = by_stage.get(task.stage.value, 0) + 1
            by_status[task.status.value] = by_status.get(task.status.value, 0) + 1
            by_repo[task.repo] = by_repo.get(task.repo, Usage()) + task.spent
        running = [
            {
                "task": t.tasks[j.task_id].key,
                "stage": j.stage.value,
                "attempt": j.attempt,
                "owner": j.owner,
                "expires_at": j.expires_at,
            }
            for j in t.jobs.values()
            if j.state == JobState.RUNNING
        ][:200]
        latest = sorted(t.transitions.items(), key=lambda kv: -kv[0])[:recent]
        rows = [
            {
                "task": t.tasks[tr.task_id].key,
                "version": tr.version,
                "from": f"{tr.from_stage}/{tr.from_status}",
                "to": f"{tr.to_stage}/{tr.to_status}",
                "actor": tr.actor,
                "reason": tr.reason,
                "at": tr.at,
            }
            for _, tr in latest
        ]
        return StateSummary(
            by_stage=by_stage,
            by_status=by_status,
            running=running,
            recent=rows,
            spent=sum(by_repo.values(), Usage()),
            spent_by_repo=by_repo,
        )

    # -- leases ------------------------------------------------------------------------------

    def claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None:
        with self._write() as t:
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
                )
        return None

    def renew(self, claim: Claim, ttl_s: float) -> None:
        with self._write() as t:
            self._guard(t, claim, expires_at=self.now() + ttl_s)

    def unaccounted_runs(self) -> list[Run]:
        return [r for r in self._t.runs.values() if r.accounted_at is None]

    def lease_owners(self) -> list[str]:
        running = {j.owner for j in self._t.jobs.values() if j.state == JobState.RUNNING}
        return sorted(o for o in running if o)

    def void_leases(self, owner: str) -> int:
        with self._write() as t:
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
        with self._write() as t:
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
                    why = f"lease expired {job.attempt} times"
                    self._park(t, job.task_id, job.version, why, "sweeper")
                else:
                    requeued += 1
        if requeued or dead:
            self._notify()
        return SweepResult(requeued=requeued, dead=dead)

    def _park(self, t: _Tables, task_id: int, version: int, reason: str, actor: str) -> bool:
        task = t.tasks.get(task_id)
        if task is None or task.version != version:
            return False
        held = any(machine.holds_a_slot(e) for e in t.effects.values() if e.task_id == task_id)
        self._apply(t, task_id, version, machine.park(task, reason, actor, held))
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
            return self._park(t, task_id, version, reason, actor)

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
        self._mark(t, change.read, now)
        task = t.tasks[task_id]
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
        write = change.write
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

    def _free_slot(self, t: _Tables, task: Task, now: float) -> None:
        """The task gives its repository slot back: the time it held it is work."""
        if task.slot is None and task.slot_since is None:
            return
        t.tasks[task.id] = replace(task, slot=None, slot_since=None, worked_s=task.worked(now))

    def _close_runs(self, t: _Tables, job_id: int, outcome: RunOutcome, why: str) -> None:
        now = self.now()
        for run in list(t.runs.values()):
            if run.job_id == job_id and run.ended_at is None:
                t.runs[run.id] = replace(
                    run, ended_at=now, outcome=outcome.value, detail=f"closed for its worker: {why}"
                )

    def record_gate(self, claim: Claim, record: GateRecord) -> GateRecord:
        key = (record.task_id, record.version, record.gate, record.head_sha)
        with self._write() as t:
            self._guard(t, claim)
            if key not in t.gates:
                t.gates[key] = replace(record, at=self.now())
            return t.gates[key]

    def find_gate(self, task_id: int, version: int, gate: str, head_sha: str) -> GateRecord | None:
        return self._t.gates.get((task_id, version, gate, head_sha))

    def begin_effect(
        self, claim: Claim, key: str, kind: str, repo: str, precondition: str
    ) -> Effect:
        with self._write() as t:
            self._guard(t, claim)
            existing = t.effects.get(key)
            now = self.now()
            if existing is None or existing.state == EffectState.FAILED:
                # the SQL store's unique indexes: one merge in flight per repository, one
                # deploy starting per target
                for other_key, other in t.effects.items():
                    if other_key == key or other.repo != repo:
                        continue
                    merging = other.kind == EffectKind.MERGE == kind
                    if merging and other.state in UNRESOLVED_EFFECT_STATES:
                        raise Busy(f"another {kind} is in flight for {repo}")
                    deploying = EffectKind.DEPLOY.of(kind) and other.kind == kind
                    if deploying and other.state == EffectState.INITIATED:
                        raise Busy(f"another {kind} is in flight for {repo}")
            if existing is None:
                t.effects[key] = Effect(
                    key,
                    claim.task_id,
                    str(kind),
                    EffectState.INITIATED,
                    precondition,
                    {},
                    created_at=now,
                    updated_at=now,
                    repo=repo,
                )
                t.effect_ids[key] = t.next_id("effects")
            elif existing.state == EffectState.FAILED:
                t.effects[key] = replace(
                    existing,
                    state=EffectState.INITIATED,
                    precondition=precondition,
                    result={},
                    updated_at=now,
                )
        crashpoints.hit("effect.initiated")
        return self._t.effects[key]

    def finish_effect(
        self, claim: Claim, key: str, state: EffectState, result: Mapping[str, Any]
    ) -> Effect:
        with self._write() as t:
            self._guard(t, claim)
            effect = t.effects.get(key)
            if effect is None or effect.state not in UNRESOLVED_EFFECT_STATES:
                raise Conflict(f"effect {key} is already resolved")
            t.effects[key] = replace(
                effect, state=state, result=dict(result), updated_at=self.now()
            )
        if state == EffectState.SUCCEEDED:
            crashpoints.hit("effect.succeeded")
        return self._t.effects[key]

    def latest_effect(
        self, repo: str, kinds: Sequence[str], state: EffectState = EffectState.SUCCEEDED
    ) -> Effect | None:
        t = self._t
        found = [
            e
            for k, e in t.effects.items()
            if e.repo == repo and e.kind in kinds and e.state == state
        ]
        return max(found, key=lambda e: (e.updated_at, t.effect_ids[e.key]), default=None)

    def get_effect(self, key: str) -> Effect | None:
        return self._t.effects.get(key)

    def start_run(self, claim: Claim, agent: str, pid: int | None, log_path: str) -> int:
        with self._write() as t:
            self._guard(t, claim)
            run_id = t.next_id("runs")
            t.runs[run_id] = Run(
                id=run_id,
                task_id=claim.task_id,
                job_id=claim.job_id,
                stage=claim.stage,
                attempt=claim.attempt,
                agent=agent,
                pid=pid,
                exit_code=None,
                log_path=log_path,
                started_at=self.now(),
                ended_at=None,
                owner=claim.owner,
            )
            return run_id

    def finish_run(
        self,
        claim: Claim,
        run_id: int,
        exit_code: int | None,
        usage: Usage,
        outcome: RunOutcome = RunOutcome.EXITED,
        *,
        session: str | None = None,
        detail: str = "",
        tools: Sequence[str] = (),
        reported: Usage | None = None,
    ) -> None:
        with self._write() as t:
            self._guard(t, claim)
            t.runs[run_id] = replace(
                t.runs[run_id],
                exit_code=exit_code,
                outcome=outcome.value,
                ended_at=self.now(),
                session=session,
                detail=detail[:2000],
                tools=list(tools)[:500],
                reported=reported,
            )
            self._account(t, claim.task_id, run_id, usage)

    def record_usage(self, task_id: int, run_id: int, usage: Usage) -> None:
        with self._write() as t:
            self._account(t, task_id, run_id, usage)

    def _account(self, t: _Tables, task_id: int, run_id: int, usage: Usage) -> None:
        run = t.runs[run_id]
        if run.accounted_at is not None:
            return  # a run's usage is counted once
        t.runs[run_id] = replace(
            run,
            accounted_at=self.now(),
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cache_read=usage.cache_read,
            cache_write=usage.cache_write,
            cost_usd=usage.cost_usd,
        )
        task = t.tasks[task_id]
        total = task.spent + usage
        t.tasks[task_id] = replace(
            task,
            tokens_in=total.tokens_in,
            tokens_out=total.tokens_out,
            cache_read=total.cache_read,
            cache_write=total.cache_write,
            cost_usd=total.cost_usd,
        )

    def spending(self, task_id: int) -> dict[Stage, Usage]:
        out: dict[Stage, Usage] = {}
        for run in self.runs(task_id):
            out[run.stage] = out.get(run.stage, Usage()) + run.usage
        return out

    # -- the inbox ---------------------------------------------------------------------------

    def append_event(
        self,
        task_id: int,
        key: str,
        kind: str,
        actor: str,
        payload: Mapping[str, Any],
        *,
        cancel: bool = False,
    ) -> bool:
        with self._write(wakes=True) as t:
            if key in t.event_keys:
                return False
            task = t.tasks.get(task_id)
            if task is None:
                raise NotFound(f"no task with id {task_id}")
            now = self.now()
            event_id = t.next_id("events")
            t.events[event_id] = Event(event_id, task_id, key, str(kind), actor, dict(payload), now)
            t.event_keys[key] = event_id
            effect = machine.on_event(task.status, cancel)
            if effect.raise_cancel and task.cancel_requested_at is None:
                t.tasks[task_id] = replace(task, cancel_requested_at=now)
            if cancel:
                crashpoints.hit("cancel.flag")  # inside the write: a crash here loses the STOP
            if effect.wake:
                self._enqueue(t, task, task.version, task.stage, now, now)
                for job in list(t.jobs.values()):
                    waking = job.state == JobState.SUPERSEDED or (
                        job.state == JobState.QUEUED and job.run_after > now
                    )
                    if job.task_id == task_id and job.version == task.version and waking:
                        t.jobs[job.id] = replace(job, state=JobState.QUEUED, run_after=now)
        crashpoints.hit("inbox.event")
        return True

    def cancel_requested(self, task_id: int) -> bool:
        return self.get_task(task_id).cancel_requested_at is not None

    def pending_events(self, task_id: int) -> list[Event]:
        return [e for e in self.events(task_id) if e.processed_at is None]

    def mark_events(self, claim: Claim, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        with self._write() as t:
            self._guard(t, claim)
            self._mark(t, event_ids, self.now())

    def _mark(self, t: _Tables, event_ids: Sequence[int], now: float) -> None:
        for event_id in event_ids:
            event = t.events.get(event_id)
            if event is not None and event.processed_at is None:
                t.events[event_id] = replace(event, processed_at=now)
