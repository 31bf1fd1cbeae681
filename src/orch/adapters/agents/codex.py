"""The Codex agent: `codex exec --json` (../shared/specs/INTEGRATIONS.md §8).

Codex prints thread, turn and item events. `turn.completed` carries the turn's usage and ends a
successful run; `turn.failed` is a failure. Codex reports tokens and no cost, so its dollars are
the configured prices' estimate. Its provider is a custom one with the Responses wire API,
configured by `-c` overrides so nothing depends on a config file in the agent's home. Its stdin is
the prompt and then end-of-file: `codex exec` would otherwise wait for more input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orch.adapters.agents.streaming import (
    StreamingProcess,
    find_binary,
    missing_binary,
    not_startable,
    replay,
    write_prompt,
)
from orch.adapters.agents.users import AgentUser
from orch.adapters.process import Launchers
from orch.domain.errors import ConfigError
from orch.domain.ledger import Prices, Usage
from orch.ports import AgentReport, AgentRequest

PACKAGE, VERSION = "@openai/codex", "0.169.0"
BIN_ENV = "ORCH_CODEX_BIN"
SANDBOX_MODES = ("read-only", "workspace-write", "danger-full-access")
ENV_NAMES = frozenset({"OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME"})


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

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
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
    # Responses counts cached input inside input_tokens; the ledger keeps fresh input apart
    cached = int(u.get("cached_input_tokens") or 0)
    written = int(u.get("cache_write_input_tokens") or 0)
    return Usage(
        max(int(u.get("input_tokens") or 0) - cached - written, 0),
        int(u.get("output_tokens") or 0),
        cached,
        written,
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
        self.prices = prices or Prices()
        self.run_as = AgentUser.resolve(name, run_as) if run_as else None
        names = set(ENV_NAMES) | set(pass_env)
        if provider is not None and provider.env_key:
            names.add(provider.env_key)
        self.env_names = frozenset(names)
        # codex reports tokens; its dollars are the configured prices' estimate
        self.meters = frozenset({"tokens", "usd"} if self.prices else {"tokens"})

    def preflight(self) -> str | None:
        return missing_binary(self.binary, BIN_ENV, PACKAGE, VERSION)

    def usage_from_log(self, log_path: Path) -> Usage:
        return replay(log_path, CodexStream(), self.prices)

    def argv(self, request: AgentRequest) -> list[str]:
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
        for override in self._overrides():
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

    def _overrides(self) -> list[str]:
        out = []
        if self.provider is not None:
            p = self.provider
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
        request = self._confined(request)
        argv = self.argv(request)
        env = {**request.env, **self.env}
        prompt = request.prompt
        if request.instructions:
            prompt = f"{request.instructions}\n\n{prompt}"
        try:
            return StreamingProcess(
                argv,
                request,
                env,
                CodexStream(),
                self.prices,
                stdin_path=write_prompt(request, prompt),
                user=self.run_as,
                launchers=self.launchers,
            )
        except OSError as exc:
            raise not_startable(self.name, argv[0], exc) from exc
