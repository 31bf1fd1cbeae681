"""S5, dead-agent detection, against `orch serve` as a subprocess.

N stub agents run (C=N, one repository allowing N active tasks, a one-stage pipeline whose stall
timeout is `stall_s`); each sleeps, prints a line every stall_s/4 seconds and ends as a success
once released (`sleep=600 every=... release`). Faults, each on a task of its own:

- (i) SIGKILL the agent (the stub's own pid), one at a time;
- (ii) SIGSTOP the agent, all of them 20 ms apart: a silent hang only the stall clock sees. orch
  then TERMs the agent's group, waits `kill_grace_s` (a stopped process keeps a TERM pending) and
  KILLs it;
- (iii) SIGKILL the orchestrator, SIGKILL one agent while it is down, start it again with the
  same command (its other agents, orphaned, are ended by the new one's recovery).

Detection = the first moment the task's newest job is no longer the one that was running (same
attempt and lease owner), polled every 5 ms from the bench's own connection, minus the fault's
time. Recovery = the next attempt's stub start (its own clock) minus the fault's time, so it
holds the retry's backoff (`backoff_base_s`, 1 s by default: uniform 0.5-1 s).
Duplicate advances: live stubs beyond one per ticket, looked for after each fault, plus
transitions into `done` beyond one per task once every agent has been released.
The floor for (i) is a bare supervisor: a thread blocked in waitpid on a child that is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.serve import (
    Probe,
    Serve,
    file_ticket,
    live_stubs,
    make_remote,
    release,
    repo,
    store_url,
    stub_start,
    wait_for,
)

STAGE = "analysis"


@dataclass
class Fault:
    key: str
    attempt: int
    at: float
    detected_s: float | None = None
    recovered_s: float | None = None
    ready_s: float | None = None  # (iii): exec of the new service -> its "serving" line


@dataclass
class S5Result:
    store: str
    agents: int
    stall_s: float
    grace_s: float
    kills: list[Fault] = field(default_factory=list)
    stops: list[Fault] = field(default_factory=list)
    restarts: list[Fault] = field(default_factory=list)
    duplicates: int = 0
    not_done: int = 0
    note: str = ""


def bare_detection(n: int = 20) -> list[float]:
    """Seconds from SIGKILL to a waiting thread's waitpid returning, for a bare supervisor."""
    out = []
    for _ in range(n):
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        reaped: list[float] = []
        waiter = threading.Thread(
            target=lambda p=proc, r=reaped: (p.wait(), r.append(time.perf_counter())),
            daemon=True,
        )
        waiter.start()
        time.sleep(0.01)
        t0 = time.perf_counter()
        proc.kill()
        waiter.join(5)
        if reaped:
            out.append(reaped[0] - t0)
    return out


def pipeline(stall_s: float, attempts: int) -> str:
    return (
        f"max_attempts: {attempts}\n"
        "replace: true\nmerge: false\nstages:\n  - name: analysis\n    gates: []\n"
        f"    stall_s: {stall_s}\n"
        "checkpoints: []\n"
    )


class Watch:
    """The job of one task as it was when a fault was injected."""

    def __init__(self, probe: Probe, key: str) -> None:
        self.probe = probe
        self.task_id = probe.task_id(key)
        self.job = probe.latest_job(self.task_id)

    def left(self) -> bool:
        return self.probe.latest_job(self.task_id) != self.job


