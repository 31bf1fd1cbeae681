"""The floor microbenches, measured first in every run: (a) commit rate, (d) process spawn,
(g) one SQL read by primary key, (i) HTTP round trip on keep-alive; and the floors of S4, S5
and S6: a bare supervisor's cost per child, a bare waitpid's wake-up on a killed child, and the
time to import orch's modules (`orch serve` cannot be ready before that)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import s4_overhead, s5_detection
from bench.common import BENCH_DIR, median, percentile, pg_schema, stub_argv


@dataclass
class Floors:
    commit: dict[str, float] = field(default_factory=dict)  # store config -> commits/s
    true_s: list[float] = field(default_factory=list)  # /bin/true: Popen .. exit reaped
    stub_s: list[float] = field(default_factory=list)  # stub: Popen .. exit reaped
    stub_start_s: list[float] = field(default_factory=list)  # stub: Popen call .. 1st instruction
    ping_s: list[float] = field(default_factory=list)  # GET /ping round trip, keep-alive
    sql_s: dict[str, list[float]] = field(default_factory=dict)  # store -> SELECT by key
    import_s: list[float] = field(default_factory=list)  # exec .. exit of `import orch...`
    supervisor: dict[str, float] = field(default_factory=dict)  # per child: rss_kb, threads, fds
    reaped_s: list[float] = field(default_factory=list)  # SIGKILL .. waitpid returned

    @property
    def stub_spawn_rate(self) -> float:
        return 1.0 / median(self.stub_s)

    @property
    def true_spawn_rate(self) -> float:
        return 1.0 / median(self.true_s)

    def s1_floor(self, store: str, slots: int) -> float:
        """T* = min(commit rate / 6, spawn rate), the stub's spawn rate on min(C, cores) cores."""
        cores = min(slots, os.cpu_count() or 1)
        return min(self.commit[store] / 6.0, self.stub_spawn_rate * cores)

    def s2_floor(self, q: float) -> float:
        """The q-th percentile of an HTTP round trip plus the stub's Popen-to-first-instruction."""
        return percentile(self.ping_s, q) + percentile(self.stub_start_s, q)


# -- (a) commit rate -----------------------------------------------------------------------------


def sqlite_commit_rate(directory: Path, synchronous: str, n: int) -> float:
    """Small INSERT + COMMIT transactions in WAL mode, one connection, as fast as they go."""
    path = directory / f"commit-{synchronous.lower()}.db"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, at REAL)")
        for _ in range(20):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v, at) VALUES ('warm', 0)")
            conn.execute("COMMIT")
        start = time.perf_counter()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v, at) VALUES (?, ?)", (f"row {i}", float(i)))
            conn.execute("COMMIT")
        return n / (time.perf_counter() - start)
    finally:
        conn.close()


def pg_commit_rate(url: str, n: int) -> float:
    """Small INSERTs, each its own committed transaction, over one connection."""
    import psycopg

    with pg_schema(url) as scoped, psycopg.connect(scoped, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL, at FLOAT8)")
        for _ in range(20):
            conn.execute("INSERT INTO t (v, at) VALUES ('warm', 0)")
        start = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO t (v, at) VALUES (%s, %s)", (f"row {i}", float(i)))
        return n / (time.perf_counter() - start)


# -- (g) one SQL read ----------------------------------------------------------------------------


def sqlite_read_floor(directory: Path, n: int) -> list[float]:
    """A SELECT by primary key on a SQLite file in WAL mode, one connection, each alone."""
    path = directory / "read.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(1000)])
        out = []
        for i in range(n):
            start = time.perf_counter()
            conn.execute("SELECT v FROM t WHERE id = ?", (1 + i % 1000,)).fetchone()
            out.append(time.perf_counter() - start)
        return out
    finally:
        conn.close()


