"""Launchers started ahead: a command handed to one runs exactly as one started with it would
(its directory, environment, stdin, confinement, lease bound, kill), and a launcher waiting for
its command holds nothing of any run and outlives neither its keeper nor its orch."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orch.adapters.process import Launchers, LocalRunner, ProcessGroup
from orch.adapters.proctable import start_time
from orch.adapters.sandbox.launcher import EXIT_LATE, landlock_abi
from orch.ports import Confinement

INCARNATION = "testhost:1:-:warmlaunchers"
ENV = {"PATH": "/usr/bin:/bin", "ORCH_TICKET": "APP-1", "SECRET_OF_THE_RUN": "s3cret"}


def standby_pids(launchers: Launchers) -> list[int]:
    return [proc.pid for proc, _ in launchers._ready]


def wait_until(what: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if what():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@contextlib.contextmanager
def kept(count: int = 1) -> Iterator[tuple[Launchers, threading.Event]]:
    launchers, stop = Launchers(), threading.Event()
    keeper = threading.Thread(target=launchers.keep, args=(count, INCARNATION, stop))
    keeper.start()
    try:
        assert wait_until(lambda: len(standby_pids(launchers)) == count)
        yield launchers, stop
    finally:
        stop.set()
        launchers.wake()
        keeper.join(10)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shell(script: str, cwd: Path, launchers: Launchers | None, **options: Any) -> ProcessGroup:
    """`script` started by the shell, through a launcher of `launchers` if one is waiting; its
    output goes to `run.log` beside `cwd`, unless `log_path` says otherwise."""
    options.setdefault("log_path", cwd.parent / "run.log")
    return ProcessGroup(["/bin/sh", "-c", script], cwd=cwd, env=ENV, launchers=launchers, **options)


def run_handed(tmp_path: Path, script: str, cwd: Path, **options: Any) -> int | None:
    """Run `script` through a launcher kept waiting (the one waiting, not a new one); its exit
    status, its output in `run.log`."""
    with kept() as (launchers, _):
        waiting = standby_pids(launchers)
        group = shell(script, cwd, launchers, log_path=tmp_path / "run.log", **options)
        assert group.pid == waiting[0]
        code = group.wait(10)
        group.kill(0)
    return code


def test_a_command_handed_to_a_waiting_launcher_runs_as_it_would_have(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the prompt\n")
    work = tmp_path / "work"
    work.mkdir()
    script = 'pwd; cat; echo "ticket=$ORCH_TICKET secret=$SECRET_OF_THE_RUN"; env | sort > env.txt'
    assert run_handed(tmp_path, script, work, stdin_path=prompt) == 0
    log = (tmp_path / "run.log").read_text()
    assert log.splitlines() == [str(work), "the prompt", "ticket=APP-1 secret=s3cret"]
    names = {line.split("=", 1)[0] for line in (work / "env.txt").read_text().splitlines()}
    # what the run was given, and only that (the shell adds PWD, SHLVL and _)
    assert names - {"PWD", "SHLVL", "_"} == set(ENV)


def test_a_waiting_launcher_holds_nothing_of_a_run_and_names_its_incarnation() -> None:
    with kept() as (launchers, _):
        pid = standby_pids(launchers)[0]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert sorted(e.split(b"=", 1)[0] for e in environ if e) == [b"ORCH_INCARNATION", b"PATH"]
        assert f"ORCH_INCARNATION={INCARNATION}".encode() in environ


def test_a_command_is_started_as_before_when_no_launcher_is_waiting(tmp_path: Path) -> None:
    with kept() as (launchers, stop):
        stop.set()  # the keeper ends its standby and holds none from now on
        launchers.wake()
        assert wait_until(lambda: not standby_pids(launchers))
        group = shell("echo cold", tmp_path, launchers, log_path=tmp_path / "run.log")
        assert group.wait(10) == 0
        group.kill(0)
    assert (tmp_path / "run.log").read_text() == "cold\n"


def test_the_keeper_replaces_a_launcher_taken_and_ends_those_left_when_it_stops(
    tmp_path: Path,
) -> None:
    with kept(count=2) as (launchers, _):
        before = set(standby_pids(launchers))
        group = shell("true", tmp_path, launchers, log_path=tmp_path / "a.log")
        assert group.pid in before
        assert group.wait(10) == 0
        group.kill(0)
        # a new one takes the place of the one taken
        assert wait_until(lambda: len(standby_pids(launchers)) == 2)
        now = set(standby_pids(launchers))
        assert now - before and group.pid not in now
        left = [(pid, start_time(pid)) for pid in now]
    for pid, started in left:
        assert start_time(pid) != started  # ended (and reaped) by the keeper as it stopped


def test_a_waiting_launcher_ends_when_the_orch_that_started_it_dies(tmp_path: Path) -> None:
    """Its stdin is orch's end of a pipe: a SIGKILLed orch closes it, and the launcher exits
    without running anything."""
    holder = tmp_path / "holder.py"
    holder.write_text(
        "import sys, threading, time\n"
        "from orch.adapters.process import Launchers\n"
        "l = Launchers()\n"
        f"threading.Thread(target=l.keep, args=(1, {INCARNATION!r}, threading.Event()),"
        " daemon=True).start()\n"
        "while not l._ready: time.sleep(0.01)\n"
        "print(l._ready[0][0].pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    orch = subprocess.Popen(
        [sys.executable, str(holder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert orch.stdout is not None
        standby = int(orch.stdout.readline())
        assert alive(standby)
        os.kill(orch.pid, signal.SIGKILL)
        orch.wait()
        assert wait_until(lambda: not alive(standby))
    finally:
        if orch.poll() is None:
            orch.kill()
            orch.wait()


@pytest.mark.skipif(landlock_abi() < 1, reason="needs Landlock")
def test_a_command_handed_to_a_waiting_launcher_is_confined(tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret").write_text("hidden\n")
    confine = Confinement(landlock=True, write=(work,), protect=(elsewhere,))
    script = "echo ok > mine; echo no > ../elsewhere/theirs; cat ../elsewhere/secret; true"
    assert run_handed(tmp_path, script, work, confine=confine) == 0
    assert (work / "mine").read_text() == "ok\n"
    assert not (elsewhere / "theirs").exists()
    assert "hidden" not in (tmp_path / "run.log").read_text()


def test_a_waiting_launcher_refuses_a_command_past_its_lease(tmp_path: Path) -> None:
    marker = tmp_path / "deployed"
    with kept() as (launchers, _):
        waiting = standby_pids(launchers)
        proc = LocalRunner(launchers).start(
            f"touch {marker}", tmp_path, ENV, tmp_path / "deploy.log", not_after=time.time() - 1
        )
        assert proc.pid == waiting[0]
        assert proc.wait(10) == EXIT_LATE
        proc.kill(0)
    assert not marker.exists()


def test_a_command_from_a_waiting_launcher_is_ended_with_all_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; setsid sleep 300 & echo $! >> {pids}; wait"
    with kept() as (launchers, _):
        group = shell(script, tmp_path, launchers, log_path=tmp_path / "run.log")
        assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        started = [int(p) for p in pids.read_text().split()]
        assert all(alive(p) for p in started)
        group.kill(5.0)
    assert not any(alive(p) for p in started)


def test_a_missing_directory_is_refused_before_a_waiting_launcher_is_spent(
    tmp_path: Path,
) -> None:
    with kept() as (launchers, _):
        waiting = standby_pids(launchers)
        with pytest.raises(FileNotFoundError):
            shell("true", tmp_path / "gone", launchers)
        assert standby_pids(launchers) == waiting


@pytest.mark.parametrize("warm", [False, True], ids=["started-then", "started-ahead"])
def test_a_stopped_command_acts_on_its_term_without_waiting_out_the_grace(
    tmp_path: Path, warm: bool
) -> None:
    """A silent hang (SIGSTOP) must not cost the kill grace: the TERM is followed by a CONT,
    so the command dies of the TERM, not of the KILL the grace would end in."""
    pids = tmp_path / "pids"
    with kept() as (launchers, _):
        group = shell(
            f"echo $$ > {pids}; exec sleep 300",
            tmp_path,
            launchers if warm else None,
            log_path=tmp_path / "run.log",
        )
        assert wait_until(lambda: pids.exists() and pids.read_text().strip())
        sleeper = int(pids.read_text())  # the command itself, once it exec'd sleep
        assert wait_until(lambda: b"sleep" in Path(f"/proc/{sleeper}/cmdline").read_bytes())
        os.kill(sleeper, signal.SIGSTOP)
        code = group.kill(60.0)
    assert code == -signal.SIGTERM
    assert not alive(sleeper)


@pytest.mark.parametrize(
    "where",
    [
        {"env": {**ENV, "ORCH_TICKET_TITLE": "t\0--\0/bin/sh\0-c\0touch injected"}},
        {"argv": ["/bin/echo", "a\0--\0/bin/sh"]},
        {"env": {**ENV, "A=B": "c"}},
    ],
    ids=["nul-in-a-value", "nul-in-an-argument", "equals-in-a-name"],
)
def test_what_popen_refuses_is_refused_before_a_waiting_launcher_hears_it(
    tmp_path: Path, where: dict[str, Any]
) -> None:
    """A NUL would shift every field after it: a ticket's title could name the launcher's
    options and command. It is refused as Popen refuses it, and the waiting launcher is kept."""
    with kept() as (launchers, _):
        waiting = standby_pids(launchers)
        with pytest.raises(ValueError):
            ProcessGroup(
                where.get("argv", ["/bin/true"]),
                cwd=tmp_path,
                env=where.get("env", ENV),
                log_path=tmp_path / "run.log",
                launchers=launchers,
                not_after=time.time() - 1,
            )
        assert standby_pids(launchers) == waiting
    assert not (tmp_path / "injected").exists()
