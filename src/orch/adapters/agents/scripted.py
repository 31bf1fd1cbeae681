"""The scripted agent: deterministic and offline. A real child process (so it can be killed,
hang or crash like any agent) that writes what each role is expected to produce.

A playbook (JSON) may say, per stage, which files to write and how to behave:
{"stages": {"development": {"files": {"src/x.py": "..."}, "mode": "ok" | "fail" | "hang" |
"crash" | "stubborn" (hangs and ignores SIGTERM), "fail_attempts": 0}}}. Stages it does not
name get the built-in defaults.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orch.adapters.process import Launchers, ProcessGroup
from orch.ports import AgentRequest

MAIN = Path(__file__).with_name("scripted_main.py")


class ScriptedAgent:
    def __init__(
        self,
        name: str = "scripted",
        playbook: Mapping[str, Any] | Path | None = None,
        python: str = sys.executable,
        launchers: Launchers | None = None,
    ) -> None:
        self.name = name
        self.launchers = launchers
        self.env_names: frozenset[str] = frozenset()
        self.run_as = None
        self.meters: frozenset[str] = frozenset()
        self.python = python
        self.playbook_path: Path | None = None
        self._inline = playbook if isinstance(playbook, Mapping) else None
        if isinstance(playbook, Path):
            self.playbook_path = playbook

    def usage_from_log(self, log_path: Path) -> None:
        return None  # it spends nothing

    def preflight(self) -> str | None:
        return None if os.access(self.python, os.X_OK) else f"{self.python} cannot be run"

    def start(self, request: AgentRequest) -> ProcessGroup:
        env = dict(request.env)
        if self._inline is not None:
            path = request.log_path.with_suffix(".playbook.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self._inline), encoding="utf-8")
            env["ORCH_SCRIPTED_PLAYBOOK"] = str(path)
        elif self.playbook_path is not None:
            env["ORCH_SCRIPTED_PLAYBOOK"] = str(self.playbook_path)
        return ProcessGroup(
            [self.python, "-I", "-S", str(MAIN)],
            cwd=request.workdir,
            env=env,
            log_path=request.log_path,
            confine=request.confine,
            launchers=self.launchers,
        )