def pg_read_floor(url: str, n: int) -> list[float]:
    """A SELECT by primary key over one PostgreSQL connection, each its own transaction."""
    import psycopg

    with pg_schema(url) as scoped, psycopg.connect(scoped, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute("INSERT INTO t (v) SELECT 'row ' || g FROM generate_series(1, 1000) g")
        out = []
        for i in range(n):
            start = time.perf_counter()
            conn.execute("SELECT v FROM t WHERE id = %s", (1 + i % 1000,)).fetchone()
            out.append(time.perf_counter() - start)
        return out


# -- S6: importing orch ---------------------------------------------------------------------------

IMPORTS = "import orch.cli, orch.bootstrap, orch.web.app"


def import_floor(n: int) -> list[float]:
    """exec .. exit of a fresh interpreter that imports what `orch serve` imports first."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


# -- (d) process spawn ---------------------------------------------------------------------------

_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}


def _spawn(argv: list[str]) -> tuple[float, float]:
    """Popen as orch starts an agent (own session, output to a file), then reap it.
    Returns (wall clock at the Popen call, seconds until the exit was reaped)."""
    wall = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=_ENV,
        start_new_session=True,
    )
    proc.wait()
    return wall, time.perf_counter() - start


def spawn_floor(floors: Floors, n_true: int, n_stub: int) -> None:
    for _ in range(5):
        _spawn(["/bin/true"])
    floors.true_s.extend(_spawn(["/bin/true"])[1] for _ in range(n_true))
    with tempfile.TemporaryDirectory(prefix="orch-bench-stub-") as tmp:
        out = Path(tmp)
        for _ in range(3):
            _spawn(stub_argv(out))
        for f in out.iterdir():
            f.unlink()
        for _ in range(n_stub):
            wall, took = _spawn(stub_argv(out))
            (written,) = list(out.iterdir())
            first = float(written.read_text().split()[0])
            written.unlink()
            floors.stub_s.append(took)
            floors.stub_start_s.append(first - wall)


# -- (i) HTTP ------------------------------------------------------------------------------------


@contextlib.contextmanager
def ping_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "ping_server.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"ping server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_floor(floors: Floors, n: int) -> None:
    with ping_server() as base, httpx.Client(base_url=base) as client:
        for _ in range(50):
            client.get("/ping").raise_for_status()
        for _ in range(n):
            start = time.perf_counter()
            client.get("/ping").raise_for_status()
            floors.ping_s.append(time.perf_counter() - start)


# -- all of them ---------------------------------------------------------------------------------


def measure(pg_url: str | None, rounds: int, quick: bool, log: object = None) -> Floors:
    floors = Floors()
    n_normal, n_full, n_pg = (1500, 300, 300) if quick else (5000, 1000, 1000)
    samples: dict[str, list[float]] = {"sqlite-normal": [], "sqlite-full": []}
    if pg_url:
        samples["pg"] = []
    reps = min(rounds, 3) if quick else rounds
    with tempfile.TemporaryDirectory(prefix="orch-bench-commit-") as tmp:
        configs = list(samples)
        for r in range(reps):
            for name in configs if r % 2 == 0 else reversed(configs):
                if name == "sqlite-normal":
                    samples[name].append(sqlite_commit_rate(Path(tmp), "NORMAL", n_normal))
                elif name == "sqlite-full":
                    samples[name].append(sqlite_commit_rate(Path(tmp), "FULL", n_full))
                else:
                    assert pg_url is not None
                    samples[name].append(pg_commit_rate(pg_url, n_pg))
    floors.commit = {k: median(v) for k, v in samples.items()}
    spawn_floor(floors, *((100, 20) if quick else (300, 60)))
    with tempfile.TemporaryDirectory(prefix="orch-bench-read-") as tmp:
        floors.sql_s["sqlite"] = sqlite_read_floor(Path(tmp), 500 if quick else 5000)
    if pg_url:
        floors.sql_s["pg"] = pg_read_floor(pg_url, 300 if quick else 3000)
    http_floor(floors, 200 if quick else 1000)
    floors.import_s = import_floor(1 if quick else 5)
    floors.supervisor = s4_overhead.bare_supervisor(10 if quick else 50)
    floors.reaped_s = s5_detection.bare_detection(5 if quick else 20)
    return floors
