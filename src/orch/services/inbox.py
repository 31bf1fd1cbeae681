"""The inbox of a task that waits for a person or an operator: each event is read once, and the
one that answers the wait moves the task; a checkpoint's timer reminds people or parks it."""

from __future__ import annotations

import logging
from dataclasses import replace

from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.errors import OrchError
from orch.domain.naming import remind_key
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    EventKind,
    TaskStatus,
    is_terminal,
)
from orch.services.agent_run import limits_of
from orch.services.outbox import Outbox
from orch.services.work import Outcome, Tools, Work, decided

log = logging.getLogger("orch.engine")


class Inbox:
    def __init__(self, tools: Tools, outbox: Outbox) -> None:
        self.tools = tools
        self.store = tools.store
        self.outbox = outbox

    def read(self, work: Work) -> Outcome:
        task, pipeline, claim = work.task, work.pipeline, work.claim
        if task.status == TaskStatus.NEEDS_OPERATOR:
            # parked by the sweeper mid-merge: ask the forge, so the repository's one merge
            # slot is not held by a task nobody drives
            self.outbox.settle_open(task, claim)
        stray: list[int] = []
        for ev in claim.events:
            decision = machine.answer(
                task, pipeline, ev, lambda: limits_of(self.store, task, pipeline, task.stage)
            )
            if decision is not None:
                if decision.stage != task.stage or decision.reset_rounds:
                    self.tools.remove_worktree(task)  # rebuilt from the branch
                # the decision is read in the stage write's own transaction: a crash before it
                # leaves the event unread, for the job that runs again
                return decided(decision, ev.actor, (*stray, ev.id))
            if ev.kind == EventKind.STOP:
                continue  # only a cancel consumes a STOP
            log.info("ignored %s event for %s (%s)", ev.kind, task.key, task.status)
            stray.append(ev.id)
        if task.status == TaskStatus.WAITING and task.waiting_for:
            return self._timer(work, tuple(stray))
        return Outcome(change=replace(machine.nothing_to_do(task), read=tuple(stray)))

    def _timer(self, work: Work, read: tuple[int, ...]) -> Outcome:
        """The wait's timer fired: remind people, or park the task, as the checkpoint says."""
        task = work.task
        assert task.waiting_for is not None
        cp = work.pipeline.checkpoint(task.waiting_for)
        if cp.timeout_s is None:
            return Outcome(change=replace(machine.nothing_to_do(task), read=read))
        entered = self.store.transitions(task.id)[-1].at
        overdue = self.store.now() - entered
        if overdue < cp.timeout_s:
            return Outcome(change=machine.timer(task, cp.timeout_s - overdue, read))
        decision = pl.on_checkpoint_timeout(work.pipeline, task.stage, cp.name)
        if decision is not None:
            return decided(decision, "timer", read)
        rounds = int(overdue // cp.timeout_s)
        key = remind_key(task.key, task.id, task.version, rounds)
        text = f"{task.key} still waits for {cp.name} ({overdue:.0f}s so far)"
        self.outbox.send(task, work.claim, key, text)
        return Outcome(change=machine.timer(task, cp.timeout_s * (rounds + 1) - overdue, read))

    def react(self, work: Work) -> Outcome | None:
        """The forge's reaction to the task's pull request: merged by hand (the task ends done),
        or (orch.domain.pipeline.on_reaction) its CI failed or a reviewer asked for changes, if
        one in the inbox is about the branch as it is (its head, or a commit under it: the
        stages after development commit their reports on top) and has not landed; None if none
        is (the stale ones are then read as any event nothing answers)."""
        landed = self._landed(work)
        if landed is not None:
            return landed
        task, claim = work.task, work.claim
        if task.status not in (TaskStatus.ACTIVE, TaskStatus.WAITING):
            return None
        reactions = [e for e in claim.events if e.kind == EventKind.REWORK]
        if not reactions:
            return None
        branch_head = self.tools.forge.branch_head(task.repo, task.branch)
        stale: list[int] = []
        for ev in reactions:
            head = str(ev.payload.get("head", "")) or branch_head or ""
            if not self._unlanded_under(task.repo, head, branch_head):
                log.info("ignored a reaction to %s: its head %s is not current", task.key, head)
                stale.append(ev.id)
                continue
            waiting = task.waiting_for if task.status == TaskStatus.WAITING else None
            feedback = str(ev.payload.get("feedback", ""))
            decision = pl.on_reaction(
                work.pipeline, task.stage, waiting, task.rework_rounds, ev.actor, feedback
            )
            if decision is None:
                stale.append(ev.id)
                continue
            if decision.stage != task.stage:
                self.tools.remove_worktree(task)  # rebuilt from the branch
            return decided(decision, ev.actor, (*stale, ev.id))
        return None

    def _landed(self, work: Work) -> Outcome | None:
        """A person merged the task's pull request by hand: the task is done, without a merge
        of orch's. Not when the merge was orch's own (its merge step records that landing), nor
        when orch's merge is in flight (it finds the head landed and records it as its own),
        nor when the forge does not show the head on the default branch."""
        task = work.task
        events = [e for e in work.claim.events if e.kind == EventKind.LANDED]
        if not events or is_terminal(task.status):
            return None
        merges = [e for e in self.store.effects(task.id) if e.kind == EffectKind.MERGE]
        if any(e.state in UNRESOLVED_EFFECT_STATES for e in merges):
            return None  # read once the merge in flight is settled
        ours = [
            str(e.result.get("merge_sha", ""))
            for e in merges
            if e.state == EffectState.SUCCEEDED and e.result.get("merge_sha")
        ]
        for ev in events:
            head, sha = str(ev.payload.get("head", "")), str(ev.payload.get("merge_sha", ""))
            try:
                if not head or self._landed_by_orch(task.repo, head, ours):
                    continue
                found = self.tools.forge.find_merge(task.repo, head)
            except OrchError as exc:
                log.info("%s's merge by hand cannot be placed: %s", task.key, exc)
                continue
            if found:
                self.tools.remove_worktree(task)  # nothing more is done in it
                decision = pl.on_landed(task.stage, ev.actor, sha or found)
                return decided(decision, ev.actor, tuple(e.id for e in events))
        return None

    def _landed_by_orch(self, repo: str, head: str, ours: list[str]) -> bool:
        """Whether `head` is in what one of the task's own merges landed."""
        forge = self.tools.forge
        return any(head == sha or forge.is_ancestor(repo, head, sha) for sha in ours)

    def _unlanded_under(self, repo: str, head: str, branch_head: str | None) -> bool:
        """Whether `head` is the branch's head or under it, and has not landed; a commit the
        forge does not know is neither."""
        forge = self.tools.forge
        if branch_head is None or not head:
            return False
        try:
            under = head == branch_head or forge.is_ancestor(repo, head, branch_head)
            return under and not forge.find_merge(repo, head)
        except OrchError as exc:
            log.info("a reaction's head %s cannot be placed: %s", head, exc)
            return False

    def stray(self, work: Work) -> tuple[int, ...]:
        """What reached an active task's inbox, which nothing answers: a STOP is left for the
        cancel that reads it."""
        events = [e for e in work.claim.events if e.kind != EventKind.STOP]
        for ev in events:
            log.info("ignored %s event for %s: no checkpoint is waiting", ev.kind, work.task.key)
        return tuple(ev.id for ev in events)
