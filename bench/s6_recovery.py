"""S6, restart recovery, and S7, the status API on the same stores.

Per store, one database is built and grown: 1k, then 10k, then 100k tasks (`sizes`).

Built by orch itself: `orch serve` (C=`running`, one repository allowing that many active tasks,
a one-stage pipeline) gets `running` + `queued` tickets whose stubs sleep; once `running` of them
run, the service is SIGKILLed and so are its agents, which leaves `running` jobs in `running`
held by a dead incarnation, and `queued` jobs waiting for the repository's slots. The other tasks
are copies of a real one written with plain SQL, 90% of the size `done` and the rest
`cancelled`, each with 3 jobs, 3 transitions and 1 run; columns this bench does not know are
copied from the real rows, and orch's own triggers run on every insert.

Each round starts the service again with the same command (after SIGKILLing the last one and
its agents) and measures from the exec:
- ready: its "orch serving on" line (printed once uvicorn listens, after recovery);
- orphans reconciled: no job is `running` under a dead incarnation any more (polled every 10 ms);
- first spawn: the first new stub's own start time.

S7 runs on the service left after the last round of a size in `api_sizes`, once its agents run
again: `GET /api/v1/state` and `GET /api/v1/tasks/{key}` (keys drawn from every task), on
keep-alive connections, first one after another, then from 8 threads at once; p50/p99 and the
response's bytes. No transitions run in the background (the spec's 5/s are not made).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import abba, median, percentile
from bench.serve import (
    ONE_STAGE,
    Probe,
    Serve,
    file_ticket,
    live_stubs,
    make_remote,
    repo,
    sa_url,
    store_url,
    stub_starts,
    wait_for,
)

FILL = "FILL"  # the key prefix of the copied tasks
DONE_SHARE = 0.9


@dataclass
class Restart:
    ready_s: float | None = None
    orphans_s: float | None = None
    first_spawn_s: float | None = None


@dataclass
class Api:
    """One endpoint, one mode: latencies in seconds and the response's bytes."""

    latencies_s: list[float] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    errors: int = 0
    # orch's own event-loop lag while the block ran: upper bound (inf last) -> how many of the
    # probe's wake-ups came at most that late, from /metrics before and after
    lag: dict[float, float] = field(default_factory=dict)


@dataclass
class S6Result:
    store: str
    restarts: dict[int, list[Restart]] = field(default_factory=dict)  # by size
    api: dict[tuple[int, str, str], Api] = field(default_factory=dict)  # (size, endpoint, mode)
    fill_s: dict[int, float] = field(default_factory=dict)  # seconds to write the copies
    note: str = ""


class Store:
    """One store's database and the service that runs on it, across the rounds."""

    def __init__(self, kind: str, root: Path, url: str, remote: Path, running: int) -> None:
        self.kind = kind
        self.url = url
        self.running = running
        self.serve = Serve(
            kind,
            root,
            url,
            [repo("bench", remote, max_active=running)],
            running,
            worker={"max_attempts": 1000},  # every restart is an attempt of the running jobs
        )
        self.root = root
        self.keys: list[str] = []

    def build(self, queued: int) -> None:
        self.serve.start()
        with self.serve.client() as client:
            self.keys = [
                file_ticket(client, "bench", f"S6 {i} sleep=600 every=10")
                for i in range(self.running + queued)
            ]
        if not wait_for(lambda: len(live_stubs(self.root)) >= self.running, 120.0, 0.1):
            raise RuntimeError(f"only {len(live_stubs(self.root))} of {self.running} agents ran")
        self.down()

    def down(self) -> None:
        self.serve.crash()
        self.serve.kill_agents()

    def restart(self) -> Restart:
        """Start the service again; time its recovery from the exec."""
        probe = Probe(self.url)
        dead = list(self.serve.incarnations)
        seen = {name for name, _ in stub_starts(self.serve.homes)}
        got: dict[str, float] = {}
        stop = threading.Event()

        def poll() -> None:
            owners = ", ".join(f":o{i}" for i in range(len(dead)))
            orphaned = (
                f"SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner IN ({owners})"
            )
            params = {f"o{i}": o for i, o in enumerate(dead)}
            while not stop.is_set() and len(got) < 2:
                if "orphans" not in got and probe.count(orphaned, **params) == 0:
                    got["orphans"] = time.time()
                if "spawn" not in got:
                    new = [at for name, at in stub_starts(self.serve.homes) if name not in seen]
                    if new:
                        got["spawn"] = min(new)
                stop.wait(0.01)

        poller = threading.Thread(target=poll, daemon=True, name="bench-s6-poll")
        try:
            poller.start()
            self.serve.start()
            poller.join(60.0)
        finally:
            stop.set()
            poller.join()
            probe.close()
        t0 = self.serve.exec_at
        return Restart(
            self.serve.ready_at - t0,
            got["orphans"] - t0 if "orphans" in got else None,
            got["spawn"] - t0 if "spawn" in got else None,
        )


