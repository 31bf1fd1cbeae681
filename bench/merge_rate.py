"""Merges per hour through the merge gate, against `orch serve` as a subprocess.

One repository (a local bare git remote, orch's local forge), its test command a fixed
`sleep D`, and a one-stage pipeline: development, run by the stub, which writes a file of its
own (`write` in the title: no two changes conflict), no gates, then the merge. N tickets are
filed at once; every task may be active (`max_active` N) and C=8 workers run them.

The merge takes the repository's one merge slot before it builds the candidate (the task branch
on the default branch's head) and runs the test command on it, so merges are serialised per
repository and the ceiling is 3600 / D merges per hour. A task that finds the slot taken waits
(orch retries it after at least 1 s). The figure: (merges - 1) / (last merge - first merge),
from the merge effects' `updated_at` (when each was confirmed), per hour.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.serve import Probe, Serve, file_ticket, make_remote, repo, store_url, wait_for

PIPELINE = (
    "replace: true\n"
    "stages:\n  - name: development\n    gates: []\n    actions: [merge]\ncheckpoints: []\n"
)


@dataclass
class MergeResult:
    store: str
    test_s: float
    merges: int = 0
    per_hour: float = float("nan")
    failed: int = 0
    wall_s: float = float("nan")
    note: str = ""

    @property
    def ceiling(self) -> float:
        return 3600.0 / self.test_s


def run(kind: str, pg_url: str | None, tickets: int, test_s: float, slots: int = 8) -> MergeResult:
    result = MergeResult(kind, test_s)
    root = Path(tempfile.mkdtemp(prefix="orch-bench-merge-"))
    try:
        remote = make_remote(root, pipeline=PIPELINE)
        home = root / kind
        home.mkdir()
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(store_url(kind, pg_url, home))
            bench_repo = repo("bench", remote, max_active=tickets, test_command=f"sleep {test_s:g}")
            serve = Serve(kind, home, store, [bench_repo], slots)
            stack.callback(serve.stop)
            serve.start()
            probe = Probe(store)
            stack.callback(probe.close)
            started = time.monotonic()
            with serve.client() as client:
                for i in range(tickets):
                    file_ticket(client, "bench", f"merge {i} write")
            merged = "SELECT count(*) FROM effects WHERE kind = 'merge' AND state = 'SUCCEEDED'"
            ended = (
                "SELECT count(*) FROM tasks WHERE status IN ('done', 'needs_operator', 'cancelled')"
            )
            if not wait_for(
                lambda: probe.count(ended) >= tickets, max(120.0, 4 * tickets * test_s), 0.1
            ):
                result.note = "timed out"
            result.wall_s = time.monotonic() - started
            times = sorted(
                float(r[0])
                for r in probe.rows(
                    "SELECT updated_at FROM effects WHERE kind = 'merge' AND state = 'SUCCEEDED'"
                )
            )
            result.merges = probe.count(merged)
            result.failed = probe.count(
                "SELECT count(*) FROM effects WHERE kind = 'merge' AND state = 'FAILED'"
            )
            parked = probe.count("SELECT count(*) FROM tasks WHERE status = 'needs_operator'")
            if parked:
                reason = probe.scalar(
                    "SELECT status_reason FROM tasks WHERE status = 'needs_operator' LIMIT 1"
                )
                result.note = f"{parked} task(s) parked: {str(reason)[:160]}"
            if len(times) >= 2 and times[-1] > times[0]:
                result.per_hour = (len(times) - 1) / (times[-1] - times[0]) * 3600.0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result