def run(
    kind: str,
    pg_url: str | None,
    agents: int,
    kills: int,
    stops: int,
    restarts: int,
    stall_s: float,
    grace_s: float,
) -> S5Result:
    result = S5Result(kind, agents, stall_s, grace_s)
    root = Path(tempfile.mkdtemp(prefix="orch-bench-s5-"))
    try:
        remote = make_remote(root, pipeline=pipeline(stall_s, attempts=10))
        home = root / kind
        home.mkdir()
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(store_url(kind, pg_url, home))
            serve = Serve(
                kind,
                home,
                store,
                [repo("bench", remote, max_active=agents)],
                agents,
                worker={"kill_grace_s": grace_s, "max_attempts": 10},
            )
            stack.callback(serve.stop)
            serve.start()
            probe = Probe(store)
            stack.callback(probe.close)
            every = stall_s / 4
            with serve.client() as client:
                keys = [
                    file_ticket(client, "bench", f"S5 {i} sleep=600 every={every:g} release")
                    for i in range(agents)
                ]
            _run(result, serve, probe, keys, kills, stops, restarts, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _running(serve: Serve, keys: list[str]) -> dict[str, tuple[int, int]]:
    """Tickets whose newest stub is alive: key -> (attempt, pid)."""
    newest: dict[str, tuple[int, Path]] = {}
    for path in serve.homes.glob("*/*.pid"):
        key, _, attempt = path.name.removesuffix(".pid").rsplit(".", 2)
        if attempt.isdigit() and int(attempt) > newest.get(key, (0, path))[0]:
            newest[key] = (int(attempt), path)
    alive = {}
    for key in keys:
        if key not in newest:
            continue
        attempt, path = newest[key]
        with contextlib.suppress(OSError, ValueError):
            pid = int(path.read_text())
            if _alive(pid):
                alive[key] = (attempt, pid)
    return alive


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _duplicates(root: Path) -> int:
    return sum(n - 1 for n in live_stubs(root).values() if n > 1)


def _run(
    result: S5Result,
    serve: Serve,
    probe: Probe,
    keys: list[str],
    kills: int,
    stops: int,
    restarts: int,
    root: Path,
) -> None:
    everyone = len(keys)
    if not wait_for(lambda: len(_running(serve, keys)) >= everyone, 60.0, 0.1):
        result.note = f"only {len(_running(serve, keys))} of {everyone} agents started"
        return
    untouched = list(keys)

    # (i) SIGKILL the agent, one at a time
    for _ in range(min(kills, len(untouched))):
        key = untouched.pop(0)
        attempt, pid = _running(serve, [key])[key]
        watch = Watch(probe, key)
        fault = Fault(key, attempt, time.time())
        os.kill(pid, signal.SIGKILL)
        if wait_for(watch.left, 10.0, 0.005):
            fault.detected_s = time.time() - fault.at
        result.kills.append(fault)
    result.duplicates += _duplicates(root)

    # (ii) SIGSTOP the agent: every one 20 ms after the last, then wait for them all
    pending = []
    for _ in range(min(stops, len(untouched))):
        key = untouched.pop(0)
        attempt, pid = _running(serve, [key])[key]
        watch = Watch(probe, key)
        fault = Fault(key, attempt, time.time())
        os.kill(pid, signal.SIGSTOP)
        pending.append((fault, watch))
        result.stops.append(fault)
        time.sleep(0.02)
    deadline = time.monotonic() + result.stall_s + result.grace_s + 15.0
    while pending and time.monotonic() < deadline:
        still = []
        for fault, watch in pending:
            if watch.left():
                fault.detected_s = time.time() - fault.at
            else:
                still.append((fault, watch))
        pending = still
        time.sleep(0.005)
    result.duplicates += _duplicates(root)

    # (iii) SIGKILL the orchestrator, kill an agent while it is down, start it again
    for _ in range(restarts):
        if not wait_for(lambda: len(_running(serve, keys)) >= everyone, 60.0, 0.1):
            result.note = "not every agent ran again before a restart"
            break
        key = untouched.pop(0) if untouched else keys[len(result.restarts) % everyone]
        attempt, pid = _running(serve, [key])[key]
        watch = Watch(probe, key)
        serve.crash()
        fault = Fault(key, attempt, time.time())
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            # it had ended already (its stall, on a loaded machine): the restart still has a
            # dead agent to find
            result.note = result.note or "an agent had ended before orch was killed"
        serve.start()
        fault.ready_s = serve.ready_at - serve.exec_at
        if wait_for(watch.left, 30.0, 0.005):
            fault.detected_s = time.time() - fault.at
        result.restarts.append(fault)
        wait_for(lambda: len(_running(serve, keys)) >= everyone, 60.0, 0.1)
        result.duplicates += _duplicates(root)

    # recovery: the next attempt's start, from the stubs' own files
    for fault in result.kills + result.stops + result.restarts:

        def next_start(f: Fault = fault) -> float | None:
            for a in range(f.attempt + 1, f.attempt + 4):
                started = stub_start(serve.homes, f.key, STAGE, a)
                if started is not None:
                    return started
            return None

        started = wait_for(next_start, 15.0, 0.05)
        if started is not None:
            fault.recovered_s = started - fault.at

    # release every agent: each task ends done, once
    release(serve.homes)
    done = wait_for(
        lambda: probe.count("SELECT count(*) FROM tasks WHERE status = 'done'") >= everyone,
        60.0,
        0.1,
    )
    if not done:
        result.not_done = everyone - probe.count("SELECT count(*) FROM tasks WHERE status = 'done'")
    result.duplicates += probe.count(
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM transitions"
        " WHERE to_stage = 'done' GROUP BY task_id) AS per_task"
    )


def summary(faults: list[Fault], attr: str) -> list[float]:
    return [getattr(f, attr) for f in faults if getattr(f, attr) is not None]