CHUNK = 5000  # tasks a transaction: orch's per-row triggers make one huge one slow on PG


def fill(url: str, size: int) -> float:
    """Copy a real task until the store holds `size` tasks; seconds it took."""
    started = time.monotonic()
    engine = sa.create_engine(sa_url(url))
    try:
        meta = sa.MetaData()
        meta.reflect(engine, only=["tasks", "tickets", "jobs", "transitions", "runs"])
        tasks, tickets = meta.tables["tasks"], meta.tables["tickets"]
        count = sa.select(sa.func.count()).select_from(tasks)
        copies = tasks.c.key.like(f"{FILL}-%")
        with engine.connect() as conn:
            have = int(conn.execute(count).scalar_one())
            copied_before = int(conn.execute(count.where(copies)).scalar_one())
            done_have = int(
                conn.execute(count.where(copies, tasks.c.status == "done")).scalar_one()
            )
            model = dict(
                conn.execute(sa.select(tasks).order_by(tasks.c.id).limit(1)).mappings().one()
            )
            ticket = dict(
                conn.execute(sa.select(tickets).where(tickets.c.key == model["key"]))
                .mappings()
                .one()
            )
        need = size - have
        done_total = int(DONE_SHARE * size)
        now = time.time()
        for chunk in range(0, max(0, need), CHUNK):
            task_rows, ticket_rows = [], []
            for i in range(chunk, min(need, chunk + CHUNK)):
                n = copied_before + i
                status = "done" if done_have + i < done_total else "cancelled"
                key = f"{FILL}-{n}"
                at = now - 86400.0 + n
                task_rows.append(
                    {
                        **{k: v for k, v in model.items() if k != "id"},
                        "key": key,
                        "title": f"copied task {n}",
                        "stage": status,
                        "status": status,
                        "version": 3,
                        "branch": f"orch/{key.lower()}",
                        "slot": None,
                        "slot_since": None,
                        "created_at": at,
                        "updated_at": at + 60.0,
                    }
                )
                ticket_rows.append(
                    {**ticket, "key": key, "title": f"copied task {n}", "created_at": at}
                )
            with engine.begin() as conn:
                first_id = int(conn.execute(sa.select(sa.func.max(tasks.c.id))).scalar_one()) + 1
                conn.execute(tickets.insert(), ticket_rows)
                conn.execute(tasks.insert(), task_rows)
                _copy_children(conn, meta, sa.and_(tasks.c.id >= first_id, copies))
        if engine.dialect.name == "postgresql" and need > 0:
            # what autovacuum would have done to a store this size long ago, done now rather
            # than during the measurement
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in ("tasks", "tickets", "jobs", "transitions", "runs"):
                    conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    finally:
        engine.dispose()
    return time.monotonic() - started


