"""The Claude Code agent: `claude -p` with stream-json events (../shared/specs/INTEGRATIONS.md §7).

The last `result` event decides the run: `success` with `is_error` false is success; a turn
limit, a budget or an error is not, and `is_error` is checked even on `success` (an API error can
end that way). Behind orch's metering proxy (the default) the agent is given the proxy's URL and
a token of its own in ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY; the real key (ANTHROPIC_API_KEY,
or ANTHROPIC_AUTH_TOKEN, from orch's environment or the agent's `env`) stays in orch. Without it,
tokens come from each model message as it streams (`--include-partial-messages`), so a budget
can stop the run within one event; the cost comes from the result, where the CLI prices its own
usage, or for a run stopped before its result from the price table, by each message's model.

Two behaviours of the CLI shape the invocation: it refuses `bypassPermissions` as root, so orch
defaults to `acceptEdits` with an explicit tool allowlist; and it may retry forever against an
endpoint that refuses it, so orch's own attempt and stall timeouts always apply.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orch.adapters.agents.proxy import MeteringProxy, Upstream, anthropic_usage
from orch.adapters.agents.streaming import (
    StreamingProcess,
    find_binary,
    launched,
    missing_binary,
    record_of,
    replay,
    write_prompt,
)
from orch.adapters.agents.users import AgentUser
from orch.adapters.process import Launchers
from orch.domain.errors import AgentError, ConfigError
from orch.domain.failures import FailureClass, Trouble, provider_answer
from orch.domain.ledger import Figure, Metered, Prices, Usage, UsageFrom
from orch.domain.prices import Pricing
from orch.ports import AgentReport, AgentRequest

PACKAGE, VERSION = "@anthropic-ai/claude-code", "2.1.328"
BIN_ENV = "ORCH_CLAUDE_BIN"
PERMISSION_MODES = ("acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan")
DEFAULT_TOOLS = ("Bash", "Edit", "Read", "Write", "Glob", "Grep")

# the agent's own variables: its key, its endpoint, where it keeps its sessions
ENV_NAMES = frozenset(
    {
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_CUSTOM_HEADERS",
        "ANTHROPIC_MODEL",
        "CLAUDE_CONFIG_DIR",
        "API_TIMEOUT_MS",
    }
)
# the variables that hold the provider's key and endpoint: behind the proxy, orch's alone
KEY_NAMES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
PROVIDER_NAMES = frozenset({*KEY_NAMES, "ANTHROPIC_BASE_URL"})
DEFAULT_BASE_URL = "https://api.anthropic.com"
# nothing but the model's own requests leaves the machine
QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


class ClaudeStream:
    """The state of one run, from its stream-json events.

    Tokens are counted per model message from the run's own events: `message_start` knows a
    message's input, and only `message_delta` (a partial-message event) its real output, so a
    budget sees each turn's output as soon as the model has produced it. Cost comes from the
    `result` event, where Claude Code prices the run itself. A resumed session's result also
    counts the turns of the runs before it, so `carried` (what the previous run of the session
    reported) is taken off.
    """

    def __init__(self, carried: Usage | None = None) -> None:
        self.carried = carried or Usage()
        self.session: str | None = None
        self.messages: dict[str, Usage] = {}  # per model message: the highest counts seen
        self.models: dict[str, str] = {}  # per model message: the model that wrote it
        self.last = ""  # the kind of its latest event: `api_retry` while the CLI retries
        self.retry: Mapping[str, Any] = {}  # its latest `api_retry` event
        self.api_error: Mapping[str, Any] = {}  # its latest failed request, as it said it
        self.result: Mapping[str, Any] | None = None
        self.tools: list[str] = []
        self.text = ""

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        self.last = str(event.get("subtype") or "") if kind == "system" else str(kind)
        if self.last == "api_retry":
            self.retry = event
        if kind == "system" and event.get("subtype") == "init":
            # only a started session can be resumed: a failed --resume names the session it
            # could not find in its result, never in an init
            self.session = str(event.get("session_id") or "") or self.session
        elif kind == "stream_event":
            self._partial(event)
        elif kind == "assistant":
            if event.get("is_api_error_message"):
                # Claude Code's own account of a failed request, as a synthetic message
                self.api_error = event
            self._assistant(event.get("message") or {})
        elif kind == "result":
            self.result = event

    def _partial(self, event: Mapping[str, Any]) -> None:
        inner = event.get("event") or {}
        message = inner.get("message") or {}
        key = str(event.get("api_message_id") or message.get("id") or "")
        if key and inner.get("type") == "message_start":
            if message.get("model"):
                self.models[key] = str(message["model"])
            self._count(key, message.get("usage") or {})
        elif key and inner.get("type") == "message_delta":
            self._count(key, inner.get("usage") or {})

    def _assistant(self, message: Mapping[str, Any]) -> None:
        # one message may arrive as several events (a block each), each with its start's usage
        key = str(message.get("id") or "")
        if key and message.get("model"):
            self.models[key] = str(message["model"])
        self._count(key, message.get("usage") or {})
        for block in message.get("content") or ():
            if block.get("type") == "tool_use":
                self.tools.append(_tool_call(block))
            elif block.get("type") == "text" and block.get("text"):
                self.text = str(block["text"])

    def _count(self, key: str, usage: Mapping[str, Any]) -> None:
        seen = self.messages.get(key, Usage())
        now = anthropic_usage(usage)
        self.messages[key or str(len(self.messages))] = Usage(
            max(seen.tokens_in, now.tokens_in),
            max(seen.tokens_out, now.tokens_out),
            max(seen.cache_read, now.cache_read),
            max(seen.cache_write, now.cache_write),
        )

    def usage(self) -> Usage:
        own = sum(self.messages.values(), Usage())
        if self.result is None:
            return own
        reported = self.reported()
        if not self.messages:
            return reported
        cost = reported.cost_usd
        if _tokens(reported) > _tokens(own):
            # the CLI carried the session's earlier runs into this result
            cost = (
                max(cost - self.carried.cost_usd, 0.0)
                if self.carried.cost_usd
                else (cost * _tokens(own) / _tokens(reported))
            )
        return Usage(own.tokens_in, own.tokens_out, own.cache_read, own.cache_write, cost)

    def metered(self, pricing: Pricing) -> Metered:
        usage = self.usage()
        if self.result is not None and usage.cost_usd:
            return Metered(usage, UsageFrom(Figure.AGENT, Figure.AGENT))
        # stopped before the CLI priced it: each message at its own model's price
        cost, unpriced = 0.0, False
        for key, spent in self.messages.items():
            prices = pricing.of(self.models.get(key))
            if prices is None:
                unpriced = True
            else:
                cost += prices.cost(spent)
        usd = Figure.UNPRICED if unpriced and not cost else Figure.ESTIMATED
        return Metered(
            Usage(usage.tokens_in, usage.tokens_out, usage.cache_read, usage.cache_write, cost),
            UsageFrom(Figure.AGENT, usd),
        )

    def retrying(self) -> bool:
        return self.last == "api_retry"

    def trouble(self) -> Trouble | None:
        if not self.retrying():
            return None
        status = int(self.retry.get("error_status") or 0)
        error = self.retry.get("error")
        said = error if isinstance(error, str) else json.dumps(error)[:300] if error else ""
        kind = provider_answer(status, said if isinstance(error, str) else "")
        what = f"HTTP {status}" if status else "no answer"
        attempt = f"retry {self.retry.get('attempt')} of {self.retry.get('max_retries')}"
        return Trouble(
            kind or FailureClass.PROVIDER, f"the provider failed: {what} {said} ({attempt})"
        )

    def reported(self) -> Usage:
        """The result's own totals: for a resumed session, since the session began."""
        return _result_usage(self.result) if self.result is not None else Usage()

    def report(self, exit_code: int | None) -> AgentReport:
        tools = tuple(self.tools)
        r = self.result
        reported = self.reported() if r is not None else None
        if r is None:
            detail = f"exited {exit_code} without a result event" if exit_code else ""
            return AgentReport(exit_code == 0, detail, session=self.session, tools=tools)
        subtype = str(r.get("subtype", ""))
        errors = "; ".join(str(e) for e in r.get("errors") or ())
        if subtype == "error_max_budget_usd":
            why = f"budget: the agent's own limit (--max-budget-usd): {errors or subtype}"
            return AgentReport(
                False, why, over_budget=why, session=self.session, tools=tools, reported=reported
            )
        if subtype == "success" and not r.get("is_error"):
            text = str(r.get("result", ""))[:2000]
            return AgentReport(True, text, session=self.session, tools=tools, reported=reported)
        if subtype == "error_max_turns":
            detail = f"turn limit reached after {r.get('num_turns')} turns"
        elif self.api_error:
            e = self.api_error
            status, kind = e.get("api_error_status"), e.get("api_error_type") or e.get("error")
            said = f" {status}" if status else ""
            detail = f"API error{said} {kind}: {r.get('result', '') or self.text}"
        elif r.get("is_error") and subtype == "success":
            status = r.get("api_error_status")
            detail = f"API error{f' {status}' if status else ''}: {r.get('result', '')}"
        else:
            detail = f"{subtype or 'error'}: {errors or r.get('terminal_reason', '')}"
        return AgentReport(
            False, detail[:2000], session=self.session, tools=tools, reported=reported
        )


