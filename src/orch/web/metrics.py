"""GET /metrics in the Prometheus text format.

serve and its workers are separate processes sharing one store, so nothing is counted in this
process's memory: each scrape reads the store once (`Store.metrics`, aggregates computed by the
database) and renders what it holds. Counters are counts of records that are never deleted
(transitions, finished agent runs, their usage), so they only grow, whichever process serves.

Lease reclaims and writes refused by fencing leave no record of their own: the store keeps a
running total of each (its `counters` table) in the transaction that does it, or, for a refused
write, in one of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from fastapi import Depends, FastAPI, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from orch.bootstrap import App
from orch.domain.access import Role
from orch.domain.metrics import (
    FENCED_WRITES,
    LEASE_RECLAIMS,
    RUNNING,
    Histogram,
    MetricsSnapshot,
)
from orch.domain.states import (
    WORK_STAGES,
    EffectKind,
    EffectState,
    JobState,
    Stage,
    TaskStatus,
)
from orch.services.breaker import Circuit
from orch.web.access import needs
from orch.web.looplag import LoopLag

# the classic text format: every name here is a plain one, and every Prometheus reads it
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

K = TypeVar("K")
Circuits = Callable[[], Mapping[str, Mapping[str, object]]]

# the (stage, status) pairs a task can be in, reported at zero when no task is, so a series
# does not vanish when its last task leaves
_TASK_STATES: tuple[tuple[str, str], ...] = (
    *(
        (stage.value, status.value)
        for stage in WORK_STAGES
        for status in (TaskStatus.ACTIVE, TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR)
    ),
    (Stage.DONE.value, TaskStatus.DONE.value),
    (Stage.CANCELLED.value, TaskStatus.CANCELLED.value),
)


class StoreCollector:
    """A prometheus_client collector: `collect` reads the store and the circuits afresh."""

    def __init__(self, read: Callable[[], MetricsSnapshot], circuits: Circuits) -> None:
        self.read = read
        self.circuits = circuits

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read(), self.circuits())


class LagCollector:
    """This process's event-loop lag (orch.web.looplag), from its own memory."""

    def __init__(self, lag: LoopLag) -> None:
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        h = self.lag.histogram()
        family = HistogramMetricFamily(
            "orch_event_loop_lag_seconds",
            "How much later than due the API's event loop ran a probe woken every"
            f" {self.lag.interval_s:g} s: what every request waited for the loop, at least.",
        )
        family.add_metric([], _buckets(h), h.total)
        yield family


def families(m: MetricsSnapshot, circuits: Mapping[str, Mapping[str, object]]) -> list[Metric]:
    return [
        *_task_families(m),
        *_run_families(m),
        *_queue_families(m),
        *_effect_families(m),
        *_circuit_families(circuits),
    ]


def _task_families(m: MetricsSnapshot) -> list[Metric]:
    tasks = GaugeMetricFamily(
        "orch_tasks", "Tasks at each stage, by status.", labels=["stage", "status"]
    )
    for (stage, status), n in _zero_filled(m.tasks, _TASK_STATES).items():
        tasks.add_metric([stage, status], n)

    transitions = CounterMetricFamily(
        "orch_transitions",
        "Stage and status changes tasks went through.",
        labels=["from_stage", "to_stage", "to_status"],
    )
    for (before, after, status), n in sorted(m.transitions.items()):
        transitions.add_metric([before, after, status], n)

    stages = HistogramMetricFamily(
        "orch_stage_duration_seconds",
        "Time from entering a stage to leaving it, waits for people included; one observation"
        " per stage a task left.",
        labels=["stage"],
    )
    for stage, h in sorted(m.stage_seconds.items()):
        stages.add_metric([stage], _buckets(h), h.total)
    return [tasks, transitions, stages]


def _run_families(m: MetricsSnapshot) -> list[Metric]:
    runs = HistogramMetricFamily(
        "orch_agent_run_duration_seconds",
        "How long finished agent runs took.",
        labels=["stage", "agent"],
    )
    for (stage, agent), h in sorted(m.run_seconds.items()):
        runs.add_metric([stage, agent], _buckets(h), h.total)

    ended = CounterMetricFamily(
        "orch_agent_runs",
        "Finished agent runs, by how they ended.",
        labels=["stage", "agent", "outcome"],
    )
    running = GaugeMetricFamily(
        "orch_agent_runs_running",
        "Agent runs not ended (running, or their worker died and no sweep has closed them yet).",
        labels=["stage", "agent"],
    )
    for (stage, agent, outcome), n in sorted(m.runs.items()):
        if outcome == RUNNING:
            running.add_metric([stage, agent], n)
        else:
            ended.add_metric([stage, agent, outcome], n)

    tokens = CounterMetricFamily(
        "orch_agent_tokens",
        "Tokens agents used, by kind.",
        labels=["repo", "stage", "agent", "kind"],
    )
    dollars = CounterMetricFamily(
        "orch_agent_cost_usd", "What agents cost, in US dollars.", labels=["repo", "stage", "agent"]
    )
    for (repo, stage, agent), usage in sorted(m.usage.items()):
        for kind, n in (
            ("input", usage.tokens_in),
            ("output", usage.tokens_out),
            ("cache_read", usage.cache_read),
            ("cache_write", usage.cache_write),
        ):
            tokens.add_metric([repo, stage, agent, kind], n)
        dollars.add_metric([repo, stage, agent], usage.cost_usd)
    return [runs, ended, running, tokens, dollars]


