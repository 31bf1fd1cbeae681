"""`orch demo --agent claude|codex`: the demo pipeline driven by the real CLI, against the built-in
scripted model server, offline and free.

The server plays, per stage, the tool calls a model would make for the demo ticket: write the
spec, write the ADR, write the code and its tests and run them through the shell tool, review,
test and report. The real agent carries them out in the task's worktree, so what orch checks is
what the real CLI wrote. Each turn reports a plausible usage, so the ledger shows tokens and cost
per stage as it would with a real model.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.adapters.agents import claude_code, codex
from orch.adapters.agents.streaming import find_binary, missing_binary
from orch.demo import sample
from orch.domain.errors import OrchError
from orch.modelserver import ModelServer, Say, Script, Shell, Turn, Usage, Write

AGENTS = ("scripted", "claude", "codex")

# the model each CLI is told to use: names the CLIs know, so Claude Code prices the usage itself
# and codex offers its apply_patch tool
CLAUDE_MODEL = "claude-sonnet-4-5"
CODEX_MODEL = "gpt-5.5"
# what the demo charges for codex, which reports tokens only: example prices, USD per million
CODEX_PRICES = {"input": 1.25, "output": 10.0, "cache_read": 0.125}
API_KEY_ENV = "SCRIPTED_MODEL_KEY"


def _usage(n: int) -> Usage:
    """A turn's usage: the context grows with each turn, most of it read from the cache."""
    return Usage(
        input_tokens=900 + 150 * n,
        output_tokens=240 + 60 * n,
        cache_read_input_tokens=2400 * n,
        cache_creation_input_tokens=800 if n == 0 else 150,
    )


def scripts(key: str, hang_in: str | None = None) -> list[Script]:
    work = f"docs/work-items/{key}"
    tests = sample.test_command()
    stages: dict[str, list[tuple[Any, ...]]] = {
        "analysis": [
            (Shell("ls -R sample tests"),),
            (Write(f"{work}/spec.md", sample.SPEC.format(key=key)),),
        ],
        "architecture": [(Write(f"{work}/adr.md", sample.ADR.format(key=key)),)],
        "development": [
            (
                Write("sample/slug.py", sample.SLUGIFY),
                Write("tests/test_slug.py", sample.SLUGIFY_TEST),
            ),
            (Shell(tests),),
            (Write(f"{work}/changes.md", sample.CHANGES.format(key=key)),),
        ],
        "review": [
            (Shell("git log --oneline -5 && git diff --stat HEAD~1"),),
            (Write(f"{work}/review.md", sample.REVIEW.format(key=key)),),
        ],
        "testing": [
            (Shell(tests),),
            (Write(f"{work}/test-report.md", sample.TEST_REPORT.format(key=key)),),
        ],
    }
    if hang_in is not None:
        stages[hang_in] = [(Shell("sleep 3600"),)]
    return [
        Script(
            f"Stage: {stage}",
            (
                *(Turn(actions, _usage(n)) for n, actions in enumerate(turns)),
                Turn((Say(f"{stage} done for {key}."),), _usage(len(turns))),
            ),
        )
        for stage, turns in stages.items()
    ]


@dataclass
class RealAgent:
    """The real CLI the demo drives, and the model server it talks to."""

    name: str
    binary: str
    server: ModelServer
    home: Path

    def settings(self) -> dict[str, Any]:
        """The `agents` entry of the demo's settings."""
        if self.name == "claude":
            return {
                "kind": "claude_code",
                "command": self.binary,
                "model": CLAUDE_MODEL,
                "env": {**self.server.claude_env(), "CLAUDE_CONFIG_DIR": str(self.home)},
            }
        return {
            "kind": "codex",
            "command": self.binary,
            "model": CODEX_MODEL,
            "sandbox": "workspace-write",
            "provider": {
                "name": "orch-demo",
                "base_url": f"{self.server.url}/v1",
                "env_key": API_KEY_ENV,
                "options": {
                    "request_max_retries": 0,
                    "stream_max_retries": 0,
                    "stream_idle_timeout_ms": 60000,
                },
            },
            "env": {API_KEY_ENV: "scripted", "CODEX_HOME": str(self.home)},
            "prices": CODEX_PRICES,
        }

    def play(self, key: str, hang_in: str | None = None) -> None:
        """Load the scripts for the demo ticket, once it is filed and its key known; with
        `hang_in`, that stage's agent runs a command that never ends (for a STOP to end it)."""
        self.server.set_scripts(scripts(key, hang_in))

    def close(self) -> None:
        self.server.stop()


def find(name: str, environ: Mapping[str, str]) -> str:
    """The CLI's path, or an OrchError with a one-line hint saying how to install it."""
    module = claude_code if name == "claude" else codex
    binary = find_binary(name, module.BIN_ENV, environ)
    hint = missing_binary(binary, module.BIN_ENV, module.PACKAGE, module.VERSION)
    if hint is not None:
        raise OrchError(hint)
    return shutil.which(binary) or binary


def start(name: str, root: Path, environ: Mapping[str, str]) -> RealAgent:
    """Find the CLI and start the model server it will talk to (with no scripts yet)."""
    binary = find(name, environ)
    home = root / f".{name}-home"
    home.mkdir(parents=True, exist_ok=True)
    return RealAgent(name, binary, ModelServer().start(), home)


def check_name(name: str) -> None:
    if name not in AGENTS:
        raise OrchError(f"unknown agent {name!r} (choose from {', '.join(AGENTS)})")
