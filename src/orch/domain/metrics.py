"""What `GET /metrics` reports, read from the store in one go: several orch processes (serve and
its workers) share one store, so figures kept in one process's memory would each tell a part.

The store fills a `MetricsSnapshot` with aggregate reads; `orch.web.metrics` renders it in the
Prometheus text format. Every figure here is either a count of records that never go away (a
counter: transitions, runs, usage) or a count of records as they are now (a gauge).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orch.domain.ledger import Usage

# a stage lasts from minutes (an agent's work) to days (a person's approval)
STAGE_BUCKETS_S: tuple[float, ...] = (
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
    86400.0,
    3 * 86400.0,
    7 * 86400.0,
)
# one agent run: seconds for a scripted agent, up to the half hour an attempt is allowed
RUN_BUCKETS_S: tuple[float, ...] = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
)

# the account the sweep writes on an agent run whose worker's lease expired when it takes the
# job back: the durable trace a reclaim leaves (the contract suite holds both stores to it)
RECLAIMED_RUN_DETAIL = "closed for its worker: its worker's lease expired"

# the store's running totals (its `counters` table): what leaves no record of its own
LEASE_RECLAIMS = "lease_reclaims"  # running jobs the sweep took back once their lease expired
FENCED_WRITES = "fenced_writes"  # writes refused because their claim no longer held the job

# an agent run's outcome while it has none: still running (or its worker died and no sweep has
# closed it yet), or closed by something that recorded no outcome
RUNNING = "running"
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class Histogram:
    """Observations against fixed upper bounds, as Prometheus counts them: `cumulative[i]` is
    how many were at most `bounds[i]`."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int = 0
    total: float = 0.0

    @classmethod
    def of(cls, bounds: Sequence[float], values: Iterable[float]) -> Histogram:
        seen = list(values)
        return cls(
            tuple(bounds),
            tuple(sum(1 for v in seen if v <= b) for b in bounds),
            len(seen),
            float(sum(seen)),
        )


@dataclass(frozen=True)
class MetricsSnapshot:
    at: float  # the store's clock when it was read
    tasks: dict[tuple[str, str], int] = field(default_factory=dict)  # (stage, status)
    # (from stage, to stage, to status): every stage write a task went through
    transitions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # stage -> the time from entering the stage to leaving it, people's waits included, one
    # observation per stage a task has left
    stage_seconds: dict[str, Histogram] = field(default_factory=dict)
    # (stage, agent) -> how long each finished agent run took
    run_seconds: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    runs: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (stage, agent, outcome)
    usage: dict[tuple[str, str, str], Usage] = field(default_factory=dict)  # (repo, stage, agent)
    jobs: dict[str, int] = field(default_factory=dict)  # state
    queue_depth: int = 0  # queued jobs due now: waiting for a worker or a repository slot
    oldest_wait_s: float = 0.0  # how long the longest-waiting of those has been due
    reclaimed_runs: int = 0  # agent runs closed by the sweep after their worker's lease expired
    effects: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, state)
    counters: dict[str, int] = field(default_factory=dict)  # LEASE_RECLAIMS, FENCED_WRITES
