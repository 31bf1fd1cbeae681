"""Process identity on a real process table: a pid plus its start time, orphans of dead
incarnations reaped at start before their tasks are driven again, and never a reused pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from orch.adapters.proctable import ENV, LinuxProcessTable, start_time
from orch.domain.states import JobState, Stage, TaskStatus
from orch.testing import InstantAgent, rig

HOST = socket.gethostname()


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start sleepers in their own sessions; end the ones still alive afterwards, by pid."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def gone_incarnation() -> str:
    """The incarnation of a process that has exited: its pid no longer names it."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = start_time(proc.pid)
    proc.wait()
    return f"{HOST}:{proc.pid}:{started or '1'}:gone"


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def test_an_incarnation_is_dead_only_when_this_host_can_prove_it(spawn: Any) -> None:
    table = LinuxProcessTable()
    me = table.incarnation()
    assert not table.is_dead(me)
    assert table.is_dead(gone_incarnation())
    other = spawn()
    # the pid is alive, but it started at another time than the incarnation says: pid reuse
    assert table.is_dead(f"{HOST}:{other.pid}:1:reused")
    assert not table.is_dead(f"elsewhere:{other.pid}:1:remote")  # another host: unprovable
    assert not table.is_dead(f"{HOST}:{os.getpid()}:-:no-start-time")


def test_a_pid_whose_start_time_differs_is_never_signalled(spawn: Any) -> None:
    unrelated = spawn()
    assert not LinuxProcessTable.signal(unrelated.pid, "1", signal.SIGKILL)
    assert alive(unrelated)
    real = start_time(unrelated.pid)
    assert real is not None
    assert LinuxProcessTable.signal(unrelated.pid, real, signal.SIGKILL)
    unrelated.wait(10)
    assert not alive(unrelated)


def test_orphans_of_dead_incarnations_are_reaped_and_nothing_else(spawn: Any) -> None:
    table = LinuxProcessTable()
    me = table.incarnation()
    orphan = spawn({ENV: gone_incarnation()})
    mine = spawn({ENV: me})
    stranger = spawn()
    reaped = table.reap_orphans(me, grace_s=2.0)
    orphan.wait(10)
    # (other orphans of dead orch processes on this host may be reaped too)
    assert orphan.pid in reaped
    assert mine.pid not in reaped and stranger.pid not in reaped
    assert not alive(orphan)
    assert alive(mine)
    assert alive(stranger)


def test_at_start_the_dead_incarnations_agent_is_killed_before_its_task_is_driven_again(
    spawn: Any,
) -> None:
    dead = gone_incarnation()
    r = rig({"default": InstantAgent()}, processes=LinuxProcessTable())
    try:
        task = r.intake.file("app", "Add a greeting", "Say hello.")
        claim = r.store.claim(dead, 3600.0, r.repos.limit)  # a lease far from expiring
        assert claim is not None
        orphan = spawn({ENV: dead})  # the agent that worker left running

        recovery = r.dispatcher.recover()
        assert recovery.orphans_killed >= 1
        orphan.wait(10)
        assert not alive(orphan)
        assert recovery.leases_voided == 1
        assert r.store.jobs(task.id)[0].state == JobState.QUEUED

        r.run_until_idle()
        t = r.store.get_task(task.id)
        assert (t.stage, t.status) == (Stage.ARCHITECTURE, TaskStatus.WAITING)
        assert r.store.jobs(task.id)[0].attempt == 2  # the dead worker's attempt counted
    finally:
        r.close()
