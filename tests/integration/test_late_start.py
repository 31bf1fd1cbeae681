"""A command that must not run twice (a deploy) is not started past the end of the lease it was
started under: a worker paused between renewing its lease and starting the command may have
lost the job to another worker, which ran the command already."""

from __future__ import annotations

import time
from pathlib import Path

from orch.adapters.process import LocalRunner
from orch.adapters.sandbox.launcher import EXIT_LATE
from orch.ports import NOT_STARTED_LATE


def run(tmp_path: Path, not_after: float) -> tuple[int | None, Path, str]:
    marker = tmp_path / "deployed"
    log = tmp_path / "deploy.log"
    env = {"PATH": "/usr/bin:/bin"}
    proc = LocalRunner().start(f"touch {marker}", tmp_path, env, log, not_after=not_after)
    code = proc.wait(30)
    proc.kill(0)  # reaped already: only lets its output reach the log
    return code, marker, log.read_text(encoding="utf-8", errors="replace")


def test_a_command_started_past_its_lease_never_runs(tmp_path: Path) -> None:
    code, marker, log = run(tmp_path, time.time() - 1.0)
    assert code == EXIT_LATE == NOT_STARTED_LATE  # what the deployer knows it by
    assert not marker.exists()
    assert "after its worker's lease may have run out" in log


def test_a_command_started_within_its_lease_runs(tmp_path: Path) -> None:
    code, marker, _ = run(tmp_path, time.time() + 60.0)
    assert code == 0
    assert marker.exists()
