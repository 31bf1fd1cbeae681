"""The benchmark package keeps working: `python -m bench --quick` runs and prints its table.

Only the presence of rows and figures is checked, never a speed: timing belongs in bench/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"\s\d[\d,]*(\.\d+)?\s(tr/s|ms)\s")


@pytest.mark.slow
def test_bench_quick_prints_s1_s2_and_agent_rows() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for prefix in (
        "S1 sqlite-normal C=1",
        "S1 sqlite-normal C=10",
        "S2 sqlite p50",
        "S2 sqlite p99",
        "agent: claude stage p50",
    ):
        matching = [line for line in lines if line.startswith(prefix + " ")]
        assert matching, f"no row {prefix!r} in:\n{proc.stdout}"
        assert FIGURE.search(matching[0] + " "), f"no figure in row: {matching[0]!r}"
    assert any(line.startswith("floor (a) commit") for line in lines), proc.stdout