def _tokens(u: Usage) -> int:
    return u.tokens_in + u.tokens_out + u.cache_read + u.cache_write


def _result_usage(r: Mapping[str, Any]) -> Usage:
    """The result's totals: `modelUsage` counts every model the run used, subagents included."""
    models = r.get("modelUsage") or {}
    cost = float(r.get("total_cost_usd") or 0.0)
    if models:
        total = Usage()
        for m in models.values():
            total = total + Usage(
                int(m.get("inputTokens") or 0),
                int(m.get("outputTokens") or 0),
                int(m.get("cacheReadInputTokens") or 0),
                int(m.get("cacheCreationInputTokens") or 0),
            )
        return Usage(total.tokens_in, total.tokens_out, total.cache_read, total.cache_write, cost)
    u = anthropic_usage(r.get("usage") or {})
    return Usage(u.tokens_in, u.tokens_out, u.cache_read, u.cache_write, cost)


def _tool_call(block: Mapping[str, Any]) -> str:
    args = block.get("input") or {}
    what = args.get("file_path") or args.get("command") or args.get("pattern") or ""
    return f"{block.get('name')} {str(what)[:120]}".strip()


class ClaudeCodeAgent:
    def __init__(
        self,
        name: str,
        *,
        command: str = "claude",
        model: str = "sonnet",
        permission_mode: str = "acceptEdits",
        allowed_tools: Sequence[str] = DEFAULT_TOOLS,
        max_turns: int = 40,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        pass_env: Sequence[str] = (),
        prices: Prices | None = None,
        run_as: str | None = None,
        environ: Mapping[str, str] | None = None,
        launchers: Launchers | None = None,
        euid: Callable[[], int] = os.geteuid,
        proxy: MeteringProxy | None = None,
    ) -> None:
        if permission_mode not in PERMISSION_MODES:
            raise ConfigError(
                f"agent {name!r}: permission_mode {permission_mode!r} is not one of"
                f" {', '.join(PERMISSION_MODES)}"
            )
        environ = os.environ if environ is None else environ
        self.launchers = launchers
        self.env = dict(env or {})
        self.run_as = AgentUser.resolve(name, run_as, euid) if run_as else None
        if (
            permission_mode == "bypassPermissions"
            and euid() == 0
            and self.run_as is None
            and self.env.get("IS_SANDBOX", environ.get("IS_SANDBOX")) != "1"
        ):
            raise ConfigError(
                f"agent {name!r}: claude refuses permission_mode bypassPermissions as root; use"
                " acceptEdits (the default) with allowed_tools, set run_as to a non-root user,"
                " or set IS_SANDBOX=1 in the agent's env if it runs in a sandbox"
            )
        self.name = name
        self.binary = find_binary(command, BIN_ENV, environ)
        self.model = model
        self.permission_mode = permission_mode
        self.allowed_tools = tuple(allowed_tools)
        self.max_turns = max_turns
        self.extra_args = tuple(extra_args)
        self.pricing = Pricing(prices, model)
        self.proxy = proxy
        names = ENV_NAMES | frozenset(pass_env)
        self.upstream: Upstream | None = None
        self.key_problem = ""
        if proxy is not None:
            # the key and the endpoint are orch's: the agent gets the proxy's and a token
            names -= PROVIDER_NAMES
            self.upstream, self.key_problem = _upstream(name, self.env, environ)
        self.env_names = names
        self.meters = frozenset({"tokens", "usd"})

    def preflight(self) -> str | None:
        return missing_binary(self.binary, BIN_ENV, PACKAGE, VERSION) or self.key_problem or None

    def usage_from_log(self, log_path: Path) -> Metered:
        return replay(log_path, ClaudeStream(), self.pricing)

    def argv(self, request: AgentRequest, session: str) -> list[str]:
        argv = [
            self.binary,
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--model",
            self.model,
            "--permission-mode",
            self.permission_mode,
            "--max-turns",
            str(self.max_turns),
        ]
        if self.allowed_tools:
            argv += ["--allowedTools", " ".join(self.allowed_tools)]
        if request.instructions:
            argv += ["--append-system-prompt", request.instructions]
        argv += ["--resume", session] if request.resume else ["--session-id", session]
        if request.budget.usd is not None:
            # the CLI holds a resumed session's whole cost to this limit, the earlier runs' too
            limit = request.budget.usd + (request.carried.cost_usd if request.resume else 0.0)
            argv += ["--max-budget-usd", f"{limit:.6f}"]
        return [*argv, *self.extra_args]

    def start(self, request: AgentRequest) -> StreamingProcess:
        if self.key_problem:
            raise AgentError(self.key_problem)
        session = request.resume or str(uuid.uuid4())
        argv = self.argv(request, session)
        env = {**request.env, **QUIET, **self.env}
        metering = None
        if self.proxy is not None and self.upstream is not None:
            meter = self.proxy.issue(
                self.upstream, request.budget, self.pricing, record_of(request.log_path)
            )
            metering = (self.proxy, meter)
            env = {k: v for k, v in env.items() if k not in PROVIDER_NAMES}
            env |= {"ANTHROPIC_BASE_URL": self.proxy.url, "ANTHROPIC_API_KEY": meter.token}
        return launched(
            self.name,
            argv[0],
            metering,
            lambda: StreamingProcess(
                argv,
                request,
                env,
                ClaudeStream(request.carried if request.resume else None),
                self.pricing,
                stdin_path=write_prompt(request, request.prompt),
                user=self.run_as,
                launchers=self.launchers,
                meter=metering,
            ),
        )


def _upstream(
    name: str, env: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[Upstream | None, str]:
    """Where the proxy sends the agent's requests, with which key; or why it cannot."""
    for var in KEY_NAMES:
        key = env.get(var) or environ.get(var) or ""
        if key:
            base = env.get("ANTHROPIC_BASE_URL") or environ.get("ANTHROPIC_BASE_URL")
            upstream = Upstream(
                "anthropic",
                base or DEFAULT_BASE_URL,
                key,
                var,
                bearer=var == "ANTHROPIC_AUTH_TOKEN",
            )
            return upstream, ""
    return None, (
        f"agent {name!r} needs the provider's key: set ANTHROPIC_API_KEY (or"
        " ANTHROPIC_AUTH_TOKEN) in orch's environment, or in the agent's `env` setting. orch"
        " keeps the key and gives the agent a token of its own for orch's metering proxy (or"
        " set `proxy: off` for the agent to use its own login)"
    )
