"""What the agents that print JSON events (Claude Code, Codex) share: a process whose every
output line is parsed as it arrives, a running usage count, and a budget enforced on each event.

Behind orch's metering proxy (the default) the tokens are the provider's own, counted by the
proxy as each answer streams, and the budget is also enforced there; the agent's events still
tell how the run ended, and Claude Code's its cost. Without the proxy the events are all there
is.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from orch.adapters.agents.proxy import Meter, MeteringProxy, read_record
from orch.adapters.agents.users import AgentUser
from orch.adapters.process import Launchers, ProcessGroup
from orch.domain.errors import AgentError
from orch.domain.failures import FailureClass, Trouble
from orch.domain.ledger import Budget, Figure, Metered, Prices, Usage, UsageFrom
from orch.domain.prices import Pricing
from orch.ports import AgentReport, AgentRequest

# the variables that name an agent CLI's own state directory
STATE_DIRS = ("CLAUDE_CONFIG_DIR", "CODEX_HOME")


class EventStream(Protocol):
    """Parses one agent's events; every method is called with the stream's lock held."""

    def feed(self, event: Mapping[str, Any]) -> None: ...
    def usage(self) -> Usage:
        """The tokens its events report, with the cost where the agent gave one."""
        ...

    def metered(self, pricing: Pricing) -> Metered:
        """Its usage priced: by the agent where it priced it, else by `pricing`."""
        ...

    def report(self, exit_code: int | None) -> AgentReport: ...
    def retrying(self) -> bool:
        """Whether its last event says the CLI is retrying a failed model request."""
        ...

    def trouble(self) -> Trouble | None:
        """What the CLI's own retry events say its provider did, while it retries."""
        ...


class StreamingProcess:
    """An agent process whose JSON events are read as they are printed. When the usage its
    events (or its meter at the proxy) report crosses `budget`, the whole process group is
    killed before the agent can start another model turn."""

    def __init__(
        self,
        argv: Sequence[str],
        request: AgentRequest,
        env: Mapping[str, str],
        stream: EventStream,
        pricing: Pricing,
        stdin_path: Path | None = None,
        user: AgentUser | None = None,
        launchers: Launchers | None = None,
        meter: tuple[MeteringProxy, Meter] | None = None,
    ) -> None:
        self._stream = stream
        self._pricing = pricing
        self._budget = request.budget
        self._lock = threading.Lock()
        self._over = ""
        self._noise: list[str] = []  # lines that are not events: a CLI's own errors
        self._proxy, self.meter = meter if meter is not None else (None, None)
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
        if self.meter is not None:
            self.meter.on_usage = self._counted
        with self._lock:
            over = self._over
        if over:  # crossed before the group was known here
            self._group.kill_now()

    def _counted(self) -> None:
        """The proxy counted more of this run's usage (on the proxy's thread)."""
        with self._lock:
            self._check()
        self._stop_if_over()

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
            self._check()
        self._stop_if_over()

    def _check(self) -> None:
        """With the lock held: whether what the run spent crossed its budget."""
        if not self._over:
            self._over = self._budget.crossed(self._metered().usage)

    def _stop_if_over(self) -> None:
        # again on every later line or count, until the group is gone
        if self._over:
            group = getattr(self, "_group", None)
            if group is not None:
                group.kill_now()

    def limit(self, budget: Budget) -> None:
        if self.meter is not None:
            self.meter.limit(budget)
        with self._lock:
            self._budget = budget
            self._check()
        self._stop_if_over()

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
            return self._metered().usage

    def usage_from(self) -> UsageFrom:
        with self._lock:
            return self._metered().source

    def retrying(self) -> bool:
        """Whether the agent is in its CLI's retries of a failed model request: the proxy saw
        the provider fail since its last good answer, or the CLI's own last event says so."""
        if self.meter is not None and self.meter.trouble() is not None:
            return True
        with self._lock:
            return self._stream.retrying()

    def trouble(self) -> Trouble | None:
        """How the provider failed the run since its last good answer: as the proxy saw it,
        else as the CLI's own retry events say."""
        if self.meter is not None and self.meter.rejected:
            # the run asked for what orch's settings cannot meter: retrying would not help
            why = f"orch's metering proxy refused its request: {self.meter.rejected}"
            return Trouble(FailureClass.PERMANENT, why)
        if self.meter is not None:
            error = self.meter.trouble()
            if error is not None and error.failure is not None:
                if error.failure == FailureClass.PERMANENT:
                    var = self.meter.upstream.key_env
                    what = "the key" if error.status != 403 else "this request for the key"
                    return Trouble(
                        error.failure,
                        f"the provider refused {what} orch holds in {var}"
                        f" ({error.describe()}): set a key in {var} in orch's environment that"
                        " the provider accepts for this model",
                    )
                return Trouble(
                    error.failure, f"the provider failed: {error.describe()}", error.retry_after_s
                )
        with self._lock:
            return self._stream.trouble()

    def _metered(self) -> Metered:
        """What the run spent: the proxy's count of the provider's tokens where there is one,
        priced by the agent where it priced the run, else by the price table."""
        own = self._stream.metered(self._pricing)
        if self.meter is None:
            return own
        return with_agents_cost(self.meter.metered(), own)

    def close(self) -> None:
        """The run is over: its token at the proxy is revoked, so nothing it left behind can
        spend more."""
        if self._proxy is not None and self.meter is not None:
            self._proxy.revoke(self.meter)

    def report(self) -> AgentReport:
        code = self._group.wait(0)
        refused = self.meter.refused if self.meter is not None else ""
        with self._lock:
            report = self._stream.report(code)
            over = self._over or refused
            if over and not report.over_budget:
                report = replace(
                    report,
                    ok=False,
                    detail=f"stopped by orch: {over}",
                    over_budget=over,
                )
            if not report.ok and self._noise:
                # what the CLI printed besides its events: its own error message
                said = "; ".join(self._noise[-3:])
                detail = f"{report.detail}: {said}" if report.detail else said
                report = replace(report, detail=detail[:2000])
            return report


