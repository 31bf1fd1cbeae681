"""What `GET /metrics` reads, in the memory store: the SQL store's aggregates, over the tables
as one write left them."""

from __future__ import annotations

from collections import Counter, defaultdict

from orch.adapters.store.memory.base import MemoryBase, _Tables
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


class MetricsRecords(MemoryBase):
    def metrics(self) -> MetricsSnapshot:
        t = self._t  # writes replace the tables whole: this is one consistent state
        now = self.now()
        due = [
            j.run_after
            for j in t.jobs.values()
            if j.state == JobState.QUEUED and j.run_after <= now
        ]
        runs = list(t.runs.values())
        repo_of = {task.id: task.repo for task in t.tasks.values()}

        usage: dict[tuple[str, str, str], Usage] = defaultdict(Usage)
        for r in runs:
            counted = r.usage if r.accounted_at is not None else Usage()  # as the SQL store
            usage[(repo_of[r.task_id], r.stage.value, r.agent)] += counted
        ran: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in runs:
            if r.ended_at is not None:
                ran[(r.stage.value, r.agent)].append(r.ended_at - r.started_at)

        return MetricsSnapshot(
            at=now,
            tasks=dict(Counter((x.stage.value, x.status.value) for x in t.tasks.values())),
            transitions=dict(
                Counter(
                    (x.from_stage.value, x.to_stage.value, x.to_status.value)
                    for x in t.transitions.values()
                )
            ),
            stage_seconds={
                stage: Histogram.of(STAGE_BUCKETS_S, seen)
                for stage, seen in _stage_visits(t).items()
            },
            run_seconds={key: Histogram.of(RUN_BUCKETS_S, seen) for key, seen in ran.items()},
            runs=dict(
                Counter(
                    (
                        r.stage.value,
                        r.agent,
                        r.outcome or (RUNNING if r.ended_at is None else UNRECORDED),
                    )
                    for r in runs
                )
            ),
            usage=dict(usage),
            jobs=dict(Counter(j.state.value for j in t.jobs.values())),
            queue_depth=len(due),
            oldest_wait_s=max(0.0, now - min(due)) if due else 0.0,
            reclaimed_runs=sum(
                1
                for r in runs
                if r.outcome == RunOutcome.LEASE_LOST and r.detail == RECLAIMED_RUN_DETAIL
            ),
            effects=dict(Counter((e.kind, e.state.value) for e in t.effects.values())),
            counters=dict(t.counters),
        )


def _stage_visits(t: _Tables) -> dict[str, list[float]]:
    """Per stage, how long each visit lasted: from the task's previous change of stage (or its
    making) to the change that left it."""
    created = {task.id: task.created_at for task in t.tasks.values()}
    visits: dict[str, list[float]] = defaultdict(list)
    entered: dict[int, float] = {}
    for x in sorted(t.transitions.values(), key=lambda x: (x.task_id, x.version)):
        if x.from_stage == x.to_stage:
            continue
        since = entered.get(x.task_id, created[x.task_id])
        visits[x.from_stage.value].append(x.at - since)
        entered[x.task_id] = x.at
    return visits
