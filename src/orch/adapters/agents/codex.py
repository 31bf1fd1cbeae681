"""The Codex agent: `codex exec --json` (../shared/specs/INTEGRATIONS.md §8).

Codex prints thread, turn and item events. `turn.completed` carries the turn's usage and ends a
successful run; `turn.failed` is a failure. Codex reports tokens and no cost, so its dollars are
orch's estimate: the configured `prices`, else the price table's for its model. Its provider is a
custom one with the Responses wire API, configured by `-c` overrides so nothing depends on a
config file in the agent's home. Behind orch's metering proxy (the default) that provider is the
proxy, and the key variable codex reads (ORCH_MODEL_TOKEN) holds the run's own token; the real
key (the provider's `env_key`, or OPENAI_API_KEY) stays in orch, and the proxy counts each answer's
usage as it streams, so a Codex run is held to its budget within one model request. Its stdin is
the prompt and then end-of-file: `codex exec` would otherwise wait for more input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orch.adapters.agents.proxy import MeteringProxy, Upstream, fresh_input
from orch.adapters.agents.streaming import (
    StreamingProcess,
    estimate,
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
from orch.domain.failures import FailureClass, Trouble
from orch.domain.ledger import Metered, Prices, Usage
from orch.domain.prices import Pricing
from orch.ports import AgentReport, AgentRequest

PACKAGE, VERSION = "@openai/codex", "0.169.0"
BIN_ENV = "ORCH_CODEX_BIN"
SANDBOX_MODES = ("read-only", "workspace-write", "danger-full-access")
ENV_NAMES = frozenset({"OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME"})
DEFAULT_BASE_URL = "https://api.openai.com/v1"
TOKEN_ENV = "ORCH_MODEL_TOKEN"  # what the proxied provider's `env_key` names: the run's token
# codex says this while it retries a request its provider failed
RECONNECTING = "reconnecting"


@dataclass(frozen=True)
class Provider:
    """A model provider speaking the OpenAI Responses API."""

    name: str
    base_url: str
    env_key: str = ""  # the variable holding its API key, passed to the agent
    # more keys of the provider's table: codex reads its retry settings only from there
    options: Mapping[str, int | str | bool] = field(default_factory=dict)


class CodexStream:
    def __init__(self) -> None:
        self.thread: str | None = None
        self.turns: list[Usage] = []
        self.failed = ""
        self.errors: list[str] = []
        self.completed = False
        self.tools: list[str] = []
        self.text = ""
        self.retry = False  # its latest event says it is retrying the provider

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        self.retry = kind == "error" and RECONNECTING in str(event.get("message", "")).lower()
        if kind == "thread.started":
            self.thread = str(event.get("thread_id") or "") or None
        elif kind == "turn.completed":
            self.turns.append(_usage(event.get("usage") or {}))
            self.completed = True
        elif kind == "turn.failed":
            self.failed = str((event.get("error") or {}).get("message", "")) or "turn failed"
        elif kind == "error":
            self.errors = [*self.errors[-4:], str(event.get("message", ""))]
        elif kind == "item.completed":
            self._item(event.get("item") or {})

    def _item(self, item: Mapping[str, Any]) -> None:
        kind = item.get("type")
        if kind == "command_execution":
            self.tools.append(f"shell {str(item.get('command', ''))[:120]}")
        elif kind == "file_change":
            paths = [str(c.get("path", "")) for c in item.get("changes") or ()]
            self.tools.append(f"patch {' '.join(paths)[:120]}")
        elif kind == "agent_message" and item.get("text"):
            self.text = str(item["text"])
        elif kind == "error" and item.get("message"):
            self.errors = [*self.errors[-4:], str(item["message"])]

    def usage(self) -> Usage:
        return sum(self.turns, Usage())

    def metered(self, pricing: Pricing) -> Metered:
        return estimate(self.usage(), pricing.of())

    def retrying(self) -> bool:
        return self.retry

    def trouble(self) -> Trouble | None:
        if not self.retry or not self.errors:
            return None
        return Trouble(FailureClass.PROVIDER, f"the provider failed: {self.errors[-1][:300]}")

    def report(self, exit_code: int | None) -> AgentReport:
        tools = tuple(self.tools)
        if self.failed:
            return AgentReport(
                False, f"turn failed: {self.failed}", session=self.thread, tools=tools
            )
        if self.completed and exit_code in (0, None):
            return AgentReport(True, self.text[:2000], session=self.thread, tools=tools)
        last = self.errors[-1] if self.errors else ""
        detail = f"exited {exit_code} without completing its turn" + (f": {last}" if last else "")
        return AgentReport(False, detail, session=self.thread, tools=tools)


def _usage(u: Mapping[str, Any]) -> Usage:
    return fresh_input(
        int(u.get("input_tokens") or 0),
        int(u.get("output_tokens") or 0),
        int(u.get("cached_input_tokens") or 0),
        int(u.get("cache_write_input_tokens") or 0),
    )


class CodexAgent:
    def __init__(
        self,
        name: str,
        *,
        command: str = "codex",
        model: str = "gpt-5-codex",
        sandbox: str = "workspace-write",
        provider: Provider | None = None,
        config: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        pass_env: Sequence[str] = (),
        prices: Prices | None = None,
        run_as: str | None = None,
        environ: Mapping[str, str] | None = None,
        launchers: Launchers | None = None,
        proxy: MeteringProxy | None = None,
    ) -> None:
        if sandbox not in SANDBOX_MODES:
            raise ConfigError(
                f"agent {name!r}: sandbox {sandbox!r} is not one of {', '.join(SANDBOX_MODES)}"
            )
        environ = os.environ if environ is None else environ
        self.launchers = launchers
        self.name = name
        self.binary = find_binary(command, BIN_ENV, environ)
        self.model = model
        self.sandbox = sandbox
        self.provider = provider
        self.config = tuple(config)
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.pricing = Pricing(prices, model)
        self.run_as = AgentUser.resolve(name, run_as) if run_as else None
        self.proxy = proxy
        names = set(ENV_NAMES) | set(pass_env)
        key_env = provider.env_key if provider is not None and provider.env_key else ""
        self.upstream: Upstream | None = None
        self.key_problem = ""
        if proxy is not None:
            # the key and the endpoint are orch's: the agent gets the proxy's and a token
            names -= {"OPENAI_API_KEY", "OPENAI_BASE_URL", key_env}
            self.upstream, self.key_problem = _upstream(name, provider, self.env, environ)
        elif key_env:
            names.add(key_env)
        self.env_names = frozenset(names)
        # codex reports tokens; its dollars are orch's estimate, where its model has a price
        self.meters = frozenset({"tokens", "usd"} if self.pricing else {"tokens"})

    def preflight(self) -> str | None:
        return missing_binary(self.binary, BIN_ENV, PACKAGE, VERSION) or self.key_problem or None

    def usage_from_log(self, log_path: Path) -> Metered:
        return replay(log_path, CodexStream(), self.pricing)

    def argv(self, request: AgentRequest, proxy_url: str = "") -> list[str]:
        argv = [
            self.binary,
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-C",
            str(request.workdir),
            "-m",
            self.model,
            "-s",
            self._sandbox(request),
        ]
        for override in self._overrides(proxy_url):
            argv += ["-c", override]
        return [*argv, *self.extra_args, "-"]

    def _sandbox(self, request: AgentRequest) -> str:
        """Codex's own sandbox (bubblewrap) cannot run inside orch's Landlock confinement, which
        forbids the mounts and user-namespace maps it makes; there orch's confinement is the
        sandbox, and `read-only` keeps the worktree out of its writable places."""
        if request.confine is not None and request.confine.landlock:
            return "danger-full-access"
        return self.sandbox

    def _confined(self, request: AgentRequest) -> AgentRequest:
        if self.sandbox != "read-only" or request.confine is None:
            return request
        writable = tuple(p for p in request.confine.write if p != request.workdir)
        return replace(request, confine=replace(request.confine, write=writable))

    def _overrides(self, proxy_url: str = "") -> list[str]:
        out = []
        p = self.provider
        if proxy_url:
            # the proxy stands in for the provider; its key variable holds the run's token
            p = Provider(
                p.name if p is not None else "orch",
                f"{proxy_url}/v1",
                TOKEN_ENV,
                p.options if p is not None else {},
            )
        if p is not None:
            table: dict[str, Any] = {
                "name": p.name,
                "base_url": p.base_url,
                "wire_api": "responses",
            }
            if p.env_key:
                table["env_key"] = p.env_key
            table.update(p.options)
            inline = ", ".join(f"{k}={json.dumps(v)}" for k, v in table.items())
            out.append(f"model_provider={json.dumps(p.name)}")
            out.append(f"model_providers.{p.name}={{{inline}}}")
        return [*out, *self.config]

    def start(self, request: AgentRequest) -> StreamingProcess:
        if self.key_problem:
            raise AgentError(self.key_problem)
        request = self._confined(request)
        env = {**request.env, **self.env}
        metering = None
        proxy_url = ""
        if self.proxy is not None and self.upstream is not None:
            meter = self.proxy.issue(
                self.upstream, request.budget, self.pricing, record_of(request.log_path)
            )
            metering = (self.proxy, meter)
            proxy_url = self.proxy.url
            hidden = {"OPENAI_API_KEY", "OPENAI_BASE_URL", self.upstream.key_env}
            env = {k: v for k, v in env.items() if k not in hidden}
            env[TOKEN_ENV] = meter.token
        argv = self.argv(request, proxy_url)
        prompt = request.prompt
        if request.instructions:
            prompt = f"{request.instructions}\n\n{prompt}"
        return launched(
            self.name,
            argv[0],
            metering,
            lambda: StreamingProcess(
                argv,
                request,
                env,
                CodexStream(),
                self.pricing,
                stdin_path=write_prompt(request, prompt),
                user=self.run_as,
                launchers=self.launchers,
                meter=metering,
            ),
        )


def _upstream(
    name: str, provider: Provider | None, env: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[Upstream | None, str]:
    """Where the proxy sends the agent's requests, with which key; or why it cannot."""
    if provider is not None and not provider.env_key:
        return Upstream("responses", provider.base_url, "", ""), ""  # it asks for no key
    if provider is not None:
        base, var = provider.base_url, provider.env_key
    else:
        base = env.get("OPENAI_BASE_URL") or environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        var = "OPENAI_API_KEY"
    key = (env.get(var) or environ.get(var) or "") if var else ""
    if key:
        return Upstream("responses", base, key, var), ""
    named = var or "the provider's `env_key`"
    return None, (
        f"agent {name!r} needs the provider's key: set {named} in orch's environment, or in the"
        " agent's `env` setting. orch keeps the key and gives the agent a token of its own for"
        " orch's metering proxy (or set `proxy: off` for the agent to reach its provider itself)"
    )
