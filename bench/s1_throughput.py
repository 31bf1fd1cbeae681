"""S1, stage-transition throughput.

N tasks x 7 agent stages (the default pipeline's analysis .. deploy) over 10 repositories. Every
stage runs the instant stub agent, gates and actions are removed (quality gates "pass"), there are
no checkpoints, and the forge is the in-memory one (stubbed git, no merge or deploy). The tasks are
filed first, then the dispatcher starts with C worker slots and runs until every task is done.

Measured: transitions/s over the middle 80% of the stage transitions (from the store's
`transitions.at`), store transactions per transition, orchestrator CPU-ms per transition, and the
gap on one worker slot from an agent's exit (the stub's last instruction) to the start of the next
agent on that slot (Popen returned).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import IN_HOME, median, percentile, pg_schema, stub_argv, stub_times
from orch.adapters.agents.command import CommandAgent
from orch.adapters.process import Launchers
from orch.adapters.sandbox.policy import LandlockSandbox
from orch.adapters.store import schema as t
from orch.adapters.store.sql import SqlStore
from orch.bootstrap import workers
from orch.domain import pipeline as pl
from orch.ports import Agent, AgentProcess, AgentRequest, RepoSettings
from orch.services.dispatcher import Dispatcher, DispatcherSettings
from orch.services.engine import EngineSettings
from orch.services.intake import Intake
from orch.testing import MemoryForge, MemoryNotifier, MemoryRepos

WARM_LAUNCHERS = 2  # worker.warm_launchers' default

STAGES = 7


def bench_pipeline() -> pl.Pipeline:
    """The default pipeline with every stage run by the stub, and nothing else to wait for."""
    base = pl.default_pipeline()
    return replace(
        base,
        checkpoints=(),
        stages=tuple(replace(s, agent="stub", gates=(), actions=()) for s in base.stages),
    )


@dataclass
class S1Result:
    store: str
    slots: int
    tasks: int
    transitions: int = 0
    rate: float = float("nan")  # transitions/s, middle 80%
    wall_s: float = float("nan")
    txns_per_transition: float = float("nan")
    statements_per_transition: float = float("nan")
    cpu_ms_per_transition: float = float("nan")
    gaps_s: list[float] = field(default_factory=list)  # exit -> next Popen return, same slot
    complete: bool = True
    note: str = ""


class TimedAgent:
    """Wraps the command agent; remembers which worker thread started which stub, and when.
    Everything else an agent has (its preflight, meters, environment) is the command agent's."""

    def __init__(self, inner: CommandAgent) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()
        self.starts: list[tuple[int, str, float]] = []  # (thread, stub file name, Popen returned)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start(self, request: AgentRequest) -> AgentProcess:
        proc = self.inner.start(request)
        now = time.time()
        name = f"{request.task_key}.{request.stage.value}.{request.attempt}"
        with self._lock:
            self.starts.append((threading.get_ident(), name, now))
        return proc


