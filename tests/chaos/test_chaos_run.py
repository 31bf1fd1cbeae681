"""`orch chaos` end to end: the short sample CI runs (at least 50 kills), as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

KILLS = 50


CHAOS = [sys.executable, "-m", "orch", "chaos"]


def run_chaos(*args: str, bound_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run it; on a hang, SIGTERM it first so that it ends every process it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    proc = subprocess.Popen(
        [*CHAOS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=bound_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"orch chaos did not finish; stderr:\n{err[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def report_of(stdout: str) -> dict[str, Any]:
    """The JSON report: from the line "{" to the line "}"."""
    lines = stdout.splitlines()
    start = lines.index("{")
    end = len(lines) - 1 - lines[::-1].index("}")
    return json.loads("\n".join(lines[start : end + 1]))  # type: ignore[no-any-return]


def processes_inside(root: Path) -> list[int]:
    """Live processes started with, or working in, anything under `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(root)) or str(root).encode() in environ:
            found.append(int(entry.name))
    return found


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
    if figures["paused_jobs_reclaimed"]:
        assert figures["fenced_writes"] > 0
    assert processes_inside(tmp_path) == []


def test_a_used_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")

    result = run_chaos("--dir", str(tmp_path), "--kills", "1", bound_s=60)

    assert result.returncode == 2
    assert "is not empty" in result.stderr
