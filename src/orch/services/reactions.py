"""The forge's webhooks react to a task's pull request: its repository's own CI failing on it,
or a reviewer asking for changes, sends the task back to be reworked with what they said (an
inbox event, applied by the task's worker while the commit it is about is still the branch's);
a person closing it cancels the task. Deliveries are stored once before they are answered and
worked from the store, like the tracker's (orch.services.tracking)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from orch.domain.errors import OrchError
from orch.domain.model import Task
from orch.domain.states import TERMINAL_STATUSES
from orch.ports import Forge, PullRequests, PullState, Reaction, ReactionKind, Store
from orch.services.deliveries import Deliveries
from orch.services.intake import Intake

log = logging.getLogger("orch.forge")

SOURCE = "gitea"


class ForgeSync:
    def __init__(
        self,
        store: Store,
        forge: Forge,
        pulls: PullRequests,
        intake: Intake,
        pushed: Callable[[str, str], None] = lambda repo, branch: None,
    ) -> None:
        """`forge` and `pulls` are one forge, seen as both (a Gitea forge); `pushed(repo,
        branch)` is told of every branch a push moved."""
        self.pushed = pushed
        self.store = store
        self.forge = forge
        self.pulls = pulls
        self.intake = intake
        self.deliveries = Deliveries(store, SOURCE, self._work)

    def receive(self, delivery: str, event: str, body: bytes) -> bool:
        """Store a verified delivery once, with its event type (False: stored before)."""
        text = json.dumps({"event": event, "body": body.decode("utf-8", "replace")})
        return self.deliveries.receive(delivery, text)

    def drain(self) -> int:
        return self.deliveries.drain()

    def _work(self, stored: str) -> str:
        try:
            envelope = json.loads(stored)
            payload = json.loads(envelope["body"])
            event = str(envelope["event"])
        except (ValueError, KeyError, TypeError):
            return "ignored: not JSON"
        if not isinstance(payload, dict):
            return "ignored: not a JSON object"
        reaction = self.pulls.reaction(event, payload)
        if reaction is None:
            return f"ignored: {event} is nothing orch reacts to"
        if reaction.kind == ReactionKind.PUSHED:
            self.pushed(reaction.repo, reaction.branch)
            return f"{reaction.repo}:{reaction.branch} moved to {reaction.head[:12]}"
        task = self._task_of(reaction)
        if task is None:
            return f"ignored: no live task has {reaction.branch or reaction.head[:12]}"
        actor = f"gitea:{reaction.actor or 'someone'}"
        if reaction.kind == ReactionKind.CLOSED:
            # a hint: the pull request as it is now decides, and only the task's own
            pull = self.pulls.find_pull(task.repo, task.branch)
            if pull is None or pull.state != PullState.CLOSED or pull.number != reaction.number:
                return f"ignored: {task.key}'s pull request is not closed now"
            _, recorded = self.intake.stop(task.key, actor, "its pull request was closed")
            return f"stop asked for {task.key}" if recorded else "ignored: stop asked already"
        if reaction.kind == ReactionKind.MERGED:
            # a hint too; the worker then tells a person's merge from orch's own
            pull = self.pulls.find_pull(task.repo, task.branch)
            if pull is None or pull.state != PullState.MERGED or pull.number != reaction.number:
                return f"ignored: {task.key}'s pull request is not merged now"
            recorded = self.intake.landed(task.key, actor, pull.head, pull.number, pull.merge_sha)
            return f"merged by hand: {task.key}" if recorded else "ignored: merged already"
        recorded = self.intake.rework(
            task.key, actor, reaction.feedback, reaction.head, reaction.source
        )
        return f"rework asked for {task.key}" if recorded else "ignored: asked already"

    def _task_of(self, reaction: Reaction) -> Task | None:
        """The live task whose branch the reaction is about: by its name, or, for a status
        (which names only a commit), the branch whose head is that commit or holds it."""
        live = [
            t
            for t in self.store.list_tasks(limit=1000)
            if t.repo == reaction.repo and t.status not in TERMINAL_STATUSES
        ]
        if reaction.branch:
            return next((t for t in live if t.branch == reaction.branch), None)
        for task in live:
            try:
                head = self.forge.branch_head(task.repo, task.branch)
                if head is not None and (
                    head == reaction.head or self.forge.is_ancestor(task.repo, reaction.head, head)
                ):
                    return task
            except OrchError:  # a commit the forge does not know is on no task's branch
                continue
        return None

    def run(self, stop: threading.Event) -> None:
        """Work deliveries as they arrive, until `stop`."""
        self.deliveries.run(stop)
