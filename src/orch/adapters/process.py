"""Child processes in their own process group, so a kill reaches everything they started."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from orch import crashpoints
from orch.ports import AgentReport, RunAs, Usage


class ProcessGroup:
    """One supervised child: the leader of a new session, output appended to a log file.

    With `on_line`, the output passes through a pipe: a reader thread appends each line to the
    log and hands it to `on_line` as it arrives, so an agent's events are seen the moment it
    prints them (a budget is enforced within one event).
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
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._reader: threading.Thread | None = None
        # held while reaping, so kill_now never signals a group whose leader was reaped
        self._reaping = threading.Lock()
        # only root may switch; an agent run as orch's own user simply runs
        switch = user is not None and os.geteuid() == 0 and user[0] != os.geteuid()
        with open(log_path, "ab") as log:
            stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
            try:
                self._proc = subprocess.Popen(
                    argv,
                    shell=isinstance(argv, str),
                    cwd=cwd,
                    env=dict(env),
                    stdin=stdin,
                    stdout=subprocess.PIPE if on_line else log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # (uid, gid): the child runs as that user, with no other groups
                    user=user[0] if switch else None,
                    group=user[1] if switch else None,
                    extra_groups=[] if switch else None,
                )
            finally:
                if stdin_path:
                    stdin.close()  # type: ignore[union-attr]
        if on_line is not None:
            assert self._proc.stdout is not None
            self._reader = threading.Thread(
                target=_pump,
                args=(self._proc.stdout, log_path, on_line),
                name=f"orch-output-{self._proc.pid}",
                daemon=True,
            )
            self._reader.start()
        self.pid: int | None = self._proc.pid
        # a pidfd becomes readable the moment the child exits, where Popen.wait(timeout) would
        # poll with sleeps of up to 50 ms
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self._proc.pid)

    def wait(self, timeout_s: float) -> int | None:
        """The exit status once the leader has exited (within `timeout_s`), else None.

        When the leader exits, whatever it left running in its group is killed before the
        leader is reaped: until then its pid names the group, so the signal cannot reach a
        process that later inherits the pid.
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
        if self._reader is not None:
            # the group is dead, so the pipe is at its end: the last events are read before the
            # exit is reported
            self._reader.join(5.0)
        return code

    def kill_now(self) -> None:
        """SIGKILL the whole group at once, without reaping: from the output reader, which must
        stop an agent before it starts another turn."""
        with self._reaping:
            if self._proc.returncode is None:
                self._signal(signal.SIGKILL)

    def kill(self, grace_s: float) -> int | None:
        """TERM the group, wait out the grace, then KILL it; return the exit status."""
        if self._proc.returncode is not None:
            return self._proc.returncode
        if not self._exited(0):
            self._signal(signal.SIGTERM)
            crashpoints.hit("agent.sigterm")
            code = self.wait(grace_s)
            if code is not None:
                return code
        self._signal(signal.SIGKILL)
        return self._reap()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def usage(self) -> Usage:
        return Usage()

    def report(self) -> AgentReport | None:
        return None

    def output_bytes(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def tail(self, chars: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _pump(pipe: IO[bytes], log_path: Path, on_line: Callable[[bytes], None]) -> None:
    with pipe, open(log_path, "ab") as log:
        for line in pipe:
            log.write(line)
            log.flush()
            try:
                on_line(line)
            except Exception:  # a parser's bug must not stop the log, nor leave the pipe full
                logging.getLogger("orch.process").exception("reading %s failed", log_path)


class LocalRunner:
    """Runs gate and deploy commands through the shell, each in its own process group."""

    def start(
        self,
        command: str,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        run_as: RunAs | None = None,
    ) -> ProcessGroup:
        if run_as is None:
            return ProcessGroup(command, cwd=cwd, env=env, log_path=log_path)
        # a gate runs what the agent wrote (its tests, its conftest): as the agent's user
        run_as.grant(cwd)
        return ProcessGroup(
            command,
            cwd=cwd,
            env={**env, **run_as.env()},
            log_path=log_path,
            user=(run_as.uid, run_as.gid),
        )
