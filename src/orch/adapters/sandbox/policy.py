"""Which confinement a run gets on this host: Landlock where the kernel has it, and a clear
refusal where it does not, unless the repository's settings say `sandbox: none`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orch.adapters.sandbox.launcher import landlock_abi
from orch.domain.errors import AgentError
from orch.ports import DEFAULT_OUTPUT_CAP, Confinement, RepoSettings

# the devices a command may open for writing; every other device is out of its reach
DEVICES = tuple(
    Path(p)
    for p in (
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/pts",
        "/dev/shm",
    )
)


class LandlockSandbox:
    """`protect` names what no run may read (orch's store, its settings file, its logs and the
    other tasks' homes); a run gets back read access to its own log directory and write access
    to its worktree and its home."""

    def __init__(
        self,
        protect: Sequence[Path],
        output_cap: int = DEFAULT_OUTPUT_CAP,
        abi: int | None = None,
    ) -> None:
        self.protect = tuple(p.resolve() for p in protect)
        self.output_cap = output_cap
        self.abi = landlock_abi() if abi is None else abi

    def describe(self) -> str:
        kill = "every descendant of a run dies with it (a subreaper launcher)"
        if self.abi < 1:
            return (
                f"Landlock unavailable (ABI 0): runs refuse to start unless sandbox: none; {kill}"
            )
        return f"Landlock ABI {self.abi}: runs write only in their worktree and home; {kill}"

    def confine(self, repo: RepoSettings, worktree: Path, home: Path, own: Path) -> Confinement:
        if repo.sandbox == "none":
            return Confinement(landlock=False, output_cap=self.output_cap)
        if self.abi < 1:
            raise AgentError(
                "refusing to run: Landlock is not available in this kernel, and repository"
                f" {repo.name} does not say `sandbox: none`"
            )
        return Confinement(
            landlock=True,
            write=(worktree, home),
            read=(own,),
            protect=self.protect,
            devices=DEVICES,
            output_cap=self.output_cap,
        )
