"""orch processes kept alive by the harness: started, watched, killed, paused and started again.

Each start of a process is a `Life`. A supervisor thread per role starts a life, waits for it to
say it is ready, waits for it to die, records how it died, and starts the next one, until the
harness stops it. Signals only ever go to a life's own pid, while that life is known alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orch.adapters.proctable import start_time
from orch.chaos.checks import ProcessIdentity

ANNOUNCE = re.compile(r"incarnation (\S+?)\)")
ADDRESS = re.compile(r"http://[\d.]+:\d+")
CRASH_LINE = re.compile(r"orch: crash point (\S+) reached")
FENCED = "write fenced"
GIVEN_UP = "lease given up"  # a lease the process itself saw expire, before any write met the fence
# either, naming the job and the token it was held with
FENCE_LINE = re.compile(rf"(?:{FENCED}|{GIVEN_UP}): job (\d+) token (\d+) ")


@dataclass
class Life:
    """One start of an orch process, from spawn to death."""

    role: str
    number: int
    proc: subprocess.Popen[bytes]
    start: str  # the pid's start time, which names it together with the pid
    spawned_at: float
    crashpoint: str | None  # the ORCH_CRASHPOINT it was armed with
    out_path: Path
    err_path: Path
    ready_at: float | None = None
    incarnation: str = ""
    url: str = ""
    ended_at: float | None = None
    end: str = ""  # how it died: crashpoint, sigkill, sigterm, exit N, no start
    crash_reached: str = ""  # the crash point it killed itself at, if it did
    killed_by_harness: bool = False
    paused: bool = False
    resumed_at: float | None = None  # when it was last sent SIGCONT after a pause

    @property
    def name(self) -> str:
        return f"{self.role}#{self.number}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.start)

    @property
    def alive(self) -> bool:
        return self.ended_at is None

    def stderr_lines(self) -> list[str]:
        try:
            return self.err_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def fenced_writes(self) -> int:
        return sum(1 for line in self.stderr_lines() if FENCED in line)

    def leases_given_up(self) -> int:
        return sum(1 for line in self.stderr_lines() if GIVEN_UP in line)

    def fence_lines(self, job_id: int, token: int) -> int:
        """Lines that say a write under job `job_id`'s `token` was fenced or its lease given up."""
        return sum(
            1
            for line in self.stderr_lines()
            if (m := FENCE_LINE.search(line)) and (int(m[1]), int(m[2])) == (job_id, token)
        )


