"""The benchmark package keeps working: `python -m bench --quick` runs, and every row of its table
carries a measured figure, with no failure in its notes.

Only the presence of rows and figures is checked, never a speed: timing belongs in bench/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(
    r"^(?P<name>\S.*?)\s{2,}(?P<measured>-|[\d,]+(?:\.\d+)? \S+)\s{2,}"
    r"(?P<floor>-|[\d,]+(?:\.\d+)? \S+)\s{2,}(?P<ratio>\S+)\s*(?P<notes>.*)$"
)
# what a row's notes say when its run broke: a crash, work that never ran, a run that hung
BROKEN = ("failed", "never started", "not done", "timed out", "nan")
EXPECTED = [
    "floor (a) commit, SQLite WAL NORMAL",
    "floor (a) commit, PostgreSQL",
    "floor (d) spawn stub (python -I -S)",
    "floor (i) HTTP GET /ping p50",
    *(f"S1 {store} C={c}" for store in ("sqlite-normal", "sqlite-full", "pg") for c in (1, 10)),
    *(f"S2 {store} {q}" for store in ("sqlite", "pg") for q in ("p50", "p99", "max")),
    "agent: claude stage p50",
]


def table(stdout: str) -> dict[str, re.Match[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----"))
    rows = {}
    for line in lines[start + 1 :]:
        match = ROW.match(line)
        assert match, f"a row the table cannot hold: {line!r}"
        rows[match["name"]] = match
    return rows


@pytest.mark.slow
def test_bench_quick_measures_every_row_without_a_failure() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = table(proc.stdout)
    missing = [name for name in EXPECTED if name not in rows]
    assert not missing, f"rows missing: {missing}\n{proc.stdout}"
    for name, row in rows.items():
        assert row["measured"] != "-", f"no figure in {name}: {row.group(0)}"
        broken = [word for word in BROKEN if word in row["notes"]]
        assert not broken, f"{name} broke ({broken}): {row.group(0)}"
    for config in (f"S1 {s} C={c}" for s in ("sqlite-normal", "pg") for c in (1, 10)):
        notes = rows[config]["notes"]
        for figure in ("txn/tr", "statements/tr", "CPU-ms/tr"):
            assert re.search(rf"\d[\d.]* {figure}", notes), f"{config} lacks {figure}: {notes}"
