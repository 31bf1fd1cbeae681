"""Running `orch chaos` as a subprocess, reading its JSON report, and finding what it left
running: shared by the end-to-end chaos tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
