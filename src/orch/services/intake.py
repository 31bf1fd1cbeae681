"""Intake: tickets become tasks, and people's decisions become inbox events.

Nothing here writes a task's stage after creation: approvals and rejections are appended to the
task's inbox, and the worker that reads the inbox applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orch.domain import pipeline as pl
from orch.domain.errors import Conflict, NotFound, OrchError
from orch.domain.ledger import NO_BUDGET, Budget
from orch.domain.model import Event, Task, Ticket
from orch.domain.naming import (
    branch_for,
    decision_key,
    key_prefix,
    landed_key,
    retry_key,
    rework_key,
    stop_key,
)
from orch.domain.states import DECISIONS, EventKind, Stage, TaskStatus, is_terminal
from orch.ports import Repos, Store

PipelineFor = Callable[[str], pl.Pipeline]


class Intake:
    def __init__(
        self,
        store: Store,
        repos: Repos,
        pipeline_for: PipelineFor,
        stop_asked: Callable[[int], None] = lambda task_id: None,
    ) -> None:
        self.store = store
        self.repos = repos
        self.pipeline_for = pipeline_for
        # tells a job of this process that runs the task, so it need not wait for its renewal
        self.stop_asked = stop_asked

    def file(self, repo: str, title: str, body: str = "", actor: str = "board") -> Task:
        """File a ticket on the built-in board and start its task."""
        settings = self.repos.get(repo)
        title = title.strip()
        if not title:
            raise OrchError("a ticket needs a title")
        pipeline = self.pipeline_for(repo)  # validate before anything is written
        return self.store.file_and_create(
            repo,
            key_prefix(repo, settings.key_prefix),
            title,
            body,
            pl.to_dict(pipeline),
            pl.start(pipeline),
            actor,
        )

    def start(self, key: str, actor: str = "board") -> Task:
        """Start the ticket `key` (typed in any case) again, as a new task."""
        ticket = self.store.get_ticket(key) or self.store.get_ticket(key.upper())
        if ticket is None:
            raise NotFound(f"no ticket {key} on the board")
        return self._start(ticket, self.pipeline_for(ticket.repo), actor)

    def _start(self, ticket: Ticket, pipeline: pl.Pipeline, actor: str) -> Task:
        return self.store.create_task(
            ticket, branch_for(ticket.key), pl.to_dict(pipeline), pl.start(pipeline), actor
        )

    def task(self, key: str) -> Task:
        return find_task(self.store, key)

    def decide(
        self,
        key: str,
        approve: bool,
        actor: str,
        comment: str = "",
        checkpoint: str | None = None,
        wait: str | None = None,
    ) -> bool:
        """Answer the checkpoint the task waits at: only `checkpoint`, if it is named, and only
        the wait `wait` ("<task id>.<version>"), if it is named, so a button pressed for an
        earlier question answers nothing later. A wait takes one answer: the same answer sent
        again is not recorded twice (False), and a different one is refused (Conflict), so an
        answer this returns True for is the one the task acts on."""
        task = self.task(key)
        if checkpoint is not None and task.waiting_for != checkpoint:
            now = f"waits at {task.waiting_for}" if task.waiting_for else "is not waiting"
            raise Conflict(f"{key} {now}, not at {checkpoint}; that answer was not recorded")
        if wait is not None and wait != f"{task.id}.{task.version}":
            raise Conflict(f"{key} was asked again since; that answer was not recorded")
        if task.status != TaskStatus.WAITING or not task.waiting_for:
            answers = [e for e in self.store.events(task.id) if e.kind in DECISIONS]
            last = f"; its last wait was {_said(answers[-1])}" if answers else ""
            raise Conflict(
                f"{key} is not waiting at a checkpoint (it is {task.stage}, {task.status}){last}"
            )
        kind = EventKind.APPROVE if approve else EventKind.REJECT
        payload = {"checkpoint": task.waiting_for, "comment": comment}
        return self._once(task, decision_key(task.id, task.version), kind, actor, payload)

    def _once(
        self, task: Task, event_key: str, kind: EventKind, actor: str, payload: dict[str, Any]
    ) -> bool:
        """Append the one event `event_key` allows; a repeat of it is not recorded again, and
        anything else under the key is refused with what was recorded first."""
        if self.store.append_event(task.id, event_key, kind, actor, payload):
            return True
        first = next((e for e in self.store.events(task.id) if e.key == event_key), None)
        if first is None or (first.kind, first.actor, first.payload) == (kind, actor, payload):
            return False
        raise Conflict(
            f"{task.key} was already {_said(first)} at version {task.version}; that stands"
        )

    def stop(self, key: str, actor: str, reason: str = "") -> tuple[Task, bool]:
        """Ask for a task to be cancelled. Idempotent: a second STOP is recorded once.
        Returns the task and whether this call recorded the request."""
        task = self.task(key)
        if is_terminal(task.status):
            return task, False
        recorded = self.store.append_event(
            task.id, stop_key(task.id), EventKind.STOP, actor, {"reason": reason}, cancel=True
        )
        self.stop_asked(task.id)
        return task, recorded

    def rework(self, key: str, actor: str, feedback: str, head: str, source: str) -> bool:
        """Send the task back to be reworked with `feedback`, for what the forge said of its
        head `head` (its CI failed, a reviewer asked for changes). Recorded once per `source`
        (the status, review or comment it came from); the worker applies it only while `head`
        is the branch's and has not landed. False if it was recorded before or the task ended."""
        task = self.task(key)
        if is_terminal(task.status):
            return False
        payload = {"feedback": feedback, "head": head, "source": source}
        return self.store.append_event(
            task.id, rework_key(task.id, source), EventKind.REWORK, actor, payload
        )

    def landed(self, key: str, actor: str, head: str, number: int, merge_sha: str) -> bool:
        """A person merged the task's pull request `number` (at `head`, landed as `merge_sha`)
        by hand: the worker ends the task done, once the forge shows `head` landed and the
        merge was not orch's own. Recorded once per task; False if it was, or the task ended."""
        task = self.task(key)
        if is_terminal(task.status):
            return False
        payload = {"head": head, "number": number, "merge_sha": merge_sha}
        return self.store.append_event(
            task.id, landed_key(task.id), EventKind.LANDED, actor, payload
        )

    def retry(self, key: str, stage: str | None, actor: str, budget: Budget = NO_BUDGET) -> bool:
        """Ask for a parked task to run again from `stage` (default: where it stopped), with
        the budget that stopped it raised to `budget` if one is given."""
        task = self.task(key)
        if task.status != TaskStatus.NEEDS_OPERATOR:
            raise Conflict(f"{key} is {task.status}; only a task that needs an operator is retried")
        pipeline = pl.from_dict(task.pipeline)
        known = {s.value for s in pipeline.stage_names}
        if stage and stage not in known:
            names = ", ".join(s.value for s in pipeline.stage_names)
            raise OrchError(f"{stage} is not a stage of {key}'s pipeline ({names})")
        target = Stage(stage) if stage else task.stage
        pl.on_retry(pipeline, task.stage, target, actor)  # refuses a stage after the current one
        payload: dict[str, Any] = {"stage": target.value}
        if not budget.unlimited:
            payload["budget"] = budget.as_dict()
        return self._once(task, retry_key(task.id, task.version), EventKind.RETRY, actor, payload)


def _said(event: Event) -> str:
    """What a person's event said, in a few words: "approved by ann (comment: ok)"."""
    verb = {EventKind.APPROVE: "approved", EventKind.REJECT: "rejected"}.get(
        EventKind(event.kind), f"asked to {event.kind}"
    )
    parts = ", ".join(f"{k}: {v}" for k, v in event.payload.items() if k != "checkpoint" and v)
    return f"{verb} by {event.actor}" + (f" ({parts[:200]})" if parts else "")


def find_task(store: Store, key: str) -> Task:
    """The task of ticket `key`, typed in any case: keys are filed upper case (`r2-3` is
    R2-3), and one filed otherwise is still found as it was typed."""
    task = store.find_task(key)
    if task is None and key.upper() != key:
        task = store.find_task(key.upper())
    if task is None:
        raise NotFound(f"no task for ticket {key}")
    return task
