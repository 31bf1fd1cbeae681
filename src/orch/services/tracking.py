"""A hosted tracker drives tasks: its webhook deliveries and a reconciler's polls are hints to read
an item again, and the state the item is in now asks for one thing (rule 15). Nothing here writes
a task's stage: a start files a task, and decisions and STOPs go to the task's inbox through
intake (rule 1).

When a state asks:
- a start is a move into the start state (the state orch last saw the item in is kept): an
  item left in "To Analyse" after its task ended, and edited, starts nothing;
- an answer counts only if it was given after the question was asked: asking records the item's
  stamp (orch.services.reporting), so an "Approved" left from before answers nothing, and one
  given while the question is being asked is acted on by the next delivery or poll;
- a state acted on is not acted on again at the same stamp;
- orch moves no item out of a state a person set that it has not acted on yet.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from orch.domain import pipeline as pl
from orch.domain.errors import Conflict, NotFound, OrchError
from orch.domain.model import ItemLink, Task, Ticket
from orch.domain.states import Stage, TaskStatus, is_terminal
from orch.ports import Store, Tracker, WorkItem
from orch.services.deliveries import Deliveries
from orch.services.intake import Intake

log = logging.getLogger("orch.tracker")


@dataclass(frozen=True)
class ProjectRules:
    """What a tracker project's state names mean to orch, and where it reports."""

    project: str
    repo: str
    start: str
    approve: str
    reject: str
    confirm_deploy: str
    stop: str
    report: Mapping[str, str] = field(default_factory=dict)  # stage or status -> state name

    @property
    def asks(self) -> tuple[str, ...]:
        return (self.start, self.approve, self.reject, self.confirm_deploy, self.stop)


