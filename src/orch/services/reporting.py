"""What happens to a task is written back to the tracker item it came from: its state as the
task moves (the project's `report` map), and a comment for each stage it leaves, each question
it asks and each end it reaches. The outbox calls it once per piece of news (an effect keyed by
the news), and the tracker's own lookups (a state already set, a comment with that key already
there) keep a repeat after a crash from doing anything twice."""

from __future__ import annotations

import html
from collections.abc import Sequence

from orch.domain.errors import OrchError, Unavailable
from orch.domain.news import News, NewsKind
from orch.domain.states import TaskStatus
from orch.ports import Store, Tracker, WorkItem
from orch.services.breaker import Breakers
from orch.services.tracking import ProjectRules

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

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        if news is None or not news.task_key:
            return
        name = f"tracker:{self.tracker.name}"
        wait = self.breakers.admit(name, lambda: None)
        if wait > 0:
            raise OrchError(f"{self.tracker.name} is unavailable; its circuit opens in {wait:.0f}s")
        try:
            self._report(key, news)
        except Unavailable as exc:
            self.breakers.record(name, ok=False, provider_failure=True, reason=str(exc))
            raise
        except BaseException:
            self.breakers.release(name)
            raise
        self.breakers.record(name, ok=True)

    def _report(self, key: str, news: News) -> None:
        link = self.store.link_of(news.task_key)
        if link is None or link.tracker != self.tracker.name:
            return
        rules = self.projects.get(link.project)
        item = self.tracker.item(link.project, link.ref)
        if rules is None or item is None:
            return
        acted = link.acted_on
        if news.kind == NewsKind.WAITING and item.state != rules.stop:
            # the question is asked now: whatever state the item is in is not its answer (an
            # "Approved" left from before), and any change from here on may be. A STOP stays
            # one
            self.store.mark_acted(link.tracker, link.ref, item.updated)
            acted = item.updated
        where = news.stage if news.status == TaskStatus.ACTIVE else news.status
        state = rules.report.get(where)
        if state and may_move(item, rules, acted):
            self.tracker.move(item, state)
        if news.kind in _SAID:
            self.tracker.comment(item, key, comment_html(news))


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
