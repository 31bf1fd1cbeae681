"""`orch chaos` end to end: the short sample CI runs (at least 50 kills), as a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from .running import processes_inside, report_of, run_chaos

KILLS = 50


@pytest.mark.slow
def test_short_sample_breaks_no_invariant(tmp_path: Path) -> None:
    result = run_chaos(
        "--dir", str(tmp_path / "run"), "--kills", str(KILLS), "--settle", "90", "--json"
    )
    detail = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-4000:]}"

    assert result.returncode == 0, detail
    assert result.stdout.splitlines()[-1] == "duplicates=0 lost=0 zombies=0", detail
    report = report_of(result.stdout)
    figures = report["figures"]
    assert report["ok"] is True
    assert figures["kills"] >= KILLS
    assert figures["kills_at_crash_points"] > 0
    assert all(i["ok"] for i in report["invariants"]), detail
    assert processes_inside(tmp_path) == []


def test_a_used_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")

    result = run_chaos("--dir", str(tmp_path), "--kills", "1", bound_s=60)

    assert result.returncode == 2
    assert "is not empty" in result.stderr