def record_of(log_path: Path) -> Path:
    """Where the proxy writes down each model answer of the run whose log is `log_path`."""
    return log_path.with_suffix(".usage.jsonl")


def replay(log_path: Path, stream: EventStream, pricing: Pricing) -> Metered:
    """What a run spent, read back after its worker died: what the proxy recorded of the
    provider's answers, else the agent's events in its log. A run cut off before its CLI priced
    it is priced by the price table."""
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
        pass
    own = stream.metered(pricing)
    counted = read_record(record_of(log_path), pricing)
    return own if counted is None else with_agents_cost(counted, own)


def with_agents_cost(counted: Metered, own: Metered) -> Metered:
    """The proxy's count, at the agent's own price where it gave one that is higher: what the
    agent says can add (a price orch's table lacks), never take away (its own output is not
    to be trusted to lower the bill)."""
    if own.source.usd == Figure.AGENT and own.usage.cost_usd > counted.usage.cost_usd:
        usage = replace(counted.usage, cost_usd=own.usage.cost_usd)
        return Metered(usage, UsageFrom(Figure.PROVIDER, Figure.AGENT))
    return counted


def estimate(usage: Usage, prices: Prices | None) -> Metered:
    """Tokens the agent counted, priced by orch (or not at all, without a price)."""
    if prices is None:
        return Metered(replace(usage, cost_usd=0.0), UsageFrom(Figure.AGENT, Figure.UNPRICED))
    priced = replace(usage, cost_usd=prices.cost(usage))
    return Metered(priced, UsageFrom(Figure.AGENT, Figure.ESTIMATED))


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


def launched(
    name: str,
    argv0: str,
    metering: tuple[MeteringProxy, Meter] | None,
    start: Callable[[], StreamingProcess],
) -> StreamingProcess:
    """`start()`'s process; if it does not start, the token issued for it is revoked (a token
    of no run), and a command that cannot be run says so."""
    try:
        return start()
    except BaseException as exc:
        if metering is not None:
            metering[0].revoke(metering[1])
        if isinstance(exc, OSError):
            raise not_startable(name, argv0, exc) from exc
        raise