def _copy_children(conn: sa.Connection, meta: sa.MetaData, copied: sa.ColumnElement[bool]) -> None:
    """3 jobs, 3 transitions and 1 run for each copied task, written by INSERT ... SELECT with
    every column the bench does not set taken from a real row."""
    tasks, jobs = meta.tables["tasks"], meta.tables["jobs"]
    transitions, runs = meta.tables["transitions"], meta.tables["runs"]
    nums = sa.union_all(*(sa.select(sa.literal(n).label("n")) for n in (1, 2, 3))).subquery("v")

    def model_of(table: sa.Table) -> dict[str, Any]:
        return dict(conn.execute(sa.select(table).order_by(table.c.id).limit(1)).mappings().one())

    def copy(table: sa.Table, set_: dict[str, Any], source: Any, where: Any) -> None:
        model = model_of(table)
        cols = [c for c in table.columns if c.name != "id"]
        exprs = [
            set_[c.name]
            if c.name in set_
            else sa.bindparam(f"m_{c.name}", model[c.name], type_=c.type)
            for c in cols
        ]
        conn.execute(
            table.insert().from_select(cols, sa.select(*exprs).select_from(source).where(where))
        )

    t = tasks
    copy(
        jobs,
        {
            "task_id": t.c.id,
            "repo": t.c.repo,
            "version": nums.c.n,
            "stage": sa.literal("analysis"),
            "state": sa.literal("succeeded"),
            "attempt": sa.literal(1),
            "lease_owner": sa.null(),
            "lease_expires_at": sa.null(),
            "run_after": t.c.created_at,
            "last_error": sa.literal(""),
            "created_at": t.c.created_at,
            "updated_at": t.c.updated_at,
        },
        t.join(nums, sa.true()),
        copied,
    )
    last = sa.case((nums.c.n == 3, t.c.stage), else_=sa.literal("analysis"))
    last_status = sa.case((nums.c.n == 3, t.c.status), else_=sa.literal("active"))
    copy(
        transitions,
        {
            "task_id": t.c.id,
            "version": nums.c.n,
            "from_stage": sa.literal("analysis"),
            "to_stage": last,
            "from_status": sa.literal("active"),
            "to_status": last_status,
            "actor": sa.literal("bench"),
            "reason": sa.literal("copied"),
            "at": t.c.created_at + nums.c.n,
        },
        t.join(nums, sa.true()),
        copied,
    )
    j = jobs
    copy(
        runs,
        {
            "task_id": j.c.task_id,
            "job_id": j.c.id,
            "stage": sa.literal("analysis"),
            "attempt": sa.literal(1),
            "pid": sa.null(),
            "exit_code": sa.literal(0),
            "outcome": sa.literal("exited"),
            "started_at": j.c.created_at,
            "ended_at": j.c.created_at + 1.0,
            "owner": sa.null(),
        },
        j.join(t, j.c.task_id == t.c.id),
        sa.and_(copied, j.c.version == 1),
    )


# -- S7 ------------------------------------------------------------------------------------------


def _get(client: httpx.Client, path: str, out: Api) -> None:
    started = time.perf_counter()
    try:
        response = client.get(path)
        ok = response.status_code == 200
        body = len(response.content)
    except httpx.HTTPError:
        ok, body = False, 0
    elapsed = time.perf_counter() - started
    if ok:
        out.latencies_s.append(elapsed)
        out.bytes.append(body)
    else:
        out.errors += 1