def _queue_families(m: MetricsSnapshot) -> list[Metric]:
    jobs = GaugeMetricFamily("orch_jobs", "Jobs, by state.", labels=["state"])
    for state, n in _zero_filled(m.jobs, [s.value for s in JobState]).items():
        jobs.add_metric([state], n)
    return [
        jobs,
        GaugeMetricFamily(
            "orch_queue_depth",
            "Queued jobs due now, waiting for a worker or a repository slot.",
            value=m.queue_depth,
        ),
        GaugeMetricFamily(
            "orch_queue_oldest_wait_seconds",
            "How long the longest-waiting queued job has been due (0 with none).",
            value=m.oldest_wait_s,
        ),
        CounterMetricFamily(
            "orch_agent_runs_reclaimed",
            "Agent runs the sweep took back after their worker's lease expired (a reclaim while"
            " no agent ran leaves no record and is not counted).",
            value=m.reclaimed_runs,
        ),
        CounterMetricFamily(
            "orch_lease_reclaims",
            "Running jobs the sweep took back (requeued or dead-lettered) once their worker's"
            " lease expired.",
            value=m.counters.get(LEASE_RECLAIMS, 0),
        ),
        CounterMetricFamily(
            "orch_fenced_writes",
            "Writes refused because their claim no longer held the job: a worker that lost its"
            " lease, stopped before it could act twice.",
            value=m.counters.get(FENCED_WRITES, 0),
        ),
    ]


def _effect_families(m: MetricsSnapshot) -> list[Metric]:
    effects = GaugeMetricFamily(
        "orch_effects",
        "Effects (merges, deploys, notifications...) by state.",
        labels=["kind", "state"],
    )
    for (kind, state), n in sorted(m.effects.items()):
        effects.add_metric([kind, state], n)
    notifications = GaugeMetricFamily(
        "orch_notifications", "Notifications in the outbox, by state.", labels=["state"]
    )
    for state in EffectState:
        notifications.add_metric(
            [state.value], m.effects.get((EffectKind.NOTIFY.value, state.value), 0)
        )
    return [effects, notifications]


def _circuit_families(circuits: Mapping[str, Mapping[str, object]]) -> list[Metric]:
    state = GaugeMetricFamily(
        "orch_circuit_state",
        "Each circuit breaker in this process (an agent's, by its name, or the forge's):"
        " 1 for the state it is in.",
        labels=["circuit", "state"],
    )
    failures = GaugeMetricFamily(
        "orch_circuit_failures_in_a_row",
        "Provider failures in a row, per circuit.",
        labels=["circuit"],
    )
    retry_in = GaugeMetricFamily(
        "orch_circuit_retry_in_seconds",
        "Until an open circuit lets a probe go.",
        labels=["circuit"],
    )
    for name, c in sorted(circuits.items()):
        for circuit in Circuit:
            state.add_metric([name, circuit.value], 1 if c.get("circuit") == circuit else 0)
        failures.add_metric([name], _number(c.get("failures_in_a_row")))
        retry_in.add_metric([name], _number(c.get("retry_in_s")))
    return [state, failures, retry_in]


def _zero_filled(counts: Mapping[K, int], known: Iterable[K]) -> dict[K, int]:
    return {**dict.fromkeys(known, 0), **counts}


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return [
        *((str(float(b)), float(n)) for b, n in zip(h.bounds, h.cumulative, strict=True)),
        ("+Inf", float(h.count)),
    ]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def registry_for(app: App) -> CollectorRegistry:
    """A registry of this app's own: prometheus_client's global one would mix in whatever else
    the process registered, and two apps in one process (tests) would collide."""
    registry = CollectorRegistry()

    def circuits() -> dict[str, dict[str, object]]:
        breakers = app.engine.breakers
        seen = breakers.states()
        return {name: seen.get(name) or breakers.state(name) for name in {*app.agents, *seen}}

    registry.register(StoreCollector(app.store.metrics, circuits))
    return registry


def add_metrics(api: FastAPI, app: App, lag: LoopLag | None = None) -> None:
    registry = registry_for(app)
    if lag is not None:
        registry.register(LagCollector(lag))

    @api.get(
        "/metrics",
        dependencies=[Depends(needs(app.store, Role.VIEWER))],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        """Prometheus metrics, read from the store at each scrape."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)
