"""The world the model tests drive: a rig on a simulated clock, with an agent the test steers,
deploys that leave a log, and a process table in which the test says who has died.

Everything a check needs to see that the store does not record itself (which agent processes
are alive, which deploys actually ran, when the sweeper last ran) is kept here.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from orch.domain import pipeline as pl
from orch.ports import AgentRequest, DeployTarget, RepoSettings, Store
from orch.testing import InstantAgent, MemoryProcessTable, Rig, SimClock, memory_store, rig

REPO = "app"


class Outcome(StrEnum):
    SUCCEED = "succeed"  # exits 0, having written what the stage's gates expect
    FAIL = "fail"  # exits 1
    HANG = "hang"  # never exits: the stall timeout, a STOP or a lost lease ends it


class AgentProcessView(Protocol):
    """What the checks read of an agent process (orch.testing's in-process processes)."""

    code: int | None
    killed: bool


@dataclass
class StartedAgent:
    task_key: str
    stage: str
    process: AgentProcessView

    @property
    def alive(self) -> bool:
        """Still running: it neither exited nor was killed."""
        return self.process.code is None and not self.process.killed


class SteeredAgent(InstantAgent):
    """An InstantAgent whose outcome the test sets before each job, and which remembers every
    process it started. `on_start` runs inside the job, as the agent starts (a STOP pressed
    while the agent works)."""

    def __init__(self) -> None:
        super().__init__("default", self._outcome)
        self.mode = Outcome.SUCCEED
        self.on_start: Callable[[AgentRequest], Outcome | None] | None = None
        self.processes: list[StartedAgent] = []

    def _outcome(self, request: AgentRequest) -> int | None:
        mode = self.mode
        if self.on_start is not None:
            mode = self.on_start(request) or mode
        return {Outcome.SUCCEED: 0, Outcome.FAIL: 1, Outcome.HANG: None}[mode]

    def start(self, request: AgentRequest) -> Any:
        proc = super().start(request)
        self.processes.append(StartedAgent(request.task_key, request.stage.value, proc))
        return proc

    def starts(self, task_key: str) -> int:
        return sum(1 for p in self.processes if p.task_key == task_key)


class DeployLog:
    """Deploy targets whose command appends "<target> <release>" to a file, and whose check
    answers from that file: the authoritative record of which deploys ran, as `forge.merges` is
    for merges. The check exits 0 (deployed) or 1 (not deployed), so an unknown deploy is always
    resolved."""

    def __init__(self, path: Path, repo: str) -> None:
        self.path = path
        self.repo = repo
        path.touch()

    def targets(self) -> dict[str, DeployTarget]:
        log = shlex.quote(str(self.path))
        line = '"$ORCH_DEPLOY_TARGET $ORCH_RELEASE"'
        return {
            target: DeployTarget(f"echo {line} >> {log}", check=f"grep -qxF {line} {log}")
            for target in ("staging", "production")
        }

    def entries(self) -> list[tuple[str, str]]:
        """(target, release) for every deploy that ran, in order."""
        out: list[tuple[str, str]] = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            target, _, release = line.partition(" ")
            out.append((target, release))
        return out


def model_pipeline(stall_s: float | None = 0.02) -> pl.Pipeline:
    """The default pipeline, with a short stall timeout so a hanging agent is ended at once
    (its stages, edges and checkpoints are the default's)."""
    base = pl.default_pipeline()
    return replace(
        base,
        stages=tuple(replace(s, stall_s=stall_s) if s.agent else s for s in base.stages),
    )


@dataclass
class World:
    """A rig and what the checks observe beside the store."""

    rig: Rig
    clock: SimClock
    agent: SteeredAgent
    deploys: DeployLog
    processes: MemoryProcessTable
    tmp: Path
    swept_at: float | None = None  # sim time of the last sweep that completed
    closed: bool = field(default=False, repr=False)

    @property
    def ttl(self) -> float:
        return self.rig.dispatcher.settings.lease_ttl_s

    def now(self) -> float:
        return self.clock()

    def sweep(self, *, recover: bool = True) -> None:
        """The sweeper runs (startup recovery is the same function, plus voiding the leases of
        incarnations known dead)."""
        if recover:
            self.rig.dispatcher.recover()
        else:
            self.rig.dispatcher.sweep()
        self.swept_at = self.clock()

    def drain(self, limit: int = 500) -> int:
        """Recover, then run jobs until none is runnable now: `run_until_idle`, with the time of
        its sweep recorded. Fails if it never becomes idle (a livelock)."""
        self.sweep()
        ran = 0
        while self.rig.dispatcher.run_once():
            ran += 1
            assert ran < limit, f"still running jobs after {limit}: a livelock"
        return ran

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.rig.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def build_world(
    *,
    max_active: int = 1,
    pipeline: pl.Pipeline | None = None,
    max_attempts: int = 3,
    store: Callable[[SimClock], Store] = memory_store,
) -> World:
    """A world on the memory store, or on the one `store` makes with the world's clock."""
    tmp = Path(tempfile.mkdtemp(prefix="orch-model-"))
    clock = SimClock()
    agent = SteeredAgent()
    deploys = DeployLog(tmp / "deploys.log", REPO)
    processes = MemoryProcessTable()
    repo = RepoSettings(
        name=REPO, test_command="true", max_active=max_active, deploy=deploys.targets()
    )
    r = rig(
        {"default": agent},
        pipeline=pipeline or model_pipeline(),
        repo=repo,
        max_attempts=max_attempts,
        kill_grace_s=0.0,
        clock=clock,
        processes=processes,
        store=store(clock),
    )
    return World(r, clock, agent, deploys, processes, tmp)


def snapshot(store: Store) -> list[Any]:
    """Every record of every task: equal before and after a write means it changed nothing."""
    return [
        (
            task,
            store.jobs(task.id),
            store.transitions(task.id),
            store.effects(task.id),
            store.events(task.id),
            store.runs(task.id),
            store.gate_records(task.id),
        )
        for task in store.list_tasks(limit=1_000_000)
    ]
