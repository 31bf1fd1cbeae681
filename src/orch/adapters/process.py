"""Child processes started through the launcher, so a kill reaches everything they started."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from orch import crashpoints
from orch.domain.failures import Trouble
from orch.domain.ledger import Budget, UsageFrom
from orch.ports import DEFAULT_OUTPUT_CAP, AgentReport, Confinement, RunAs, Usage

LAUNCHER = Path(__file__).with_name("sandbox") / "launcher.py"
KILL_MARGIN_S = 5.0  # how long the launcher may take to end its subtree before orch KILLs it
_CHUNK = 1 << 16
_LINE_MAX = 1 << 20  # a longer line reaches `on_line` in pieces


def launcher_args(
    argv: Sequence[str] | str,
    confine: Confinement | None,
    user: tuple[int, int] | None = None,
    not_after: float | None = None,
) -> list[str]:
    """The launcher's arguments that start `argv`, confined as `confine` says, and not at all
    after `not_after` (seconds since the epoch)."""
    command = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
    options: list[str] = [] if not_after is None else ["--not-after", repr(not_after)]
    if confine is not None and confine.landlock:
        options.append("--landlock")
        for flag, paths in (
            ("--write", confine.write),
            ("--read", confine.read),
            ("--protect", confine.protect),
            ("--device", confine.devices),
        ):
            for path in paths:
                options += [flag, str(path)]
    # only root may switch; an agent run as orch's own user simply runs
    if user is not None and os.geteuid() == 0 and user[0] != os.geteuid():
        options += ["--user", f"{user[0]}:{user[1]}"]
    return [*options, "--", *command]


class Launchers:
    """Launchers started ahead (`launcher.py --standby`), so that a command starts without
    waiting for an interpreter: about 10 ms of the way from a claim to an agent's first
    instruction. `keep` holds `count` ready while a worker runs; `take` hands one over, or None
    when none is ready (the caller starts one as before). A standby carries nothing of a run
    until it is taken: its environment names only the incarnation that started it, by which a
    later incarnation finds it, and it exits when its stdin ends, as it does when orch dies."""

    def __init__(self) -> None:
        self._ready: list[tuple[subprocess.Popen[bytes], int | None]] = []
        self._lock = threading.Lock()
        self._wanted = threading.Event()

    def take(self) -> tuple[subprocess.Popen[bytes], int | None] | None:
        """A live standby and its pidfd, now the caller's; None if none is ready."""
        with self._lock:
            while self._ready:
                proc, pidfd = self._ready.pop()
                self._wanted.set()
                if proc.poll() is None:
                    return proc, pidfd
                _close_pidfd(pidfd)
        return None

    def keep(self, count: int, incarnation: str, stop: threading.Event) -> None:
        """Hold `count` standbys until `stop` is set, then end them."""
        env = {"ORCH_INCARNATION": incarnation, "PATH": os.environ.get("PATH", os.defpath)}
        try:
            while not stop.is_set():
                self._wanted.clear()
                with self._lock:
                    missing = count - len(self._ready)
                for _ in range(missing):
                    try:
                        started = _standby(env)
                    except OSError as exc:
                        logging.getLogger("orch.process").warning(
                            "a launcher could not be started ahead: %s", exc
                        )
                        break
                    with self._lock:
                        self._ready.append(started)
                self._wanted.wait(1.0)
        finally:
            with self._lock:
                left, self._ready = self._ready, []
            for proc, pidfd in left:
                _end_standby(proc, pidfd)

    def wake(self) -> None:
        """Let a `keep` waiting for a take look at once (when it should stop)."""
        self._wanted.set()


def _standby(env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], int | None]:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(LAUNCHER), "--standby"],
        cwd="/",
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)
    return proc, pidfd


