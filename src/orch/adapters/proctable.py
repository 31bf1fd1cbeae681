"""The process table, read from /proc: who this process is, whether an earlier incarnation is
provably dead, and which of its children outlived it.

A pid alone proves nothing: it may have been reused. A process is named by its pid and its start
time (field 22 of /proc/<pid>/stat), and is signalled only while both still match, so an
unrelated process that inherited a pid is never touched.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ENV = "ORCH_INCARNATION"
_PROC = Path("/proc")
_PR_SET_DUMPABLE = 4


def hide_environment() -> bool:
    """Make this process non-dumpable, so its /proc/<pid>/environ (which holds orch's
    credentials) cannot be read by its children: agents run as the same user unless `run_as`
    says otherwise, and `cat /proc/$PPID/environ` is one shell command away. Root can still
    read it. Returns whether it took."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def start_time(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot, or None if no such process exists."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie has exited; it only waits to be reaped
    return fields[19]


def parse_incarnation(value: str) -> tuple[str, int, str] | None:
    """(host, pid, start time) of an incarnation `host:pid:start:uuid`, or None if malformed."""
    parts = value.split(":")
    if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


@dataclass(frozen=True)
class Orphan:
    pid: int
    start: str
    incarnation: str


class LinuxProcessTable:
    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()

    def incarnation(self) -> str:
        pid = os.getpid()
        # without a readable start time, "-" leaves the incarnation impossible to prove dead
        return f"{self.host}:{pid}:{start_time(pid) or '-'}:{uuid.uuid4().hex[:12]}"

    def is_dead(self, incarnation: str) -> bool:
        """True only when this host can prove it: same host, and the pid is gone or now names a
        process that started at another time."""
        parsed = parse_incarnation(incarnation)
        if parsed is None or parsed[0] != self.host:
            return False
        _, pid, started = parsed
        return start_time(pid) != started

    def children_of(self, incarnations: set[str] | None = None) -> list[Orphan]:
        """Processes carrying an incarnation in their environment (all of them, or those named)."""
        found: list[Orphan] = []
        needle = ENV.encode() + b"="
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            for item in environ.split(b"\0"):
                if not item.startswith(needle):
                    continue
                value = item[len(needle) :].decode(errors="replace")
                started = start_time(int(entry.name))
                if started is not None and (incarnations is None or value in incarnations):
                    found.append(Orphan(int(entry.name), started, value))
                break
        return found

    def orphans(self, live: str) -> list[Orphan]:
        """Children of incarnations that are provably dead: nobody supervises them any more."""
        dead: dict[str, bool] = {}
        out = []
        for child in self.children_of():
            if child.incarnation == live:
                continue
            if child.incarnation not in dead:
                dead[child.incarnation] = self.is_dead(child.incarnation)
            if dead[child.incarnation]:
                out.append(child)
        return out

    def reap_orphans(self, live: str, grace_s: float) -> list[int]:
        """Kill the orphaned children of dead incarnations: TERM, the grace, then KILL; every
        signal goes only to a pid whose start time still matches. Returns the pids ended."""
        orphans = self.orphans(live)
        for o in orphans:
            self.signal(o.pid, o.start, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(start_time(o.pid) == o.start for o in orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        for o in orphans:
            self.signal(o.pid, o.start, signal.SIGKILL)
        return [o.pid for o in orphans]

    @staticmethod
    def signal(pid: int, start: str, sig: int) -> bool:
        """Send `sig` to `pid` only if it is still the process that started at `start`."""
        if start_time(pid) != start:
            return False
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
