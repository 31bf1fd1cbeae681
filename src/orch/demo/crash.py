"""The demo's crash scenario: the worker runs as a separate `orch worker` process, is killed
with SIGKILL in the middle of the merge (the remote has the merge, the worker never heard
back), and is started again. The new incarnation voids the dead one's lease at once, finds the
merge's effect INITIATED, marks it UNKNOWN and asks the forge before it would ever merge again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from orch.crashpoints import ENV as CRASHPOINT_ENV

CRASH_POINT = "forge.request.sent"


class WorkerProcess:
    """`orch worker` as a child process with the demo's settings and none of the user's."""

    def __init__(self, settings: Any, root: Path) -> None:
        self.root = root
        self.config = root / "worker.yaml"
        data = settings.model_dump(mode="json")
        self.config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[dict[str, Any]] = []

    def start(self, crash_point: str | None) -> int:
        # the user's ORCH_* settings must never reach the demo's worker
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        if crash_point:
            env[CRASHPOINT_ENV] = crash_point
        log = self.root / "logs" / f"worker-{len(self.starts) + 1}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orch", "--config", str(self.config), "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts.append({"pid": self.proc.pid, "crash_point": crash_point, "log": str(log)})
        return self.proc.pid

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def merges_of(remote: Path, head: str) -> int:
    """How many merge commits on the remote's main brought `head` in: the forge's own log."""
    out = subprocess.run(
        ["git", "rev-list", "--merges", "--parents", "refs/heads/main"],
        cwd=remote,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sum(1 for line in out.splitlines() if head in line.split()[2:])