class TrackerSync:
    def __init__(
        self,
        store: Store,
        tracker: Tracker,
        intake: Intake,
        projects: Sequence[ProjectRules],
        also: Callable[[], object] | None = None,
    ) -> None:
        """`also` runs at the start of each poll, before the items are read: the write-backs
        owed to the tracker (orch.services.reporting), so a question sent again marks where its
        answers start before the poll reads any."""
        self.store = store
        self.tracker = tracker
        self.intake = intake
        self.projects = {p.project: p for p in projects}
        self.also = also
        self.source = tracker.name
        self.deliveries = Deliveries(store, self.source, self._work)

    def receive(self, delivery: str, body: bytes) -> bool:
        """Store a verified delivery once (False: it was stored before) and wake the worker."""
        return self.deliveries.receive(delivery, body.decode("utf-8", "replace"))

    def drain(self) -> int:
        """Work every stored delivery not yet worked; how many were."""
        return self.deliveries.drain()

    def _work(self, body: str) -> str:
        try:
            payload = json.loads(body)
        except ValueError:
            return "ignored: not JSON"
        if not isinstance(payload, dict):
            return "ignored: not a JSON object"
        hint = self.tracker.hint(payload)
        if hint is None:
            return "ignored: not about a work item"
        rules = self.projects.get(hint.project)
        if hint.own and not (rules is not None and hint.moved and hint.state in rules.asks):
            # an echo of orch's own write; but a move of orch's into a state that asks is a
            # person's move put back (one orch's write had landed on): it asks as theirs did
            return "ignored: orch's own change"
        if rules is None:
            return f"ignored: project {hint.project} is not followed"
        item = self.tracker.item(hint.project, hint.ref)
        if item is None:
            return "ignored: the item is gone"
        return self.act(item, rules, f"{self.source}:{hint.actor or 'someone'}", moved=hint.moved)

    # -- the reconciler ------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Read every item of every followed project and act on what their states ask: what
        webhooks missed or brought out of order. What was done, one line an action."""
        done: list[str] = []
        with self.deliveries.lock:  # not beside a delivery's work on the same items
            for rules in self.projects.values():
                try:
                    for item in self.tracker.items(rules.project):
                        if item.state not in rules.asks:
                            self._see(item)
                            continue
                        outcome = self.act(item, rules, f"{self.source}:poll")
                        if not outcome.startswith("ignored"):
                            done.append(f"{item.key}: {outcome}")
                except Exception as exc:
                    log.warning("%s poll of %s failed: %s", self.source, rules.project, exc)
        return done

    # -- what a state asks -----------------------------------------------------------------------

    def act(self, item: WorkItem, rules: ProjectRules, actor: str, moved: bool = False) -> str:
        """Do what the item's state asks. `moved`: a delivery says the item was just moved
        (into this state, or through it: it is read again, and the state it is in now acts)."""
        link = self.store.item_link(self.source, item.ref)
        try:
            return self._act(item, rules, actor, moved, link)
        finally:
            self._see(item, link)

    def _see(self, item: WorkItem, link: ItemLink | None = None) -> None:
        """Remember the state the item is in, for the next start to be a move into it."""
        link = link or self.store.item_link(self.source, item.ref)
        if link is not None and link.seen_state != item.state:
            self.store.mark_seen(self.source, item.ref, item.state)

    def _act(
        self,
        item: WorkItem,
        rules: ProjectRules,
        actor: str,
        moved: bool,
        link: ItemLink | None,
    ) -> str:
        task = self.store.find_task(link.key) if link is not None else None
        if item.state == rules.stop:
            if task is None or is_terminal(task.status):
                return "ignored: no live task to stop"
            _, recorded = self.intake.stop(task.key, actor, f"moved to {item.state}")
            self.store.mark_acted(self.source, item.ref, item.updated)
            return "stop asked" if recorded else "ignored: stop asked already"
        if item.state == rules.start:
            return self._start(item, rules, link, task, actor, moved)
        if link is not None and link.acted_on == item.updated:
            return f"ignored: {item.state} was acted on at this change already"
        if task is None:
            return f"ignored: {item.key} has no task"
        if item.state in (rules.approve, rules.confirm_deploy, rules.reject):
            return self._decide(item, rules, task, actor)
        return f"ignored: {item.state} asks nothing"

    def _start(
        self,
        item: WorkItem,
        rules: ProjectRules,
        link: ItemLink | None,
        task: Task | None,
        actor: str,
        moved: bool,
    ) -> str:
        if task is not None and not is_terminal(task.status):
            return f"ignored: {task.key} has a live task"
        if link is not None and not moved and link.seen_state == item.state:
            # left there since its last task: an edit of its title is no new start
            return f"ignored: {item.key} has stayed in {item.state} since its last task"
        pipeline = self.intake.pipeline_for(rules.repo)
        ticket = Ticket(item.key, rules.repo, item.title, item.body, item.url)
        new = ItemLink(item.key, self.source, item.project, item.ref, item.updated, item.state)
        try:
            started = self.store.start_item(
                new, ticket, pl.to_dict(pipeline), pl.start(pipeline), actor
            )
        except Conflict as exc:
            return f"ignored: {exc}"
        self._report(item, rules, started.stage.value)
        return f"started {started.key} (task {started.id})"

    def _decide(self, item: WorkItem, rules: ProjectRules, task: Task, actor: str) -> str:
        if task.status != TaskStatus.WAITING or not task.waiting_for:
            # not asked yet, or asked a moment ago and not yet recorded as waiting: asking marks
            # where answers start (orch.services.reporting), so one from before the question is
            # dropped then, and one after it is acted on by the next delivery or poll
            return f"ignored: {task.key} is not waiting ({task.stage}, {task.status})"
        # from here the state is seen by the question it could answer: once it has answered
        # it, or cannot, it never answers a later one (a failure on the way, the store's, say,
        # leaves it to the next delivery or poll)
        deploy = _is_deploy_wait(task)
        if item.state == rules.confirm_deploy and not deploy:
            self.store.mark_acted(self.source, item.ref, item.updated)
            return f"ignored: {task.key} waits at {task.waiting_for}, not a deploy"
        if item.state == rules.approve and deploy:
            self.store.mark_acted(self.source, item.ref, item.updated)
            return f"ignored: {task.key} waits for {rules.confirm_deploy}, not {rules.approve}"
        approve = item.state != rules.reject
        comment = "" if approve else self.tracker.latest_comment(item)
        wait = f"{task.id}.{task.version}"
        try:
            recorded = self.intake.decide(task.key, approve, actor, comment, task.waiting_for, wait)
        except (Conflict, NotFound) as exc:
            self.store.mark_acted(self.source, item.ref, item.updated)
            return f"ignored: {exc}"
        self.store.mark_acted(self.source, item.ref, item.updated)
        verb = "approved" if approve else "rejected"
        return f"{verb} {task.waiting_for}" if recorded else f"ignored: {verb} already"

    def _report(self, item: WorkItem, rules: ProjectRules, where: str) -> None:
        state = rules.report.get(where)
        if not state:
            return
        try:
            self.tracker.move(item, state)
        except OrchError as exc:
            log.warning("could not move %s to %s: %s", item.key, state, exc)

    # -- running ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event, poll_interval_s: float) -> None:
        """Work deliveries as they arrive and poll every `poll_interval_s`, until `stop`."""
        self.deliveries.run(stop, poll_interval_s, also=self._poll)

    def _poll(self) -> None:
        if self.also is not None:
            try:
                self.also()
            except Exception as exc:  # the poll's reads repair what webhooks missed regardless
                log.warning("%s poll: %s", self.source, exc)
        self.reconcile()


def _is_deploy_wait(task: Task) -> bool:
    try:
        checkpoint = pl.from_dict(task.pipeline).checkpoint(task.waiting_for or "")
    except (OrchError, KeyError, TypeError, ValueError):
        return task.waiting_for == "confirm-deploy"
    return checkpoint.before == Stage.DEPLOY
