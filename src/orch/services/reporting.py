"""What happens to a task is written back to the tracker item it came from: its state as the
task moves (the project's `report` map), and a comment for each stage it leaves, each question
it asks and each end it reaches. The outbox calls it once per piece of news (an effect keyed by
the news), and the tracker's own lookups (a state already set, a comment with that key already
there) keep a repeat after a crash from doing anything twice.

A write-back that failed (the tracker down, its circuit open) is kept with its news, and sent
again by `resend` on the tracker's poll until it is made: in full while it is still its task's
newest report, else its comment alone, so an old state never overwrites a newer one."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence

from orch.domain.errors import OrchError, StoreUnavailable, Unavailable
from orch.domain.model import Effect
from orch.domain.news import News, NewsKind
from orch.domain.states import TaskStatus
from orch.ports import Store, Tracker, WorkItem
from orch.services.breaker import Breakers
from orch.services.outbox import REPORT
from orch.services.tracking import ProjectRules

log = logging.getLogger("orch.tracker")

_SAID = {
    NewsKind.STAGE_DONE: "Stage done",
    NewsKind.WAITING: "Waiting for you",
    NewsKind.PARKED: "Needs an operator",
    NewsKind.DONE: "Done",
    NewsKind.CANCELLED: "Cancelled",
    NewsKind.MERGED: "Merged",
    NewsKind.DEPLOYED: "Deployed",
}


class TrackerReport:
    """A notifier for the tracker: news about tasks whose tickets are not the tracker's is
    ignored."""

    def __init__(
        self,
        store: Store,
        tracker: Tracker,
        projects: Sequence[ProjectRules],
        breakers: Breakers | None = None,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.projects = {p.project: p for p in projects}
        # a tracker that is down fails reports at once, not each after its own retries
        self.breakers = breakers or Breakers(threshold=3, cooldown_s=60.0)
        self.circuit = f"tracker:{tracker.name}"

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        if news is None or not news.task_key:
            return
        wait = self.breakers.admit(self.circuit, lambda: None)
        if wait > 0:
            raise OrchError(f"{self.tracker.name} is unavailable; its circuit opens in {wait:.0f}s")
        try:
            self._report(key, news)
        except Unavailable as exc:
            self.breakers.record(self.circuit, ok=False, provider_failure=True, reason=str(exc))
            raise
        except BaseException:
            self.breakers.release(self.circuit)
            raise
        self.breakers.record(self.circuit, ok=True)

    def resend(self) -> int:
        """Send again the write-backs that failed, oldest first; how many were made now. None is
        sent while the tracker's circuit is open, and a round stops at the first that finds the
        tracker down: the rest wait for the next round, still FAILED."""
        failed = self.store.failed_effects(REPORT)
        if not failed:
            return 0
        if self.breakers.admit(self.circuit, lambda: None) > 0:
            return 0
        made, reached = 0, False
        try:
            for effect in failed:
                done, asked = self._resend(effect)
                made, reached = made + done, reached or asked
        except Unavailable as exc:
            self.breakers.record(self.circuit, ok=False, provider_failure=True, reason=str(exc))
            log.warning("%s is down; its write-backs wait: %s", self.tracker.name, exc)
            return made
        except BaseException:
            self.breakers.release(self.circuit)
            raise
        if reached:
            self.breakers.record(self.circuit, ok=True)
        else:
            self.breakers.release(self.circuit)
        return made

    def _resend(self, effect: Effect) -> tuple[int, bool]:
        """Send one failed report again: (1 if it is made now, else 0; whether the tracker
        answered)."""
        try:
            news = News.from_dict(effect.result["news"])
        except (KeyError, TypeError, ValueError, AttributeError):
            # failed before its news was kept with it: there is nothing to send again
            return 0, False
        reports = [e.key for e in self.store.effects(effect.task_id) if e.kind == REPORT]
        newest = reports[-1:] == [effect.key]
        task = self.store.get_task(effect.task_id)
        # the item goes where the task is now, not where the news left it: a newer report in
        # flight at this moment moves it there too, and neither undoes the other
        where = task.stage.value if task.status == TaskStatus.ACTIVE else task.status.value
        ask = False
        if newest and news.kind == NewsKind.WAITING:
            wait = f"{task.id}.{task.version}"
            if _version(wait) < _version(news.wait):
                return 0, False  # the wait is not recorded yet: asked once it is
            # a question still waiting for its answer marks where the answers start, as when
            # it was first asked; one answered (elsewhere) or left since marks nothing, as a
            # state set since may answer a later question
            ask = (task.status, task.waiting_for, wait) == (
                TaskStatus.WAITING,
                news.checkpoint,
                news.wait,
            )
        try:
            reached = self._report(effect.key, news, where=where if newest else None, ask=ask)
        except (Unavailable, StoreUnavailable):
            raise
        except OrchError as exc:
            log.warning("write-back %s failed again: %s", effect.key, exc)
            return 0, False
        result = {"text": news.text, "resent": "in full" if newest else "its comment"}
        return int(self.store.mark_redone(effect.key, result)), reached

    def _report(self, key: str, news: News, *, where: str | None = "", ask: bool = True) -> bool:
        """Move the item to the state for `where` (a stage or status; "": where the news puts
        the task; None: no move) and comment the news; `ask`: a question marks where its
        answers start. Whether the tracker was asked."""
        if where is None and news.kind not in _SAID:
            return False
        link = self.store.link_of(news.task_key)
        if link is None or link.tracker != self.tracker.name:
            return False
        rules = self.projects.get(link.project)
        item = self.tracker.item(link.project, link.ref)
        if rules is None or item is None:
            return True
        acted = link.acted_on
        asking = ask and news.kind == NewsKind.WAITING and item.state != rules.stop
        if asking:
            # the question is asked now: whatever state the item is in is not its answer (an
            # "Approved" left from before), and any change from here on may be. A STOP stays
            # one
            self.store.mark_acted(link.tracker, link.ref, item.updated)
            acted = item.updated
        if where == "":
            where = news.stage if news.status == TaskStatus.ACTIVE else news.status
        state = rules.report.get(where) if where is not None else None
        if state and may_move(item, rules, acted):
            self.tracker.move(item, state)
        if news.kind in _SAID:
            self.tracker.comment(item, key, comment_html(news))
        if asking:
            self._asked(link.tracker, link.project, link.ref, rules, state)
        return True

    def _asked(
        self, tracker: str, project: str, ref: str, rules: ProjectRules, state: str | None
    ) -> None:
        """The question is there: an answer a person gave while it was being asked, before it
        could be seen (a tracker without conditional writes puts theirs back if orch's move
        had landed on it), is no answer either. It is moved over as an earlier one is, so the
        item shows the question again, and answers start after that."""
        now = self.tracker.item(project, ref)
        if now is None or now.state == rules.stop:
            return
        answers = (rules.approve, rules.reject, rules.confirm_deploy)
        if state and now.state in answers:
            self.tracker.move(now, state)
            now = self.tracker.item(project, ref) or now
            if now.state == rules.stop:
                return
        self.store.mark_acted(tracker, ref, now.updated)


def _version(wait: str) -> int:
    """The task version a wait ("<task id>.<version>") is at; 0 if it names none."""
    _, _, version = wait.rpartition(".")
    return int(version) if version.isdigit() else 0


def may_move(item: WorkItem, rules: ProjectRules, acted: str) -> bool:
    """Whether orch may move the item: not while it is in a state that asks something of orch
    (a STOP, an approval) that orch has not acted on yet; the person's move stands until it
    has."""
    return item.state not in rules.asks or acted == item.updated


def comment_html(news: News) -> str:
    """The news as a Plane comment: what happened, the question or reason, the verdicts, the
    cost and the links."""
    e = html.escape
    head = _SAID.get(news.kind, news.kind.value)
    if news.kind == NewsKind.STAGE_DONE:
        head = f"{news.from_stage} done; now {news.stage}"
    parts = [f"<p><strong>orch</strong> · {e(news.task_key)}: {e(head)}</p>"]
    if news.question:
        parts.append(f"<p>{e(news.question)} (checkpoint <code>{e(news.checkpoint)}</code>)</p>")
    if news.reason:
        parts.append(f"<p>{e(news.reason)}</p>")
    if news.verdicts:
        items = "".join(
            f"<li>{'passed' if v.passed else 'failed'}: <code>{e(v.gate)}</code>"
            + (f" — {e(v.reason)}" if v.reason else "")
            + "</li>"
            for v in news.verdicts
        )
        parts.append(f"<ul>{items}</ul>")
    cost = f"cost so far ${news.cost_usd:.2f}"
    if news.kind == NewsKind.STAGE_DONE:
        cost = f"stage cost ${news.stage_cost_usd:.2f}, {cost}"
    parts.append(f"<p>{cost}</p>")
    if news.links:
        links = " · ".join(f'<a href="{e(url)}">{e(label)}</a>' for label, url in news.links)
        parts.append(f"<p>{links}</p>")
    return "".join(parts)