class Supervised:
    """One role (serve or worker), restarted whenever it dies until `stop`."""

    def __init__(
        self,
        role: str,
        argv: list[str],
        env: Mapping[str, str],
        logs_dir: Path,
        *,
        arm: Callable[[str], str | None],
        on_ready: Callable[[Life], None],
        on_death: Callable[[Life], None],
        restart_delay: Callable[[], float],
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.role = role
        self.argv = argv
        self.env = dict(env)
        self.logs_dir = logs_dir
        self._arm = arm
        self._on_ready = on_ready
        self._on_death = on_death
        self._restart_delay = restart_delay
        self._ready_timeout_s = ready_timeout_s
        self.lives: list[Life] = []
        self._current: Life | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name=f"chaos-{role}", daemon=True)
        self.error: BaseException | None = None

    # -- the supervisor thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _keep_alive(self) -> None:
        try:
            while not self._stopping.is_set():
                life = self._spawn()
                self._await_ready(life)
                code = life.proc.wait()
                self._bury(life, code)
                if self._stopping.wait(self._restart_delay()):
                    break
        except BaseException as exc:  # surfaced by the harness, which then stops the run
            self.error = exc
        finally:
            with self._cond:
                self._current = None
                self._cond.notify_all()

    def _spawn(self) -> Life:
        number = len(self.lives) + 1
        env = dict(self.env)
        crashpoint = self._arm(self.role)
        if crashpoint:
            env["ORCH_CRASHPOINT"] = crashpoint
        out_path = self.logs_dir / f"{self.role}-{number:04d}.out"
        err_path = self.logs_dir / f"{self.role}-{number:04d}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            # a session of its own: a Ctrl-C at the terminal reaches the harness alone, which
            # then stops every process it started, in order
            proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        life = Life(
            role=self.role,
            number=number,
            proc=proc,
            start=start_time(proc.pid) or "?",
            spawned_at=time.time(),
            crashpoint=crashpoint,
            out_path=out_path,
            err_path=err_path,
        )
        with self._cond:
            self.lives.append(life)
            self._current = life
            self._cond.notify_all()
        return life

    def _await_ready(self, life: Life) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        while life.proc.poll() is None and time.monotonic() < deadline:
            text = life.out_path.read_text(encoding="utf-8", errors="replace")
            found = ANNOUNCE.search(text)
            if found:
                address = ADDRESS.search(text)
                life.incarnation = found.group(1)
                life.url = address.group(0) if address else ""
                life.ready_at = time.time()
                self._on_ready(life)
                with self._cond:
                    self._cond.notify_all()
                return
            time.sleep(0.05)
        if life.proc.poll() is None:
            # it never said it was ready: end it, and let the next life try
            life.end = "no start"
            self._signal(life, signal.SIGKILL)

    def _bury(self, life: Life, code: int) -> None:
        life.ended_at = time.time()
        crash = next((m for m in map(CRASH_LINE.search, life.stderr_lines()) if m), None)
        if crash:
            life.crash_reached = crash.group(1)
        if life.end:
            pass  # "no start", set when it was ended for never becoming ready
        elif crash and code == -signal.SIGKILL:
            life.end = "crashpoint"
        elif code == -signal.SIGKILL:
            life.end = "sigkill"
        elif code == -signal.SIGTERM or (code == 0 and self._stopping.is_set()):
            life.end = "sigterm"
        else:
            life.end = f"exit {code}"
        with self._cond:
            self._current = None
            self._cond.notify_all()
        self._on_death(life)

    # -- what the harness does to it ---------------------------------------------------------

    def current(self) -> Life | None:
        with self._cond:
            return self._current

    def wait_ready(self, timeout_s: float) -> Life | None:
        """The current life once it is ready, or None if none became ready in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                life = self._current
                if life is not None and life.ready_at is not None and life.alive:
                    return life
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set() or not self._thread.is_alive():
                    return None
                self._cond.wait(min(left, 0.2))

    def kill(self, life: Life) -> bool:
        """SIGKILL this life, if it is still the one running."""
        with self._cond:
            if life is not self._current or not life.alive:
                return False
            life.killed_by_harness = True
            self._signal(life, signal.SIGKILL)
            return True

    def pause(self, life: Life) -> bool:
        with self._cond:
            if life is not self._current or not life.alive:
                return False
            life.paused = True
            self._signal(life, signal.SIGSTOP)
            return True

    def resume(self, life: Life) -> None:
        with self._cond:
            if life.paused:
                life.paused = False
                life.resumed_at = time.time()
                self._signal(life, signal.SIGCONT)

    def stop(self, grace_s: float) -> list[str]:
        """Stop restarting; SIGTERM the running life (or one that was just being started) and
        wait for it, and SIGKILL it if it outlives `grace_s`. Returns what went wrong."""
        self._stopping.set()
        problems: list[str] = []
        termed: dict[int, float] = {}  # life number -> when it was sent SIGTERM
        deadline = time.monotonic() + grace_s + 10
        while self._thread.is_alive() and time.monotonic() < deadline:
            life = self.current()
            if life is not None and life.alive:
                if life.number not in termed:
                    self.resume(life)
                    self._signal(life, signal.SIGTERM)
                    termed[life.number] = time.monotonic()
                elif time.monotonic() - termed[life.number] > grace_s:
                    problems.append(f"{life.name} ignored SIGTERM for {grace_s:g}s; killed")
                    self._signal(life, signal.SIGKILL)
                    termed[life.number] = float("inf")
            self._thread.join(0.1)
        if self._thread.is_alive():
            problems.append(f"the {self.role} supervisor did not stop")
        return problems

    def request_stop(self) -> None:
        self._stopping.set()

    @staticmethod
    def _signal(life: Life, sig: int) -> None:
        # only while the pid still names this life: an ended, reaped pid may be reused
        if life.proc.returncode is not None or start_time(life.pid) != life.start:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(life.pid, sig)


def orch_argv(role: str) -> list[str]:
    if role == "serve":
        return [sys.executable, "-m", "orch", "serve", "--host", "127.0.0.1", "--port", "0"]
    return [sys.executable, "-m", "orch", "worker"]


def orch_env(config: Path) -> dict[str, str]:
    """The harness's environment without any ORCH_* of the caller's, pointed at `config`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["ORCH_CONFIG"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    return env