@contextmanager
def _store_url(kind: str, pg_url: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    if kind == "pg":
        assert pg_url is not None
        with pg_schema(pg_url) as url:
            yield url, "NORMAL"
    else:
        yield f"sqlite:///{tmp / 'orch.db'}", "FULL" if kind == "sqlite-full" else "NORMAL"


def run(kind: str, slots: int, n_tasks: int, pg_url: str | None, repos: int = 10) -> S1Result:
    result = S1Result(kind, slots, n_tasks)
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-s1-"))
    logs = tmp / "logs"
    try:
        with _store_url(kind, pg_url, tmp) as (url, synchronous):
            store = SqlStore(url, synchronous=synchronous)
            forge = MemoryForge({f"repo{i}": {"README.md": b"bench\n"} for i in range(repos)})
            try:
                _run(store, forge, result, logs, slots, n_tasks, repos)
            finally:
                store.close()
                forge.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def stub(launchers: Launchers) -> CommandAgent:
    """The stub agent, started as orch serve starts its agents: through `launchers`."""
    return CommandAgent("stub", stub_argv(IN_HOME), launchers=launchers)


def stub_dispatcher(
    store: SqlStore,
    forge: MemoryForge,
    repos: MemoryRepos,
    notifier: MemoryNotifier,
    logs: Path,
    slots: int,
    agent: Agent,
    launchers: Launchers,
) -> Dispatcher:
    """The in-process dispatcher S1 and S3 drive: `agent` for every stage, launchers waiting
    ahead as in orch serve, no retry backoff."""
    _, dispatcher = workers(
        store=store,
        forge=forge,
        agents={"stub": agent},
        repos=repos,
        notifier=notifier,
        sandbox=LandlockSandbox(protect=()),
        engine=EngineSettings(logs_dir=logs, homes_dir=logs / "homes", backoff_base_s=0.0),
        dispatcher=DispatcherSettings(slots=slots, warm_launchers=WARM_LAUNCHERS),
        launchers=launchers,
    )
    return dispatcher


def _run(
    store: SqlStore,
    forge: MemoryForge,
    result: S1Result,
    logs: Path,
    slots: int,
    n_tasks: int,
    n_repos: int,
) -> None:
    store.migrate()
    names = [f"repo{i}" for i in range(n_repos)]
    repos = MemoryRepos(*(RepoSettings(name=n, test_command="true", max_active=50) for n in names))
    notifier = MemoryNotifier()
    launchers = Launchers()
    agent = TimedAgent(stub(launchers))
    dispatcher = stub_dispatcher(store, forge, repos, notifier, logs, slots, agent, launchers)
    pipeline = bench_pipeline()
    intake = Intake(store, repos, lambda _repo: pipeline)
    for i in range(n_tasks):
        intake.file(names[i % n_repos], f"bench task {i}", "S1")

    commits: list[None] = []  # list.append is atomic across the worker threads
    statements: list[None] = []

    def count(_conn: object) -> None:
        commits.append(None)

    def count_statement(*_args: object) -> None:
        statements.append(None)

    sa.event.listen(store.engine, "commit", count)
    sa.event.listen(store.engine, "after_cursor_execute", count_statement)
    cpu0, wall0 = time.process_time(), time.monotonic()
    deadline = wall0 + max(120.0, n_tasks * STAGES * 0.25)
    dispatcher.start()
    try:
        while time.monotonic() < deadline:
            finished = sum(
                1 for _, text in notifier.sent if "is done" in text or "needs an" in text
            )
            if finished >= n_tasks:
                break
            time.sleep(0.02)
        else:
            result.complete = False
    finally:
        dispatcher.stop()
    cpu = time.process_time() - cpu0
    result.wall_s = time.monotonic() - wall0
    sa.event.remove(store.engine, "commit", count)
    sa.event.remove(store.engine, "after_cursor_execute", count_statement)

    with store.engine.connect() as conn:
        times = sorted(
            float(r[0])
            for r in conn.execute(sa.select(t.transitions.c.at).where(t.transitions.c.version > 1))
        )
        parked = conn.execute(
            sa.select(sa.func.count()).where(t.tasks.c.status != "done")
        ).scalar_one()
    result.transitions = len(times)
    if parked:
        result.note = f"{parked} task(s) not done"
    if not result.complete:
        result.note = (result.note + "; " if result.note else "") + "timed out"
    if len(times) >= 10:
        lo, hi = int(0.1 * len(times)), int(0.9 * len(times)) - 1
        if times[hi] > times[lo]:
            result.rate = (hi - lo) / (times[hi] - times[lo])
        window = (times[lo], times[hi])
    else:
        window = (float("-inf"), float("inf"))
    if times:
        result.txns_per_transition = len(commits) / len(times)
        result.statements_per_transition = len(statements) / len(times)
        result.cpu_ms_per_transition = cpu * 1000.0 / len(times)
    result.gaps_s = _slot_gaps(agent, logs / "homes", window)


def _slot_gaps(agent: TimedAgent, homes: Path, window: tuple[float, float]) -> list[float]:
    """On each worker thread: the next agent's Popen return minus the last stub's exit time."""
    by_thread: dict[int, list[tuple[float, str]]] = {}
    for thread, name, popen_at in agent.starts:
        by_thread.setdefault(thread, []).append((popen_at, name))
    gaps: list[float] = []
    for starts in by_thread.values():
        starts.sort()
        for (_, prev), (popen_at, _) in itertools.pairwise(starts):
            times = stub_times(homes, prev)
            if len(times) < 2:
                continue
            ended = times[1]
            if window[0] <= ended <= window[1]:
                gaps.append(popen_at - ended)
    return gaps


def summary(results: list[S1Result]) -> dict[str, float]:
    """Medians over the rounds of one configuration."""
    gaps = [g for r in results for g in r.gaps_s]
    return {
        "rate": median([r.rate for r in results]),
        "txns": median([r.txns_per_transition for r in results]),
        "statements": median([r.statements_per_transition for r in results]),
        "cpu_ms": median([r.cpu_ms_per_transition for r in results]),
        "gap_p50_ms": median([median(r.gaps_s) for r in results if r.gaps_s]) * 1e3,
        "gap_p99_ms": median([percentile(r.gaps_s, 99) for r in results if r.gaps_s]) * 1e3,
        "gap_p99_all_ms": percentile(gaps, 99) * 1e3,
        "transitions": median([float(r.transitions) for r in results]),
    }
