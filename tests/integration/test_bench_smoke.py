"""The benchmark package keeps working: `python -m bench --quick --json` runs every workload, and
each of S1-S7, the Plane-webhook S2 and the merge gate yields rows that carry a figure or say
why they cannot (n/a), none of them broken.

Only the presence of rows and figures is checked, never a speed: timing belongs in bench/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"workload", "metric", "store", "value", "floor", "ratio", "target"}
WORKLOADS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S2 plane", "merge gate", "proxy")


def figure_or_reason(value: object) -> bool:
    """A number, or a sentence that says why there is none; an "error: ..." is neither."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value.startswith("n/a: ") and len(value) > len("n/a: ")


@pytest.mark.slow
def test_bench_quick_gives_every_workload_a_figure_or_a_reason() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == KEYS, row
    broken = [r for r in rows if not figure_or_reason(r["value"])]
    assert not broken, json.dumps(broken, indent=1)
    for workload in WORKLOADS:
        mine = [r for r in rows if r["workload"] == workload]
        assert mine, f"no row for {workload}"
        assert any(isinstance(r["value"], int | float) for r in mine) or all(
            str(r["value"]).startswith("n/a: ") for r in mine
        ), f"{workload}: {mine}"
