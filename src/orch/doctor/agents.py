"""Each configured agent: its CLI is found and runs, and what it needs to reach its model is
there. Nothing here sends a request to a model: a check costs nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from orch.adapters.agents import claude_code, codex
from orch.adapters.agents.claude_code import ClaudeCodeAgent
from orch.adapters.agents.codex import CodexAgent
from orch.adapters.agents.command import CommandAgent
from orch.bootstrap import build_agents
from orch.config import (
    AgentSettings,
    ClaudeCodeAgentSettings,
    CodexAgentSettings,
    ScriptedAgentSettings,
    Settings,
)
from orch.doctor.report import Check, fail, ok, run, warn
from orch.domain.agent_env import child_env
from orch.domain.errors import OrchError
from orch.ports import Agent

VERSION_TIMEOUT_S = 15.0


def build_one(settings: Settings, name: str, environ: Mapping[str, str]) -> Agent:
    """The agent as orch would build it, alone, so one bad agent does not hide the others."""
    alone = settings.model_copy(update={"agents": {name: settings.agents[name]}})
    return build_agents(alone, environ)[name]


def check_agent(
    settings: Settings, name: str, environ: Mapping[str, str], timeout_s: float = VERSION_TIMEOUT_S
) -> tuple[Check, Agent | None]:
    """The check, and the agent when it could be built (a pipeline's budgets are checked
    against it)."""
    what = f"agent {name}"
    cfg = settings.agents[name]
    try:
        agent = build_one(settings, name, environ)
    except OrchError as exc:
        return fail(what, str(exc)), None
    return _check(what, cfg, agent, environ, timeout_s), agent


def _check(
    what: str,
    cfg: AgentSettings,
    agent: Agent,
    environ: Mapping[str, str],
    timeout_s: float,
) -> Check:
    if isinstance(cfg, ClaudeCodeAgentSettings) and isinstance(agent, ClaudeCodeAgent):
        # the environment a run of the agent gets, never the whole of orch's
        env = child_env(environ, {**claude_code.QUIET, **cfg.env}, agent.env_names)
        key = _claude_key(cfg, environ)
        check = _cli(what, "claude_code", agent.binary, claude_code.BIN_ENV, key, env, timeout_s)
        # Claude Code names each request's model; an alias is one of the table's
        priced = cfg.model in CLAUDE_ALIASES or bool(agent.pricing)
        return _priced(check, priced, cfg.model)
    if isinstance(cfg, CodexAgentSettings) and isinstance(agent, CodexAgent):
        env = child_env(environ, cfg.env, agent.env_names)
        key = _codex_key(cfg, environ)
        check = _cli(what, "codex", agent.binary, codex.BIN_ENV, key, env, timeout_s)
        return _priced(check, bool(agent.pricing), cfg.model)
    if isinstance(agent, CommandAgent):
        return _command(what, agent.argv[0], environ)
    playbook = cfg.playbook if isinstance(cfg, ScriptedAgentSettings) else None
    if playbook is not None and not playbook.is_file():
        return fail(what, f"scripted: playbook {playbook} is not a readable file")
    problem = agent.preflight()
    return fail(what, f"{cfg.kind}: {problem}") if problem else ok(what, f"{cfg.kind} (built in)")


# the model aliases Claude Code resolves to a model of the price table before it asks
CLAUDE_ALIASES = frozenset({"sonnet", "opus", "haiku", "default", "opusplan", "best"})


def _priced(check: Check, priced: bool, model: str) -> Check:
    """A working agent whose model has no price is a warning: its runs' dollars are not
    counted, so a dollar budget cannot hold it."""
    if check.level != "ok" or priced:
        return check
    return warn(
        check.check,
        f"{check.detail}; model {model} has no price in orch's table: its dollars are not"
        " counted (give the agent `prices`)",
    )


def _command(what: str, program: str, environ: Mapping[str, str]) -> Check:
    if os.sep in program and not os.path.isabs(program):
        return warn(what, f"command: {program} is looked for in the task's worktree, at run time")
    found = shutil.which(program, path=environ.get("PATH", os.defpath))
    if found is None:
        return fail(what, f"command: {program} is not on PATH or not executable")
    return ok(what, f"command: {found}")


def _cli(
    what: str,
    kind: str,
    binary: str,
    bin_env: str,
    credentials: tuple[bool, str],
    env: Mapping[str, str],
    timeout_s: float,
) -> Check:
    found = shutil.which(binary, path=env.get("PATH", os.defpath))
    if found is None:
        return fail(what, f"{kind}: {binary} not found on PATH (install it, or set {bin_env})")
    try:
        ran = run([found, "--version"], env=env, timeout_s=timeout_s)
    except OSError as exc:
        return fail(what, f"{kind}: {found} cannot be run: {exc.strerror or exc}")
    if ran.code != 0:
        return fail(what, f"{kind}: `{found} --version` failed: {ran.last_error()}")
    version = (ran.out.strip().splitlines() or ["(no version printed)"])[0]
    has_key, about = credentials
    if not has_key:
        return fail(what, f"{kind}: {found} ({version}), but {about}")
    return ok(what, f"{kind}: {found} ({version}); {about}")


def _given(name: str, cfg_env: Mapping[str, str], environ: Mapping[str, str]) -> bool:
    return bool(cfg_env.get(name) or environ.get(name))


def _claude_key(cfg: ClaudeCodeAgentSettings, environ: Mapping[str, str]) -> tuple[bool, str]:
    """Each run gets a home of its own, so a login in the operator's ~/.claude is not seen:
    the key comes from the environment, or a config directory is named. Behind the metering
    proxy only a key will do: orch holds it and the agent gets a token."""
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        if _given(var, cfg.env, environ):
            held = ", held by orch's metering proxy" if cfg.proxy else ""
            return True, f"credentials in {var}{held}"
    if cfg.proxy:
        return False, (
            "no key for orch's metering proxy: set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN (in"
            " orch's environment or the agent's env); orch keeps it and gives each run a token"
            " (or set `proxy: off` for the agent to use a login of its own)"
        )
    if _given("CLAUDE_CONFIG_DIR", cfg.env, environ):
        return True, "credentials: the login in CLAUDE_CONFIG_DIR"
    return False, (
        "no credentials: set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN (in orch's environment"
        " or the agent's env), or CLAUDE_CONFIG_DIR to a logged-in config directory"
    )


def _codex_key(cfg: CodexAgentSettings, environ: Mapping[str, str]) -> tuple[bool, str]:
    p = cfg.provider
    if p is not None:
        if not p.env_key:
            return True, f"provider {p.name} at {p.base_url} takes no key"
        if _given(p.env_key, cfg.env, environ):
            return True, f"provider {p.name}: key in {p.env_key}"
        return False, (
            f"provider {p.name} reads its key from {p.env_key}, which is not set (in orch's"
            " environment or the agent's env)"
        )
    if _given("OPENAI_API_KEY", cfg.env, environ):
        held = ", held by orch's metering proxy" if cfg.proxy else ""
        return True, f"credentials in OPENAI_API_KEY{held}"
    if cfg.proxy:
        return False, (
            "no key for orch's metering proxy: set OPENAI_API_KEY (in orch's environment or the"
            " agent's env); orch keeps it and gives each run a token (or set `proxy: off` for"
            " the agent to use a login of its own)"
        )
    if _given("CODEX_HOME", cfg.env, environ):
        return True, "credentials: the login in CODEX_HOME"
    return False, (
        "no credentials: set OPENAI_API_KEY (in orch's environment or the agent's env), or"
        " CODEX_HOME to a logged-in codex home"
    )
