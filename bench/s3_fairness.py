"""S3, fairness and per-repository serialisation.

N tasks x 3 agent stages (analysis, architecture, development) over 10 repositories, C=4 worker
slots (fewer than the repositories), the serial gate on: each repository's `max_active` is 1, so
at most one task of a repository is active at a time. Every stage runs the stub, which sleeps
for a duration drawn from a seeded sequence (0.2-1.0 s, times `scale`) and named in the task's
title (`s.<stage>=S`). The tasks are filed first, then the dispatcher starts, in this process,
as in S1 (the in-memory forge, no gates, no checkpoints).

Two orders of filing: (i) uniform, the tasks dealt to the repositories in turn; (ii) skewed,
repo0's 55% filed first, then the others' equal shares.

Everything is read from the stubs' own start and exit times, so orch's figures are judged from
outside it:
- violations: pairs of tasks of one repository active at once (a task is active from its first
  stage's start to its last stage's exit);
- first dispatch: per repository, its first stub's start after the dispatcher started;
- Jain index of the agent-seconds each repository got while every repository still had work;
- idle slot-seconds while a job was eligible (the next stage of an active task, or the first
  stage of a repository with no active task), as a share of C x makespan;
- makespan over LB = max(total work / C, the largest repository's serial work).
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.s1_throughput import _store_url, bench_pipeline, stub, stub_dispatcher
from bench.serve import wait_for
from orch.adapters.process import Launchers
from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.ports import RepoSettings
from orch.services.intake import Intake
from orch.testing import MemoryForge, MemoryNotifier, MemoryRepos

REPOS = 10
SLOTS = 4
STAGES = ("analysis", "architecture", "development")
SEED = 20240603


@dataclass
class S3Result:
    store: str
    variant: str
    tasks: int
    violations: int = 0
    makespan_s: float = float("nan")
    lower_bound_s: float = float("nan")
    jain: float = float("nan")
    idle_share: float = float("nan")  # idle eligible slot-seconds / (C x makespan)
    first_dispatch_s: list[float] = field(default_factory=list)  # per repository
    stage_s: float = 0.0  # the longest stage duration, for the skewed case's target
    note: str = ""


def plan(variant: str, n_tasks: int, scale: float) -> list[tuple[int, dict[str, float]]]:
    """(repository index, stage -> seconds) of each task, in filing order."""
    rng = random.Random(SEED)
    if variant == "uniform":
        repos = [i % REPOS for i in range(n_tasks)]
    else:
        first = round(0.55 * n_tasks)
        rest = (n_tasks - first) // (REPOS - 1)
        repos = [0] * first + [1 + i % (REPOS - 1) for i in range(rest * (REPOS - 1))]
    return [(r, {s: round(rng.uniform(0.2, 1.0) * scale, 3) for s in STAGES}) for r in repos]


def s3_pipeline() -> pl.Pipeline:
    base = bench_pipeline()
    return replace(base, stages=tuple(s for s in base.stages if s.stage.value in STAGES))


def run(kind: str, variant: str, n_tasks: int, scale: float, pg_url: str | None) -> S3Result:
    tasks = plan(variant, n_tasks, scale)
    result = S3Result(kind, variant, len(tasks))
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-s3-"))
    try:
        with _store_url(kind, pg_url, tmp) as (url, synchronous):
            store = SqlStore(url, synchronous=synchronous)
            forge = MemoryForge({f"repo{i}": {"README.md": b"bench\n"} for i in range(REPOS)})
            try:
                _run(store, forge, result, tmp / "logs", tasks)
            finally:
                store.close()
                forge.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _run(
    store: SqlStore,
    forge: MemoryForge,
    result: S3Result,
    logs: Path,
    tasks: list[tuple[int, dict[str, float]]],
) -> None:
    store.migrate()
    names = [f"repo{i}" for i in range(REPOS)]
    # the serial gate: one active task per repository
    repos = MemoryRepos(*(RepoSettings(name=n, test_command="true", max_active=1) for n in names))
    notifier = MemoryNotifier()
    launchers = Launchers()
    dispatcher = stub_dispatcher(
        store, forge, repos, notifier, logs, SLOTS, stub(launchers), launchers
    )
    pipeline = s3_pipeline()
    intake = Intake(store, repos, lambda _repo: pipeline)
    keys: dict[str, int] = {}
    for i, (r, durations) in enumerate(tasks):
        title = f"S3 task {i} " + " ".join(f"s.{s}={d}" for s, d in durations.items())
        keys[intake.file(names[r], title, "S3").key] = r
    total = sum(sum(d.values()) for _, d in tasks)
    per_repo = [sum(sum(d.values()) for r, d in tasks if r == i) for i in range(REPOS)]
    result.lower_bound_s = max(total / SLOTS, max(per_repo))
    result.stage_s = max(max(d.values()) for _, d in tasks)

    t0 = time.time()
    dispatcher.start()
    try:

        def finished() -> bool:
            done = sum(1 for _, text in notifier.sent if "is done" in text or "needs an" in text)
            return done >= len(tasks)

        if not wait_for(finished, max(120.0, 4 * result.lower_bound_s), 0.05):
            result.note = "timed out"
    finally:
        dispatcher.stop()
    runs = _stub_runs(logs / "homes", keys)
    if len(runs) < len(tasks) * len(STAGES):
        result.note = (result.note + "; " if result.note else "") + (
            f"{len(runs)} of {len(tasks) * len(STAGES)} stage runs recorded"
        )
    measure(result, runs, t0)


def _stub_runs(homes: Path, keys: dict[str, int]) -> list[tuple[int, str, float, float]]:
    """(repository, task key, start, exit) of every stub run that wrote both times."""
    out = []
    for path in homes.glob("*/*.*.*"):
        if path.suffix == ".pid":
            continue
        key = path.name.split(".")[0]
        if key not in keys:
            continue
        try:
            start, end = (float(x) for x in path.read_text().split()[:2])
        except (OSError, ValueError):
            continue
        out.append((keys[key], key, start, end))
    return out


def measure(result: S3Result, runs: list[tuple[int, str, float, float]], t0: float) -> None:
    if not runs:
        return
    spans: dict[str, tuple[int, float, float]] = {}
    for r, key, start, end in runs:
        _, s0, e0 = spans.get(key, (r, start, end))
        spans[key] = (r, min(s0, start), max(e0, end))
    end_all = max(e for _, _, _, e in runs)
    result.makespan_s = end_all - t0

    # pairs of tasks of one repository active at once
    by_repo: dict[int, list[tuple[float, float]]] = {}
    for r, s, e in spans.values():
        by_repo.setdefault(r, []).append((s, e))
    violations = 0
    for intervals in by_repo.values():
        intervals.sort()
        for i, (s, _) in enumerate(intervals):
            violations += sum(1 for _, e in intervals[:i] if e > s)
    result.violations = violations

    result.first_dispatch_s = sorted(min(s for s, _ in iv) - t0 for iv in by_repo.values())

    # Jain's index while every repository still had work
    until = min(max(e for _, e in iv) for iv in by_repo.values())
    share = {r: 0.0 for r in by_repo}
    for r, _, s, e in runs:
        share[r] += max(0.0, min(e, until) - max(s, t0))
    xs = list(share.values())
    if sum(x * x for x in xs) > 0:
        result.jain = sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))

    # idle slot-seconds while a job was eligible, by a sweep over the instants anything changed
    times = sorted({t0, *(s for *_, s, _ in runs), *(e for *_, e in runs)})
    idle = 0.0
    for a, b in itertools.pairwise(times):
        mid = (a + b) / 2
        running = sum(1 for *_, s, e in runs if s <= mid < e)
        active = {k for k, (_, s, e) in spans.items() if s <= mid < e}
        between = sum(
            1 for k in active if not any(key == k and s <= mid < e for _, key, s, e in runs)
        )
        busy_repos = {spans[k][0] for k in active}
        waiting_repos = {r for k, (r, s, _) in spans.items() if s > mid and r not in busy_repos}
        eligible = between + len(waiting_repos)
        idle += max(0, min(SLOTS - running, eligible)) * (b - a)
    if result.makespan_s > 0:
        result.idle_share = idle / (SLOTS * result.makespan_s)