def _end_standby(proc: subprocess.Popen[bytes], pidfd: int | None) -> None:
    """An empty request ends a standby; one that does not end at once is killed."""
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()
    try:
        proc.wait(1.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _close_pidfd(pidfd)


def _close_pidfd(pidfd: int | None) -> None:
    if pidfd is not None:
        os.close(pidfd)


def _request(
    cwd: Path, stdin_path: Path | None, env: Mapping[str, str], launcher_args: Sequence[str]
) -> bytes:
    """What a standby launcher is told: see sandbox/launcher.py. What Popen would refuse is
    refused here too: a NUL anywhere would shift the fields after it (a title could then name
    the launcher's options and command), and a name with `=` would not read back."""
    if any("=" in name or not name for name in env):
        raise ValueError("illegal environment variable name")
    fields = [str(cwd), str(stdin_path or ""), str(len(env))]
    fields += [f"{k}={v}" for k, v in env.items()]
    fields += launcher_args
    encoded = [os.fsencode(f) for f in fields]
    if any(b"\0" in f for f in encoded):
        raise ValueError("embedded null byte")
    return b"\0".join(encoded)


class ProcessGroup:
    """One supervised child, started through the launcher (sandbox/launcher.py): the leader of
    a new session and a subreaper, so a kill reaches everything the command started, even what
    left the session. Its output passes through a pipe: a reader thread appends it to the log,
    at most `confine.output_cap` bytes of it (the tail is kept), and with `on_line` hands each
    line to `on_line` as it arrives, so an agent's events are seen the moment it prints them (a
    budget is enforced within one event).
    """

    def __init__(
        self,
        argv: Sequence[str] | str,
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        stdin_path: Path | None = None,
        on_line: Callable[[bytes], None] | None = None,
        user: tuple[int, int] | None = None,
        confine: Confinement | None = None,
        not_after: float | None = None,
        launchers: Launchers | None = None,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        # held while reaping, so kill_now never signals a launcher that was reaped
        self._reaping = threading.Lock()
        self._log = CappedLog(log_path, confine.output_cap if confine else DEFAULT_OUTPUT_CAP)
        self._pidfd: int | None = None
        args = launcher_args(argv, confine, user, not_after)
        try:
            warm = _told(launchers, cwd, stdin_path, env, args)
            if warm is not None:
                self._proc, self._pidfd = warm
            else:
                command = [sys.executable, "-I", "-S", str(LAUNCHER), *args]
                self._proc = _cold(command, cwd, stdin_path, env)
        except BaseException:
            self._log.close()
            raise
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=_pump,
            args=(self._proc.stdout, self._log, on_line),
            name=f"orch-output-{self._proc.pid}",
            daemon=True,
        )
        self._reader.start()
        self.pid: int | None = self._proc.pid
        # a pidfd becomes readable the moment the child exits, where Popen.wait(timeout) would
        # poll with sleeps of up to 50 ms
        if self._pidfd is None:
            with contextlib.suppress(AttributeError, OSError):
                self._pidfd = os.pidfd_open(self._proc.pid)

    def wait(self, timeout_s: float) -> int | None:
        """The exit status once the leader has exited (within `timeout_s`), else None.

        The launcher ends its whole subtree before it exits; whatever is still in its group is
        killed before it is reaped: until then its pid names the group, so the signal cannot
        reach a process that later inherits the pid.
        """
        if self._proc.returncode is not None:
            return self._proc.returncode
        if not self._exited(timeout_s):
            return None
        self._signal(signal.SIGKILL)
        return self._reap()

    def _exited(self, timeout_s: float) -> bool:
        """Whether the leader has exited, without reaping it."""
        if self._pidfd is not None:
            ready, _, _ = select.select([self._pidfd], [], [], max(timeout_s, 0.0))
            return bool(ready)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            try:
                info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.01, max(deadline - time.monotonic(), 0.0)))

    def _reap(self) -> int:
        with self._reaping:
            code = self._proc.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        # the subtree is dead, so the pipe is at its end: the last output is read before the
        # exit is reported
        self._reader.join(5.0)
        return code

    def kill_now(self) -> None:
        """Have the launcher KILL the whole subtree at once, without reaping: from the output
        reader, which must stop an agent before it starts another turn."""
        with self._reaping:
            if self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self._proc.pid, signal.SIGUSR1)

    def kill(self, grace_s: float) -> int | None:
        """TERM the subtree, wait out the grace, then KILL it; return the exit status."""
        if self._proc.returncode is not None:
            return self._proc.returncode
        if not self._exited(0):
            # the launcher passes the TERM on to every descendant, in its group or not
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._proc.pid, signal.SIGTERM)
            crashpoints.hit("agent.sigterm")
            code = self.wait(grace_s)
            if code is not None:
                return code
            self.kill_now()
            code = self.wait(KILL_MARGIN_S)
            if code is not None:
                return code
        self._signal(signal.SIGKILL)
        return self._reap()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def usage(self) -> Usage:
        return Usage()

    def usage_from(self) -> UsageFrom | None:
        return None

    def limit(self, budget: Budget) -> None:
        return None  # it reports no usage to hold to one

    def report(self) -> AgentReport | None:
        return None

    def retrying(self) -> bool:
        return False

    def trouble(self) -> Trouble | None:
        return None

    def close(self) -> None:
        return None

    def output_bytes(self) -> int:
        return self._log.received

    def dropped_bytes(self) -> int:
        return self._log.dropped

    def tail(self, chars: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _cold(
    command: list[str], cwd: Path, stdin_path: Path | None, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]


def _told(
    launchers: Launchers | None,
    cwd: Path,
    stdin_path: Path | None,
    env: Mapping[str, str],
    launcher_args: list[str],
) -> tuple[subprocess.Popen[bytes], int | None] | None:
    """A standby launcher given this command, or None when there is none to give it to."""
    if launchers is None:
        return None
    # what Popen would refuse is refused here too, before a standby is spent on it
    if not os.path.isdir(cwd):
        raise FileNotFoundError(errno.ENOENT, "No such directory", str(cwd))
    if stdin_path is not None:
        os.close(os.open(stdin_path, os.O_RDONLY))
    # as the standby resolves them: from its own directory, /
    where = Path(os.path.abspath(cwd))
    reading = Path(os.path.abspath(stdin_path)) if stdin_path is not None else None
    request = _request(where, reading, env, launcher_args)
    warm = launchers.take()
    if warm is None:
        return None
    proc, pidfd = warm
    assert proc.stdin is not None
    try:
        proc.stdin.write(request)
        proc.stdin.close()
    except OSError:  # it died since it was taken: a launcher is started as before
        _end_standby(proc, pidfd)
        return None
    except BaseException:
        _end_standby(proc, pidfd)
        raise
    return proc, pidfd


class CappedLog:
    """An output log that never holds more than `cap` bytes: past it, the oldest output goes
    and the newest half is kept, behind one line that says how much was cut."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = max(cap, 4096)
        self.received = 0  # everything the process printed, for the stall clock
        self.dropped = 0
        self._file = open(path, "ab")  # noqa: SIM115 - closed by the pump
        self._size = self._file.tell()
        self._note = 0  # the length of the note at the top of a cut log, which is not output

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self._size + len(data) > self.cap:
            self._cut(data)
            return
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _cut(self, data: bytes) -> None:
        keep = self.cap // 2
        self._file.flush()
        with open(self.path, "rb") as f:
            f.seek(max(0, self._size - keep))
            old = f.read()
        tail = (old + data)[-keep:]
        self.dropped += self._size - self._note + len(data) - len(tail)
        note = f"[orch: output cut at {self.cap} bytes; {self.dropped} bytes dropped]\n".encode()
        self._note = len(note)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(note + tail)
        self._file.flush()
        self._size = len(note) + len(tail)

    def close(self) -> None:
        self._file.close()


def _pump(pipe: IO[bytes], log: CappedLog, on_line: Callable[[bytes], None] | None) -> None:
    with pipe:
        try:
            if on_line is None:
                while chunk := pipe.read1(_CHUNK):  # type: ignore[attr-defined]
                    log.write(chunk)
                return
            while line := pipe.readline(_LINE_MAX):
                log.write(line)
                try:
                    on_line(line)
                except Exception:  # a parser's bug must not stop the log, nor leave the pipe full
                    logging.getLogger("orch.process").exception("reading %s failed", log.path)
        finally:
            log.close()


class LocalRunner:
    """Runs gate and deploy commands through the shell, each started by the launcher (one
    started ahead, from `launchers`, when one is ready)."""

    def __init__(self, launchers: Launchers | None = None) -> None:
        self.launchers = launchers

    def start(
        self,
        command: str,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        run_as: RunAs | None = None,
        confine: Confinement | None = None,
        not_after: float | None = None,
    ) -> ProcessGroup:
        if run_as is None:
            return ProcessGroup(
                command,
                cwd=cwd,
                env=env,
                log_path=log_path,
                confine=confine,
                not_after=not_after,
                launchers=self.launchers,
            )
        # a gate runs what the agent wrote (its tests, its conftest): as the agent's user
        run_as.grant(cwd)
        return ProcessGroup(
            command,
            cwd=cwd,
            env={**env, **run_as.env(env.get("HOME"))},
            log_path=log_path,
            user=(run_as.uid, run_as.gid),
            confine=confine,
            not_after=not_after,
            launchers=self.launchers,
        )
