"""What the agents that print JSON events (Claude Code, Codex) share: a process whose every
output line is parsed as it arrives, a running usage count, and a budget enforced on each event.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from orch.adapters.agents.users import AgentUser
from orch.adapters.process import Launchers, ProcessGroup
from orch.domain.errors import AgentError
from orch.domain.ledger import Prices, Usage
from orch.ports import AgentReport, AgentRequest

# the variables that name an agent CLI's own state directory
STATE_DIRS = ("CLAUDE_CONFIG_DIR", "CODEX_HOME")


class EventStream(Protocol):
    """Parses one agent's events; every method is called with the stream's lock held."""

    def feed(self, event: Mapping[str, Any]) -> None: ...
    def usage(self) -> Usage: ...
    def report(self, exit_code: int | None) -> AgentReport: ...


class StreamingProcess:
    """An agent process whose JSON events are read as they are printed. When the usage its
    events report crosses `budget`, the whole process group is killed before the agent can
    start another model turn."""

    def __init__(
        self,
        argv: Sequence[str],
        request: AgentRequest,
        env: Mapping[str, str],
        stream: EventStream,
        prices: Prices,
        stdin_path: Path | None = None,
        user: AgentUser | None = None,
        launchers: Launchers | None = None,
    ) -> None:
        self._stream = stream
        self._prices = prices
        self._budget = request.budget
        self._lock = threading.Lock()
        self._over = ""
        self._noise: list[str] = []  # lines that are not events: a CLI's own errors
        if user is not None:
            user.grant(request.workdir)
            env = {**env, **user.env(request.env.get("HOME"))}
        confine = request.confine
        if confine is not None:
            # the CLI keeps its sessions and settings in its own directory, when one is named;
            # it must exist to be granted
            state = [Path(env[n]) for n in STATE_DIRS if env.get(n)]
            for path in state:
                path.mkdir(parents=True, exist_ok=True)
            confine = confine.writing(*state)
        self._group = ProcessGroup(
            argv,
            cwd=request.workdir,
            env=env,
            log_path=request.log_path,
            stdin_path=stdin_path,
            on_line=self._line,
            user=(user.uid, user.gid) if user else None,
            confine=confine,
            launchers=launchers,
        )
        self.pid = self._group.pid
        with self._lock:
            over = self._over
        if over:  # crossed before the group was known here
            self._group.kill_now()

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        with self._lock:
            if not isinstance(event, dict):
                self._noise = [*self._noise[-19:], text[:500]]
                return
            self._stream.feed(event)
            if not self._over:
                self._over = self._budget.crossed(self._prices.priced(self._stream.usage()))
        if self._over:
            # again on every later line, until the group is gone
            group = getattr(self, "_group", None)
            if group is not None:
                group.kill_now()

    def wait(self, timeout_s: float) -> int | None:
        return self._group.wait(timeout_s)

    def kill(self, grace_s: float) -> int | None:
        return self._group.kill(grace_s)

    def output_bytes(self) -> int:
        return self._group.output_bytes()

    def dropped_bytes(self) -> int:
        return self._group.dropped_bytes()

    def tail(self, chars: int = 2000) -> str:
        return self._group.tail(chars)

    def usage(self) -> Usage:
        with self._lock:
            return self._prices.priced(self._stream.usage())

    def report(self) -> AgentReport:
        code = self._group.wait(0)
        with self._lock:
            report = self._stream.report(code)
            if self._over and not report.over_budget:
                report = replace(
                    report,
                    ok=False,
                    detail=f"stopped by orch: {self._over}",
                    over_budget=self._over,
                )
            if not report.ok and self._noise:
                # what the CLI printed besides its events: its own error message
                said = "; ".join(self._noise[-3:])
                detail = f"{report.detail}: {said}" if report.detail else said
                report = replace(report, detail=detail[:2000])
            return report


def replay(log_path: Path, stream: EventStream, prices: Prices) -> Usage:
    """What a run's log says it spent: its events read again, after its worker died. A run
    cut off before its CLI priced it costs what `prices` say, or nothing."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    stream.feed(event)
    except OSError:
        return Usage()
    return prices.priced(stream.usage())


def find_binary(configured: str, env_var: str, environ: Mapping[str, str]) -> str:
    """Where an agent's CLI is: the configured path, else `env_var`, else the name on PATH."""
    override = environ.get(env_var, "")
    candidate = configured if os.sep in configured or not override else override
    found = shutil.which(candidate, path=environ.get("PATH"))
    return found or candidate


def missing_binary(binary: str, env_var: str, package: str, version: str) -> str | None:
    """A one-line hint when the CLI cannot be run, else None."""
    if shutil.which(binary) is not None:
        return None
    return (
        f"{binary} not found: install it with `npm install -g {package}@{version}`, or point"
        f" {env_var} at the binary"
    )


def write_prompt(request: AgentRequest, text: str) -> Path:
    """The prompt as a file the CLI reads on stdin: an argument is limited to 128 KiB."""
    path = request.log_path.with_suffix(".stdin.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def not_startable(name: str, argv0: str, exc: OSError) -> AgentError:
    return AgentError(f"agent {name!r} could not start {argv0}: {exc.strerror or exc}")
