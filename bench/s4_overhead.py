"""S4, what each running agent costs the orchestrator.

One `orch serve` per store (C=50, one repository with a one-stage pipeline), measured from
outside through /proc/<pid> with 0 agents, then 10, then 50 (or what `counts` says): stub agents
that each sleep 600 s and print a line every 10 s (`sleep=600 every=10` in their titles). At
each count, after a settling time, over a window: the service's VmRSS, threads
(/proc/<pid>/task), open fds, CPU% of one core (utime + stime over the window), and the store's
write transactions per second while nothing but the agents happens:

- SQLite: `PRAGMA data_version` read every 10 ms on a connection of the bench's own (it changes
  when another connection commits a write), so commits closer together than that count once;
- PostgreSQL: `pg_stat_database.xact_commit` of the scratch database, read from a connection to
  another database. It counts every committed transaction, reads included; the rows written
  (`tup_inserted + tup_updated + tup_deleted`) are in the note. Backends flush these counters
  at most once a second (after 10 s when idle), so a short window is approximate.

Per agent: the slope from 0 agents to the most. The floor is a bare supervisor measured in the
same run: a Python process holding N children, each with its stdout on a pipe read by a thread
of its own (what one needs to watch a child's output and exit).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import median
from bench.serve import (
    Serve,
    file_ticket,
    make_remote,
    proc_status,
    repo,
    store_url,
    stub_starts,
    wait_for,
)

HEARTBEAT_S = 10.0  # orch's default lease heartbeat: the writes an idle running agent needs
PG_FLUSH_S = 11.0  # an idle PostgreSQL backend reports its counters within 10 s

_BARE = r"""
import os, subprocess, sys, threading, time
def status():
    rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]
    return int(rss), len(os.listdir('/proc/self/task')), len(os.listdir('/proc/self/fd'))
n = int(sys.argv[1])
before = status()
procs = [subprocess.Popen(['sleep', '600'], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
         start_new_session=True) for _ in range(n)]
for p in procs:
    threading.Thread(target=p.stdout.read, daemon=True).start()
time.sleep(0.3)
after = status()
for p in procs:
    p.kill()
    p.wait()
print(*before, *after)
"""


@dataclass
class Point:
    agents: int
    rss_kb: float
    threads: float
    fds: float
    cpu_pct: float  # of one core, over the window
    writes_per_s: float
    rows_per_s: float | None = None  # PostgreSQL: rows written per second


@dataclass
class S4Result:
    store: str
    points: list[Point] = field(default_factory=list)
    window_s: float = 0.0
    note: str = ""

    def slope(self, attr: str) -> float:
        if len(self.points) < 2 or self.points[-1].agents == 0:
            return float("nan")
        first, last = self.points[0], self.points[-1]
        return (getattr(last, attr) - getattr(first, attr)) / (last.agents - first.agents)


def bare_supervisor(n: int = 20) -> dict[str, float]:
    """Per child: KB of RSS, threads and fds of a bare Python supervisor holding `n`."""
    done = subprocess.run(
        [sys.executable, "-c", _BARE, str(n)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    r0, t0, f0, r1, t1, f1 = (float(x) for x in done.stdout.split())
    return {"rss_kb": (r1 - r0) / n, "threads": (t1 - t0) / n, "fds": (f1 - f0) / n}


class SqliteWrites:
    """Counts the commits of other connections to a SQLite file, by `PRAGMA data_version`."""

    def __init__(self, path: Path, every_s: float = 0.01) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.every_s = every_s
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="bench-writes")
        self._thread.start()

    def _poll(self) -> None:
        last = self.conn.execute("PRAGMA data_version").fetchone()[0]
        while not self._stop.wait(self.every_s):
            now = self.conn.execute("PRAGMA data_version").fetchone()[0]
            if now != last:
                self.count += 1
                last = now

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


@contextlib.contextmanager
def _pg_counter(url: str) -> Iterator[object]:
    """Reads (transactions committed, rows written) of the store's database so far."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:

        def read() -> tuple[int, int]:
            # one statement, its own transaction: a fresh snapshot of the counters each time
            row = conn.execute(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted"
                " FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        yield read


def _window(serve: Serve, kind: str, store: str, window_s: float, pg_read: object) -> Point:
    counter = None
    if kind != "pg":
        counter = SqliteWrites(Path(store.removeprefix("sqlite:///")))
    before = proc_status(serve.pid)
    pg0 = pg_read() if pg_read is not None else None  # type: ignore[operator]
    wall0 = time.monotonic()
    samples = []
    while time.monotonic() - wall0 < window_s:
        time.sleep(min(1.0, window_s / 4))
        samples.append(proc_status(serve.pid))
    elapsed = time.monotonic() - wall0
    after = proc_status(serve.pid)
    pg1 = pg_read() if pg_read is not None else None  # type: ignore[operator]
    if counter is not None:
        counter.close()
        writes, rows = counter.count / elapsed, None
    else:
        assert pg0 is not None and pg1 is not None
        writes, rows = (pg1[0] - pg0[0]) / elapsed, (pg1[1] - pg0[1]) / elapsed
    return Point(
        0,
        median([s["rss_kb"] for s in samples]),
        median([s["threads"] for s in samples]),
        median([s["fds"] for s in samples]),
        100.0 * (after["cpu_s"] - before["cpu_s"]) / elapsed,
        writes,
        rows,
    )


def run(
    kind: str, pg_url: str | None, counts: list[int], settle_s: float, window_s: float
) -> S4Result:
    result = S4Result(kind, window_s=window_s)
    if kind == "pg" and window_s < PG_FLUSH_S - 1:
        result.note = "window shorter than PostgreSQL's 10 s counter flush: writes approximate"
    root = Path(tempfile.mkdtemp(prefix="orch-bench-s4-"))
    most = max(counts)
    try:
        remote = make_remote(root)
        home = root / kind
        home.mkdir()
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(store_url(kind, pg_url, home))
            pg_read = stack.enter_context(_pg_counter(store)) if kind == "pg" else None
            serve = Serve(kind, home, store, [repo("bench", remote, max_active=most)], max(most, 1))
            stack.callback(serve.stop)
            serve.start()
            client = stack.enter_context(serve.client())
            filed = 0
            for n in sorted(counts):
                while filed < n:
                    file_ticket(client, "bench", f"S4 agent {filed} sleep=600 every=10")
                    filed += 1
                if not wait_for(lambda n=n: len(stub_starts(serve.homes)) >= n, 60.0, 0.1):
                    result.note = f"only {len(stub_starts(serve.homes))} of {n} agents started"
                    break
                settle = settle_s
                if kind == "pg" and window_s >= PG_FLUSH_S - 1:
                    # what the start-up or the new agents' spawns wrote reaches the counters
                    # only once flushed: before the window, not in it
                    settle = max(settle_s, PG_FLUSH_S)
                time.sleep(settle)
                point = _window(serve, kind, store, window_s, pg_read)
                point.agents = n
                result.points.append(point)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result
