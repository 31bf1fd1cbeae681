"""The engine: what a worker does with a claimed job, built from parts with one responsibility
each (orch.services.job, inbox, stage, agent_run, gates, merge, deploy, outbox, stop)."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Mapping

from orch.domain.model import Claim
from orch.domain.news import News, NewsKind
from orch.domain.states import EffectState
from orch.ports import Agent, CommandRunner, Forge, Notifier, Repos, Sandbox, Store
from orch.services.agent_run import AgentRunner
from orch.services.breaker import Breakers
from orch.services.deploy import Deployer
from orch.services.gates import Gates
from orch.services.in_flight import retrying
from orch.services.inbox import Inbox
from orch.services.job import Jobs
from orch.services.merge import Merger
from orch.services.outbox import Outbox
from orch.services.stage import FORGE, StageRunner
from orch.services.stop import Stopper
from orch.services.work import EngineSettings, Tools

__all__ = ["Engine", "EngineSettings"]

log = logging.getLogger("orch.engine")


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        forge: Forge,
        agents: Mapping[str, Agent],
        repos: Repos,
        runner: CommandRunner,
        notifier: Notifier,
        sandbox: Sandbox,
        settings: EngineSettings,
        environ: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        breakers: Breakers | None = None,
        reporter: Notifier | None = None,
    ) -> None:
        self.tools = Tools(
            store=store,
            forge=forge,
            agents=agents,
            repos=repos,
            runner=runner,
            notifier=notifier,
            sandbox=sandbox,
            settings=settings,
            environ=dict(os.environ if environ is None else environ),
            rng=rng or random.Random(),
            breakers=breakers
            or Breakers(
                settings.breaker_threshold,
                settings.breaker_cooldown_s,
                shared=store,
                circuits=(FORGE, *(agent.name for agent in agents.values())),
            ),
            reporter=reporter,
        )
        if self.tools.breakers.on_open is None:
            self.tools.breakers.on_open = self._circuit_opened
        outbox = Outbox(self.tools)
        gates = Gates(self.tools)
        self.runs = AgentRunner(self.tools)
        deployer = Deployer(self.tools, outbox)
        stages = StageRunner(
            self.tools, outbox, self.runs, gates, Merger(self.tools, outbox, gates), deployer
        )
        self.jobs = Jobs(
            self.tools,
            outbox,
            Inbox(self.tools, outbox),
            stages,
            Stopper(self.tools, outbox, deployer),
        )

    @property
    def store(self) -> Store:
        return self.tools.store

    @property
    def settings(self) -> EngineSettings:
        return self.tools.settings

    @property
    def sandbox(self) -> Sandbox:
        return self.tools.sandbox

    @property
    def breakers(self) -> Breakers:
        return self.tools.breakers

    def provider_retries(self, task_id: int) -> str | None:
        """What a task's agent running here is retrying ("" for nothing); None if it does not
        run here."""
        running = self.tools.running.get(task_id)
        return retrying(running.proc) if running is not None else None

    @property
    def shutdown(self) -> threading.Event:
        """Set when the process shuts down: jobs in flight kill their children and let go."""
        return self.tools.shutdown

    def stop_asked(self, task_id: int) -> None:
        """A STOP was recorded in this process: the job running the task, if one here is,
        applies it now rather than at its next renewal."""
        self.tools.held.stop_asked(task_id)

    def stops_heard(self) -> int:
        """Tell the jobs running here whose tasks have a STOP asked for (by any process): one
        read, made when the store changed, instead of a poll per job. How many were told."""
        held = self.tools.held.task_ids()
        if not held:
            return 0
        asked = self.store.cancels_asked(held)
        for task_id in asked:
            self.tools.held.stop_asked(task_id)
        return len(asked)

    def run_job(self, claim: Claim, owner: str) -> None:
        self.jobs.run(claim, owner)

    def account_dead_runs(self, is_dead: Callable[[str], bool]) -> int:
        return self.runs.account_dead_runs(is_dead)

    def _circuit_opened(self, agent: str, reason: str, cooldown_s: float) -> None:
        text = f"the circuit of {agent} opened for {cooldown_s:g}s: {reason}"
        key = f"circuit:{agent}:{int(self.store.now())}"
        self.tools.notifier.notify(key, text, News(NewsKind.CIRCUIT, text, reason=reason))

    def settle_merges(self) -> int:
        """Ask the forge about each merge left unresolved by a task no job runs (its worker
        died, or the forge was down when it tried): the repository's merge slot is free again
        once it is known. One the forge cannot answer now is asked again at the next sweep."""
        settled = 0
        if self.tools.breakers.state("forge")["circuit"] == "open":
            return 0  # asked again once the forge answers
        # a request its dead worker sent may still be carried out: the forge is asked only once
        # that would have been answered
        settled_before = self.store.now() - self.tools.forge.settle_after_s
        for effect in self.store.unsettled_merges():
            if effect.updated_at > settled_before:
                continue
            try:
                found = self.tools.forge.find_merge(effect.repo, effect.precondition)
            except Exception as exc:  # the forge's: the next sweep asks again
                log.warning("merge %s is still unsettled: %s", effect.key, exc)
                continue
            if found:
                state, result = EffectState.SUCCEEDED, {"merge_sha": found}
            else:
                state, result = EffectState.FAILED, {"error": "not merged"}
            settled += self.store.settle_effect(
                effect.key, state, {**result, "resolved_by": "forge", "settled_by": "sweeper"}
            )
        return settled
