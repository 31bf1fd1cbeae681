"""The command agent: any command line, run in the task's worktree in its own process group.

The rendered prompt is in the file named by ORCH_PROMPT_FILE and, up to 100 kB, in ORCH_PROMPT;
the ticket, stage and attempt are in ORCH_TICKET, ORCH_STAGE and ORCH_ATTEMPT, the role's
standing instructions in ORCH_INSTRUCTIONS. `{prompt_file}` and `{workdir}` in the argv are
replaced too.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from orch.adapters.agents.users import AgentUser
from orch.adapters.process import Launchers, ProcessGroup
from orch.domain.errors import AgentError
from orch.ports import AgentRequest

# a variable larger than 128 KiB cannot be passed to a program at all (E2BIG); a longer prompt
# is only in the file
PROMPT_ENV_BYTES = 100_000


class CommandAgent:
    def __init__(
        self,
        name: str,
        argv: Sequence[str] | str,
        env: Mapping[str, str] | None = None,
        pass_env: Sequence[str] = (),
        run_as: str | None = None,
        launchers: Launchers | None = None,
    ) -> None:
        self.name = name
        self.launchers = launchers
        self.run_as = AgentUser.resolve(name, run_as) if run_as else None
        self.env_names = frozenset(pass_env)
        self.meters: frozenset[str] = frozenset()  # a plain command reports no usage
        self.argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
        if not self.argv:
            raise AgentError(f"agent {name!r} has an empty command")
        self.env = dict(env or {})

    def usage_from_log(self, log_path: Path) -> None:
        return None  # a plain command reports no usage

    def preflight(self) -> str | None:
        if shutil.which(self.argv[0]) is None:
            return f"{self.argv[0]} is not on PATH or not executable"
        return None

    def start(self, request: AgentRequest) -> ProcessGroup:
        values = {
            "{prompt_file}": request.env.get("ORCH_PROMPT_FILE", ""),
            "{workdir}": str(request.workdir),
        }
        argv = [_fill(a, values) for a in self.argv]
        env = {**request.env, "ORCH_INSTRUCTIONS": request.instructions, **self.env}
        program = argv[0] if os.sep not in argv[0] else str(request.workdir / argv[0])
        if shutil.which(program, path=env.get("PATH")) is None:
            raise AgentError(f"agent {self.name!r} could not start {argv[0]}: not found")
        if len(request.prompt.encode()) <= PROMPT_ENV_BYTES:
            env["ORCH_PROMPT"] = request.prompt
        if self.run_as is not None:
            self.run_as.grant(request.workdir)
            env.update(self.run_as.env(request.env.get("HOME")))
        try:
            return ProcessGroup(
                argv,
                cwd=request.workdir,
                env=env,
                log_path=request.log_path,
                user=(self.run_as.uid, self.run_as.gid) if self.run_as else None,
                confine=request.confine,
                launchers=self.launchers,
            )
        except OSError as exc:
            raise AgentError(
                f"agent {self.name!r} could not start {argv[0]}: {exc.strerror or exc}"
            ) from exc


def _fill(arg: str, values: Mapping[str, str]) -> str:
    for k, v in values.items():
        arg = arg.replace(k, v)
    return arg
