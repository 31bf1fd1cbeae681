"""What every step of a job needs: the engine's tools, the job in hand, and what a step decides.

A job's steps (reading the inbox, running a stage, an agent, the gates, a merge, a deploy, a
STOP) each return an `Outcome`; the job writes it, once, at its one error boundary
(orch.services.job).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch import crashpoints
from orch.domain.agent_env import child_env
from orch.domain.errors import OrchError
from orch.domain.ledger import Budget, Usage
from orch.domain.machine import TaskChange
from orch.domain.model import Claim, Task
from orch.domain.periods import Period
from orch.domain.pipeline import Decision, Pipeline, StageSpec
from orch.ports import (
    Agent,
    CommandRunner,
    Confinement,
    Forge,
    Notifier,
    Repos,
    RunAs,
    Sandbox,
    Store,
)
from orch.services.breaker import Breakers
from orch.services.in_flight import InFlight
from orch.services.lease import Heartbeats, Held, Lease


@dataclass(frozen=True)
class EngineSettings:
    logs_dir: Path
    homes_dir: Path  # each task's agents get a home of their own under it
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 10.0
    kill_grace_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    agent_env_allow: tuple[str, ...] = ()
    breaker_threshold: int = 5  # provider failures in a row that open an agent's circuit
    breaker_cooldown_s: float = 30.0
    # what all agent runs together may spend per period (orch.domain.periods)
    budgets: Mapping[Period, Budget] = field(default_factory=dict)


@dataclass
class Tools:
    """The engine's dependencies, shared by its parts."""

    store: Store
    forge: Forge
    agents: Mapping[str, Agent]
    repos: Repos
    runner: CommandRunner
    notifier: Notifier
    sandbox: Sandbox
    settings: EngineSettings
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    rng: random.Random = field(default_factory=random.Random)
    breakers: Breakers = field(default_factory=Breakers)
    # set when the process shuts down: jobs in flight kill their children and let go
    shutdown: threading.Event = field(default_factory=threading.Event)
    held: Held = field(default_factory=Held)  # the leases this process's jobs hold
    heartbeats: Heartbeats = field(default_factory=Heartbeats)  # and what renews them
    # writes news back to the tracker a task came from (orch.services.reporting), if any
    reporter: Notifier | None = None
    # the agent runs this process's jobs supervise, by task id: what shows one in provider
    # retries, and what runs in flight have spent
    running: dict[int, InFlight] = field(default_factory=dict)

    def live_spending(self, but: InFlight | None = None) -> list[tuple[str, float, Usage]]:
        """What the agent runs in flight here (all, `but` one) have spent that the store does
        not hold yet (each notes its spending there as it goes): their repositories, when they
        started, and that."""
        flights = [f for f in list(self.running.values()) if f is not but]
        return [(f.repo, f.started_at, f.unnoted()) for f in flights]

    def backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0

    def child_env(
        self,
        task: Task,
        claim: Claim,
        extra: Mapping[str, str] | None = None,
        allow: frozenset[str] = frozenset(),
    ) -> dict[str, str]:
        base = {
            "ORCH_TICKET": task.key,
            "ORCH_TICKET_TITLE": task.title,
            "ORCH_STAGE": task.stage.value,
            "ORCH_ATTEMPT": str(claim.attempt),
            "ORCH_BRANCH": task.branch,
            # names the orch process that owns this child, so a later one can find it orphaned
            "ORCH_INCARNATION": claim.owner,
        }
        base.update(extra or {})
        return child_env(self.environ, base, allow | frozenset(self.settings.agent_env_allow))

    def log_dir(self, task: Task) -> Path:
        return self.settings.logs_dir / f"{task.key}-{task.id}"

    def log_path(self, task: Task, name: str) -> Path:
        return self.log_dir(task) / name

    def home(self, task: Task) -> Path:
        """The task's own home directory, kept across its runs (an agent's sessions live there,
        for a retry to resume)."""
        home = self.settings.homes_dir / f"{task.key}-{task.id}"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return home

    def home_env(self, task: Task) -> dict[str, str]:
        """HOME and TMPDIR of what runs the agents' work (not of deploys, which keep orch's)."""
        home = self.home(task)
        return {"HOME": str(home), "TMPDIR": str(home / "tmp")}

    def remove_worktree(self, task: Task) -> None:
        self.forge.remove_worktree(task.repo, task.branch)
        crashpoints.hit("worktree.removed")

    def agent_for(self, task: Task, spec: StageSpec) -> Agent | None:
        if spec.agent is None:
            return None
        agent = self.agents.get(spec.agent)
        if agent is None:
            raise OrchError(
                f"stage {task.stage} names agent {spec.agent!r}, which is not configured"
            )
        return agent

    def code_user(self, pipeline: Pipeline, agent: Agent | None) -> RunAs | None:
        """Whom the stage's agent and gates run as. A stage without an agent (the merge's test
        of its candidate, say) still runs the agents' code: as the user the pipeline's agents
        run as, never as orch itself when there is one."""
        if agent is not None:
            return agent.run_as
        for s in pipeline.stages:
            other = self.agents.get(s.agent) if s.agent else None
            if other is not None and other.run_as is not None:
                return other.run_as
        return None


@dataclass(frozen=True)
class Work:
    """One claimed job: the task as it was claimed, its pipeline, the claim and its lease, and
    who acts for it."""

    task: Task
    pipeline: Pipeline
    claim: Claim
    lease: Lease
    actor: str

    @property
    def spec(self) -> StageSpec:
        return self.pipeline.spec(self.task.stage)


@dataclass(frozen=True)
class Where:
    """Where a stage's gates run: its worktree and prompt context, as whom, how confined."""

    worktree: Path
    ctx: dict[str, Any]
    run_as: RunAs | None
    confine: Confinement


@dataclass(frozen=True)
class Outcome:
    """What a step decided: a decision to write (by `actor`, answering the inbox events
    `read`), or a change written as it is."""

    decision: Decision | None = None
    change: TaskChange | None = None
    actor: str | None = None
    read: tuple[int, ...] = ()


def decided(decision: Decision, actor: str | None = None, read: tuple[int, ...] = ()) -> Outcome:
    return Outcome(decision=decision, actor=actor, read=read)
