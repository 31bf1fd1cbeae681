"""Shared pieces: statistics, the result rows, the stub agent's command line, PostgreSQL."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STUB = BENCH_DIR / "stub_agent.py"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


IN_HOME = "$HOME"  # the stub writes its times in the task's home, where a confined agent may


def stub_argv(out_dir: Path | str | None = None) -> list[str]:
    """The stub agent's command: this interpreter, isolated, without site-packages."""
    argv = [sys.executable, "-I", "-S", str(STUB)]
    if out_dir is not None:
        argv.append(str(out_dir))
    return argv


def stub_times(homes: Path, name: str) -> list[float]:
    """What the stub run `name` (`<ticket>.<stage>.<attempt>`) wrote in its task's home under
    `homes`: its start time, then its exit time; empty if it has not written them yet."""
    for path in homes.glob(f"*/{name}"):
        try:
            return [float(f) for f in path.read_text().split()]
        except (OSError, ValueError):
            return []
    return []


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def abba(configs: Sequence[object], rounds: int) -> Iterator[tuple[int, object]]:
    """Configurations interleaved A B ... B A: even rounds forwards, odd rounds backwards."""
    for r in range(rounds):
        order = configs if r % 2 == 0 else list(reversed(configs))
        for c in order:
            yield r, c


NA = "n/a: "  # a row without a figure says why: orch lacks what it needs, or PG is not there
ERROR = "error: "  # ... or the run that should have measured it broke


@dataclass
class Row:
    """One line of the table: a figure, the floor measured in the same run, and the target.

    `value` None means no figure, and `why` says why ("n/a: ..." or "error: ...")."""

    workload: str
    metric: str  # with its unit: "p50 ms", "transitions/s"
    store: str  # sqlite, sqlite-normal, sqlite-full, pg, or "-" for what no store is part of
    value: float | None
    floor: float | None = None
    target: str | None = None
    note: str = ""
    why: str = ""

    def __post_init__(self) -> None:
        if self.value is not None and math.isnan(self.value):
            self.value = None
            self.why = self.why or f"{ERROR}no figure came out"
        if self.value is None and not self.why:
            self.why = f"{ERROR}no figure came out"
        if self.floor is not None and (math.isnan(self.floor) or not self.floor):
            self.floor = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.floor is None:
            return None
        return self.value / self.floor

    def as_json(self) -> dict[str, object]:
        ratio = self.ratio
        return {
            "workload": self.workload,
            "metric": self.metric,
            "store": self.store,
            "value": self.value if self.value is not None else self.why,
            "floor": self.floor,
            "ratio": round(ratio, 4) if ratio is not None else None,
            "target": self.target,
        }


def missing(workload: str, metric: str, store: str, why: str, target: str | None = None) -> Row:
    """A row with no figure: `why` starts with NA or ERROR."""
    return Row(workload, metric, store, None, target=target, why=why)


def failed(exc: BaseException) -> str:
    return f"{ERROR}{type(exc).__name__}: {exc}"[:200]


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if value and abs(value) < 0.01 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def render(rows: Sequence[Row], header: Sequence[str] = (), width: int = 150) -> None:
    """The rows as one Rich table on stdout, then the notes of the rows that have any."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else width, highlight=False)
    for line in header:
        console.print(line, markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (
        ("workload", "left"),
        ("metric", "left"),
        ("store", "left"),
        ("measured", "right"),
        ("floor", "right"),
        ("ratio", "right"),
        ("target", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    notes = []
    for r in rows:
        ratio = r.ratio
        measured = fmt(r.value) if r.value is not None else r.why.split(":", 1)[0]
        table.add_row(
            r.workload,
            r.metric,
            r.store,
            measured,
            fmt(r.floor) if r.floor is not None else "-",
            f"{ratio:.3g}x" if ratio is not None else "-",
            r.target or "-",
        )
        text = "; ".join(t for t in (r.why, r.note) if t)
        if text:
            notes.append(f"{r.workload} | {r.metric} | {r.store}: {text}")
    console.print(table)
    if notes:
        console.print("notes:", markup=False)
        for n in notes:
            console.print(f"  {n}", markup=False, overflow="fold")


# -- PostgreSQL --------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _plain(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[tuple[str | None, str]]:
    """Yield (usable URL or None, a note). A throwaway database is created and dropped, unless
    an explicit URL (the option or ORCH_BENCH_PG_URL) was given, which is used as it is."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        yield None, "PostgreSQL rows skipped: psycopg is not installed"
        return
    explicit = url or os.environ.get("ORCH_BENCH_PG_URL")
    if explicit:
        try:
            psycopg.connect(_plain(explicit), connect_timeout=3).close()
        except psycopg.Error as exc:
            yield None, f"PostgreSQL rows skipped: {_shown(explicit)} unreachable ({_first(exc)})"
            return
        yield _plain(explicit), f"PostgreSQL: {_shown(explicit)} (one schema per run, dropped)"
        return
    try:
        admin = psycopg.connect(LOCAL_PG, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        yield None, f"PostgreSQL rows skipped: no server at {LOCAL_PG} ({_first(exc)})"
        return
    name = f"orch_bench_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(LOCAL_PG, name), f"PostgreSQL: throwaway database {name}"
    finally:
        with psycopg.connect(LOCAL_PG, autocommit=True, connect_timeout=3) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A fresh schema for one run, named in the URL's search_path, dropped afterwards.

    Nothing outside it is touched, so a URL given on the command line is safe to use."""
    import psycopg
    from psycopg import sql

    name = f"orch_bench_{uuid.uuid4().hex[:12]}"
    plain = _plain(url)
    with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    sep = "&" if "?" in plain else "?"
    try:
        yield f"{plain}{sep}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _shown(url: str) -> str:
    """The URL without its password, for printing."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<the given URL>"


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
