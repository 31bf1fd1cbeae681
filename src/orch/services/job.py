"""A claimed job, from its claim to its one write, with the one error boundary.

A job is "drive task T from version V". The worker holding its lease is the only writer of T's
stage; everything it writes is fenced by the lease token, and its last write is one TaskChange
that moves T to its next version and enqueues the next job, or gives the job back.
"""

from __future__ import annotations

import logging

from structlog.contextvars import bound_contextvars

from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.errors import (
    Busy,
    CancelRequested,
    Conflict,
    Interrupted,
    LeaseLost,
    OrchError,
    ShuttingDown,
    Unavailable,
    WaitsForBudget,
)
from orch.domain.model import Claim, Task
from orch.domain.pipeline import Move
from orch.domain.states import EventKind, TaskStatus, is_terminal
from orch.services.agent_run import deadline_left
from orch.services.inbox import Inbox
from orch.services.lease import Lease
from orch.services.outbox import Outbox
from orch.services.stage import StageRunner
from orch.services.stop import Stopper
from orch.services.work import Outcome, Tools, Work, decided

log = logging.getLogger("orch.engine")


class Jobs:
    def __init__(
        self, tools: Tools, outbox: Outbox, inbox: Inbox, stages: StageRunner, stopper: Stopper
    ) -> None:
        self.tools = tools
        self.store = tools.store
        self.outbox = outbox
        self.inbox = inbox
        self.stages = stages
        self.stopper = stopper

    def run(self, claim: Claim, owner: str) -> None:
        task = claim.task
        assert task is not None, "a store's claim carries its task"
        # every line logged while the job runs says which task, stage and job it is about
        with bound_contextvars(task=task.key, stage=task.stage.value, job=claim.job_id):
            self._run(claim, task, owner)

    def _run(self, claim: Claim, task: Task, owner: str) -> None:
        if task.version != claim.version or is_terminal(task.status):
            self.store.apply(claim, machine.nothing_to_do(task))
            return
        actor = f"worker:{owner}"
        try:
            pipeline = pl.from_dict(task.pipeline)
        except (KeyError, TypeError, ValueError) as exc:
            why = f"the task's pipeline is unreadable: {exc!r}"
            self.write(task, claim, decided(pl.parked(task.stage, why)), actor)
            return
        settings = self.tools.settings
        with Lease(
            self.store,
            claim,
            settings.lease_ttl_s,
            settings.heartbeat_s,
            shutdown=self.tools.shutdown,
            held=self.tools.held,
            beats=self.tools.heartbeats,
        ) as lease:
            work = Work(task, pipeline, claim, lease, actor)
            # the one error boundary: a signal stops the job, a failure costs an attempt
            try:
                self.write(task, claim, self._step(work), actor, guarded=True)
            except Interrupted as signal:
                self._interrupted(work, signal)
            except OrchError as exc:
                self._failed(work, exc)
            except Exception as exc:
                # a bug or an unexpected OS error must cost an attempt, not the worker thread
                log.exception("job %s of %s failed unexpectedly", claim.job_id, task.key)
                self._fail_attempt(work, f"{type(exc).__name__}: {exc}", actor)

    def _step(self, work: Work) -> Outcome:
        task = work.task
        if task.cancel_requested_at is not None:
            raise CancelRequested("stop requested")
        reacted = self.inbox.react(work)
        if reacted is not None:
            return reacted
        if task.status in (TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR):
            return self.inbox.read(work)
        # an active task waits for no one: what reached its inbox is read now and ignored (a
        # STOP is left for the cancel that reads it); a job with none writes nothing here
        stray = self.inbox.stray(work)
        if stray:
            self.store.mark_events(work.claim, stray)
        left = deadline_left(self.store, task, work.pipeline)
        if left is not None and left <= 0:
            return decided(pl.deadline_passed(work.pipeline, task.stage))
        return self.stages.run(work, left)

    def write(
        self, task: Task, claim: Claim, outcome: Outcome, actor: str, *, guarded: bool = False
    ) -> None:
        """Write what a step decided, as one TaskChange; the events it answers are read in the
        same transaction. `guarded`: a STOP asked for while the step ran is applied instead of
        the step's move (CancelRequested), so a task never moves on after its STOP."""
        if outcome.change is not None:
            self.store.apply(claim, outcome.change)
            return
        decision = outcome.decision
        assert decision is not None
        if decision.move == Move.RETRY:
            backoff = self.tools.backoff(claim.attempt)
            self.store.apply(claim, machine.retry(decision.reason, backoff, read=outcome.read))
            return
        if (
            guarded
            and decision.status != TaskStatus.ACTIVE
            and self.store.cancel_requested(task.id)
        ):
            # before telling people where the task goes: it goes to its STOP instead
            raise CancelRequested("stop requested")
        if decision.move == Move.PARK:
            self.outbox.settle_open(task, claim)
        self.outbox.notify(task, claim, decision)
        change = machine.advance(
            task, decision, outcome.actor or actor, outcome.read, unless_stopped=guarded
        )
        self.store.apply(claim, change)

    def _interrupted(self, work: Work, signal: Interrupted) -> None:
        task, claim = work.task, work.claim
        if isinstance(signal, CancelRequested):
            self._stop(work)
        elif isinstance(signal, ShuttingDown):
            # not the task's failure: the job goes back to the queue for the next worker
            try:
                give_back = machine.retry("the worker shut down", 0.0, counts=False)
                self.store.apply(claim, give_back)
            except (OrchError, Interrupted) as exc:
                log.warning("job %s of %s not given back: %s", claim.job_id, task.key, exc)
        else:
            # someone else owns the task now: write nothing more
            log.warning("job %s of %s dropped: %s", claim.job_id, task.key, signal)

    def _failed(self, work: Work, exc: OrchError) -> None:
        claim = work.claim
        if isinstance(exc, Conflict):
            # the task moved on under another writer: write nothing more
            log.warning("job %s of %s dropped: %s", claim.job_id, work.task.key, exc)
        elif isinstance(exc, Unavailable):
            # the forge or tracker did not answer: not this task's failure; its circuit (which
            # the stage recorded) holds the task's work back while it is down
            wait = max(self.tools.backoff(claim.attempt), 1.0)
            self.store.apply(claim, machine.retry(str(exc), wait, counts=False))
        elif isinstance(exc, WaitsForBudget):
            # a budget over time is spent: it waits for the period, holding no slot
            self.store.apply(claim, machine.budget_wait(str(exc), exc.wait_s, counts=exc.counts))
        elif isinstance(exc, Busy):
            # waiting for another task's merge is not this task's failure
            wait = max(self.tools.backoff(1), 1.0)
            self.store.apply(claim, machine.retry(str(exc), wait, counts=False))
        else:
            self._fail_attempt(work, str(exc), work.actor)

    def _stop(self, work: Work) -> None:
        task, claim = work.task, work.claim
        try:
            self.write(task, claim, self.stopper.cancel(work), work.actor)
        except (LeaseLost, Conflict) as exc:
            log.warning("stop of %s dropped: %s", task.key, exc)
        except Exception as exc:
            # the cancel flag stays raised: a retry of this job, or an operator's retry of the
            # parked task, applies the STOP; its event is read once
            log.exception("stop of %s could not be applied", task.key)
            stops = [e.id for e in self.store.pending_events(task.id) if e.kind == EventKind.STOP]
            self.store.mark_events(claim, stops)
            self._fail_attempt(work, f"stop could not be applied: {exc}", "worker")

    def _fail_attempt(self, work: Work, reason: str, actor: str) -> None:
        task, claim = work.task, work.claim
        try:
            decision = pl.after_attempt_failure(work.pipeline, task.stage, claim.attempt, reason)
            self.write(task, claim, decided(decision), actor)
        except (LeaseLost, Conflict) as exc:
            log.warning("could not record the failure of %s: %s", task.key, exc)