def api_load(base_url: str, keys: list[str], requests: int) -> dict[tuple[str, str], Api]:
    """{(endpoint, mode): Api}: each endpoint sequentially, then from 8 threads, ABBA."""
    rng = random.Random(7)
    paths = {
        "state": lambda: "/api/v1/state",
        "task": lambda: f"/api/v1/tasks/{rng.choice(keys)}",
    }
    out = {}
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for path in paths.values():
            for _ in range(20):
                _get(client, path(), Api())
    configs = [(e, m) for m in ("seq", "c8") for e in paths]
    for _, config in abba(configs, 2):
        endpoint, mode = config  # type: ignore[misc]
        result = out.setdefault((endpoint, mode), Api())
        per = max(1, requests // 2)
        before = loop_lag(base_url)
        try:
            _load(base_url, paths[endpoint], mode, per, result)
        finally:
            after = loop_lag(base_url)
            for bound, n in after.items():
                result.lag[bound] = result.lag.get(bound, 0.0) + n - before.get(bound, 0.0)
    return out


def loop_lag(base_url: str) -> dict[float, float]:
    """orch's event-loop lag histogram as /metrics has it now: upper bound -> cumulative count."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=30.0).text
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "orch_event_loop_lag_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    out[float(sample.labels["le"])] = sample.value
    return out


def lag_quantile(lag: dict[float, float], q: float) -> float | None:
    """The q-quantile (0..1) of a cumulative histogram, interpolated in its bucket as
    Prometheus's histogram_quantile does; the highest finite bound if it lies past them all."""
    bounds = sorted(lag)
    if not bounds or lag[bounds[-1]] <= 0:
        return None
    rank = q * lag[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if lag[bound] >= rank:
            if bound == float("inf"):
                return lower
            share = (rank - below) / (lag[bound] - below) if lag[bound] > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, lag[bound]
    return lower


def _load(base_url: str, path: Callable[[], str], mode: str, per: int, result: Api) -> None:
    if mode == "seq":
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            for _ in range(per):
                _get(client, path(), result)
        return
    chosen = [path() for _ in range(per)]
    lock = threading.Lock()

    def worker(mine: list[str]) -> None:
        local = Api()
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            for p in mine:
                _get(client, p, local)
        with lock:
            result.latencies_s += local.latencies_s
            result.bytes += local.bytes
            result.errors += local.errors

    threads = [threading.Thread(target=worker, args=(chosen[i::8],)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


# -- the whole ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _stores(
    kinds: list[str], pg_url: str | None, root: Path, running: int
) -> Iterator[dict[str, Store]]:
    remote = make_remote(root, pipeline=ONE_STAGE)
    with contextlib.ExitStack() as stack:
        stores = {}
        for kind in kinds:
            home = root / kind
            home.mkdir()
            url = stack.enter_context(store_url(kind, pg_url, home))
            store = Store(kind, home, url, remote, running)
            stack.callback(store.serve.stop)
            stores[kind] = store
        yield stores


def run(
    kinds: list[str],
    pg_url: str | None,
    sizes: list[int],
    api_sizes: list[int],
    rounds: int,
    running: int,
    queued: int,
    requests: int,
) -> dict[str, S6Result]:
    results = {k: S6Result(k) for k in kinds}
    root = Path(tempfile.mkdtemp(prefix="orch-bench-s6-"))
    try:
        with _stores(kinds, pg_url, root, running) as stores:
            for store in stores.values():
                store.build(queued)
            for size in sorted(sizes):
                for kind, store in stores.items():
                    results[kind].fill_s[size] = fill(store.url, size)
                last = {k: rounds - 1 for k in kinds}
                for r, kind in abba(kinds, rounds):
                    assert isinstance(kind, str)
                    store = stores[kind]
                    try:
                        results[kind].restarts.setdefault(size, []).append(store.restart())
                        if size in api_sizes and r == last[kind]:
                            _api(results[kind], store, size, requests)
                    finally:
                        store.down()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def _api(result: S6Result, store: Store, size: int, requests: int) -> None:
    if not wait_for(lambda: len(live_stubs(store.root)) >= store.running, 60.0, 0.1):
        result.note = f"S7 at {size}: not every agent ran again"
    probe = Probe(store.url)
    try:
        sample = [r[0] for r in probe.rows("SELECT key FROM tasks")]
    finally:
        probe.close()
    for (endpoint, mode), api in api_load(store.serve.base_url, sample, requests).items():
        result.api[(size, endpoint, mode)] = api


def quantiles(api: Api) -> tuple[float, float, float]:
    """p50 and p99 in ms, and the median response's bytes."""
    return (
        median(api.latencies_s) * 1e3,
        percentile(api.latencies_s, 99) * 1e3,
        median([float(b) for b in api.bytes]),
    )
