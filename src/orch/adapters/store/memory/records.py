"""Gate verdicts, effects, runs, the ledger and tasks' inboxes, in the memory store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from orch import crashpoints
from orch.adapters.store.memory.base import MemoryBase, _Tables
from orch.domain import machine
from orch.domain.errors import Busy, Conflict, NotFound, in_flight
from orch.domain.ledger import AGENTS_OWN, Usage, UsageFrom
from orch.domain.model import (
    Claim,
    Effect,
    Event,
    GateRecord,
    Run,
)
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    JobState,
    RunOutcome,
    Stage,
    holds_a_slot,
)
from orch.ports import RunUsage


class Records(MemoryBase):
    """Gate verdicts, effects, agent runs, the ledger and the inbox."""

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
                        raise Busy(in_flight(kind, repo))
                    deploying = EffectKind.DEPLOY.of(kind) and other.kind == kind
                    if deploying and other.state == EffectState.INITIATED:
                        raise Busy(in_flight(kind, repo))
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
        with self._write(wakes=True) as t:
            self._guard(t, claim)
            effect = t.effects.get(key)
            if effect is None or effect.state not in UNRESOLVED_EFFECT_STATES:
                raise Conflict(f"effect {key} is already resolved")
            t.effects[key] = replace(
                effect, state=state, result=dict(result), updated_at=self.now()
            )
            if state not in UNRESOLVED_EFFECT_STATES:
                _wake_waiting(t, effect, self.now())
        if state == EffectState.SUCCEEDED:
            crashpoints.hit("effect.succeeded")
        return self._t.effects[key]

    def unsettled_merges(self) -> list[Effect]:
        t = self._t
        found = [
            e
            for e in t.effects.values()
            if e.kind == EffectKind.MERGE
            and e.state in UNRESOLVED_EFFECT_STATES
            and not self._running(t, e.task_id)
        ]
        return sorted(found, key=lambda e: t.effect_ids[e.key])

    def settle_effect(self, key: str, state: EffectState, result: Mapping[str, Any]) -> bool:
        with self._write(wakes=True) as t:
            effect = t.effects.get(key)
            if effect is None or effect.state not in UNRESOLVED_EFFECT_STATES:
                return False
            if self._running(t, effect.task_id):
                return False
            t.effects[key] = replace(
                effect, state=state, result=dict(result), updated_at=self.now()
            )
            if state not in UNRESOLVED_EFFECT_STATES:
                _wake_waiting(t, effect, self.now())
            return True

    def failed_effects(self, kind: str) -> list[Effect]:
        t = self._t
        found = [e for e in t.effects.values() if e.kind == kind and e.state == EffectState.FAILED]
        return sorted(found, key=lambda e: t.effect_ids[e.key])

    def mark_redone(self, key: str, result: Mapping[str, Any]) -> bool:
        with self._write() as t:
            effect = t.effects.get(key)
            if effect is None or effect.state != EffectState.FAILED:
                return False
            t.effects[key] = replace(
                effect, state=EffectState.SUCCEEDED, result=dict(result), updated_at=self.now()
            )
            return True

    @staticmethod
    def _running(t: _Tables, task_id: int) -> bool:
        return any(j.task_id == task_id and j.state == JobState.RUNNING for j in t.jobs.values())

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
        usage_from: UsageFrom | None = None,
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
            self._account(t, claim.task_id, run_id, usage, usage_from)

    def record_usage(
        self, task_id: int, run_id: int, usage: Usage, usage_from: UsageFrom | None = None
    ) -> None:
        with self._write() as t:
            self._account(t, task_id, run_id, usage, usage_from)

    def record_usages(self, spent: Sequence[RunUsage]) -> None:
        if not spent:
            return
        with self._write() as t:
            for one in sorted(spent, key=lambda s: (s.run_id, s.task_id)):
                self._account(t, one.task_id, one.run_id, one.usage, one.usage_from)

    def note_spending(self, run_id: int, usage: Usage, retrying: str = "") -> None:
        with self._lock:
            known = self._t.runs.get(run_id)
        if known is None:
            return
        with self._write(shown=known.retrying != retrying[:2000]) as t:
            run = t.runs[run_id]
            if run.accounted_at is None:
                t.runs[run_id] = replace(run, **asdict(usage), retrying=retrying[:2000])

    def retrying_runs(self) -> dict[int, str]:
        with self._lock:
            runs = list(self._t.runs.values())
        return {r.task_id: r.retrying for r in runs if r.ended_at is None and r.retrying}

    def open_circuit(self, name: str, until: float, cooldown_s: float, reason: str) -> None:
        with self._write() as t:
            if name not in t.circuits or t.circuits[name][0] < until:
                t.circuits[name] = (until, cooldown_s, reason)

    def close_circuit(self, name: str) -> None:
        with self._write() as t:
            t.circuits.pop(name, None)

    def circuits(self) -> dict[str, tuple[float, float, str]]:
        with self._lock:
            return dict(self._t.circuits)

    def _account(
        self,
        t: _Tables,
        task_id: int,
        run_id: int,
        usage: Usage,
        usage_from: UsageFrom | None,
    ) -> None:
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
            usage_from=usage_from or AGENTS_OWN,
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
            if run.accounted_at is not None:
                out[run.stage] = out.get(run.stage, Usage()) + run.usage
        return out

    def spent_since(self, since: float, repo: str | None = None) -> Usage:
        with self._lock:
            runs = list(self._t.runs.values())
            repos = {t.id: t.repo for t in self._t.tasks.values()}
        total = Usage()
        for run in runs:
            if run.started_at >= since and (repo is None or repos.get(run.task_id) == repo):
                total = total + run.usage
        return total

    def spend_over_time(self, since: float, bucket_s: float) -> dict[float, Usage]:
        with self._lock:
            runs = list(self._t.runs.values())
        out: dict[float, Usage] = {}
        for run in runs:
            if run.started_at >= since and run.accounted_at is not None:
                start = (run.started_at // bucket_s) * bucket_s
                out[start] = out.get(start, Usage()) + run.usage
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
            elif effect.hurry:
                for job in list(t.jobs.values()):
                    later = job.state == JobState.QUEUED and job.run_after > now
                    if job.task_id == task_id and job.version == task.version and later:
                        t.jobs[job.id] = replace(job, run_after=now)
        crashpoints.hit("inbox.event")
        return True

    def cancel_requested(self, task_id: int) -> bool:
        return self.get_task(task_id).cancel_requested_at is not None

    def cancels_asked(self, task_ids: Sequence[int]) -> list[int]:
        with self._lock:
            tasks = [self._t.tasks.get(i) for i in task_ids]
        return [t.id for t in tasks if t is not None and t.cancel_requested_at is not None]

    def pending_events(self, task_id: int) -> list[Event]:
        return [e for e in self.events(task_id) if e.processed_at is None]

    def mark_events(self, claim: Claim, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        with self._write() as t:
            self._guard(t, claim)
            self._mark(t, event_ids, self.now())


def _wake_waiting(t: _Tables, effect: Effect, now: float) -> None:
    """As the SQL store does: the jobs retried because `effect`'s slot was taken are due now."""
    if not holds_a_slot(effect.kind):
        return
    waiting = in_flight(effect.kind, effect.repo)
    for job_id, job in t.jobs.items():
        if (
            job.state == JobState.QUEUED
            and job.repo == effect.repo
            and job.last_error == waiting
            and job.run_after > now
        ):
            t.jobs[job_id] = replace(job, run_after=now)
