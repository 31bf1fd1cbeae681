"""STOP: cancellation is a state (rule 10). The running job sees the cancel flag, its agent is
killed by the lease's supervisor, and the cancel applies once every effect in flight is
resolved, so nothing irreversible is cut off or left unknown."""

from __future__ import annotations

from orch.domain import pipeline as pl
from orch.domain.states import UNRESOLVED_EFFECT_STATES, EffectKind, EffectState, EventKind
from orch.services.deploy import Deployer
from orch.services.outbox import Outbox
from orch.services.work import Outcome, Tools, Work, decided


class Stopper:
    def __init__(self, tools: Tools, outbox: Outbox, deployer: Deployer) -> None:
        self.tools = tools
        self.store = tools.store
        self.outbox = outbox
        self.deployer = deployer

    def cancel(self, work: Work) -> Outcome:
        """Apply a STOP. The agent is already dead (the supervisor killed it); an effect still
        in flight is resolved first."""
        task, claim = work.task, work.claim
        stops = [e for e in self.store.events(task.id) if e.kind == EventKind.STOP]
        actor = stops[0].actor if stops else "operator"
        reason = str(stops[0].payload.get("reason", "")) if stops else ""
        blocked = self._settle(work)
        if blocked:
            # read, and parked on: only an operator's retry brings the STOP back
            why = f"stop requested by {actor}, but {blocked}; an operator must decide"
            unread = tuple(e.id for e in stops if e.processed_at is None)
            return decided(pl.parked(task.stage, why), "worker", unread)
        self.outbox.delete_branch(task, claim, "cancel")
        self.tools.remove_worktree(task)
        pending = tuple(e.id for e in self.store.pending_events(task.id))
        return decided(pl.on_stop(task.stage, actor, reason), actor, pending)

    def _settle(self, work: Work) -> str:
        """Resolve every effect of the task still in flight; say what could not be resolved."""
        task, claim = work.task, work.claim
        for effect in self.store.effects(task.id):
            if effect.state not in UNRESOLVED_EFFECT_STATES:
                continue
            if effect.kind == EffectKind.MERGE:
                self.outbox.settle_merge(claim, effect.key, effect.precondition, task.repo)
            elif EffectKind.DEPLOY.of(effect.kind):
                target = effect.kind.split(":", 1)[1]
                deployed = self.deployer.resolve(work, target, effect.precondition)
                if deployed is None:
                    return f"the outcome of its {target} deploy is unknown"
            else:
                self.store.finish_effect(
                    claim, effect.key, EffectState.FAILED, {"error": "abandoned by a stop"}
                )
        return ""
