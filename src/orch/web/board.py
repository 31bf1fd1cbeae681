"""What the dashboard shows, as plain data for its templates: the board's columns, the spend
chart, a task's timeline. Kept apart from the routes so it is tested without a browser."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from orch.domain.ledger import Usage
from orch.domain.model import Task
from orch.domain.states import WORK_STAGES, TaskStatus
from orch.services.views import task_summary
from orch.services.waits import Waits

DAY_S = 86400.0
CHART_DAYS = 14
CHART_HEIGHT = 120  # the bars' drawing height, in SVG units
RECENT_ENDED = 20  # done and cancelled tasks shown on the board


@dataclass
class Column:
    name: str
    title: str
    cards: list[dict[str, Any]] = field(default_factory=list)


def one_line(text: str | None, limit: int = 160) -> str:
    """A reason as a list shows it: its first line, cut with an ellipsis."""
    lines = (text or "").strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > limit:
        return first[: limit - 1].rstrip() + "…"
    return first + (" …" if len(lines) > 1 else "")


def columns(tasks: list[Task], waits: Waits | None = None) -> list[Column]:
    """A column per work stage for the tasks at work there, then the tasks waiting for a
    person, the parked ones (dead letters), and the latest done and cancelled. With `waits`, an
    active card that is not moving says what holds it up."""
    by_stage = {
        s.value: Column(s.value, s.value.replace("-", " ").capitalize()) for s in WORK_STAGES
    }
    waiting = Column("waiting", "Waiting for a person")
    parked = Column("parked", "Parked")
    done = Column("done", "Done")
    cancelled = Column("cancelled", "Cancelled")
    for task in tasks:
        card = {**task_summary(task, waits), "reason_line": one_line(task.status_reason)}
        if task.status == TaskStatus.ACTIVE and task.stage.value in by_stage:
            by_stage[task.stage.value].cards.append(card)
        elif task.status == TaskStatus.WAITING:
            waiting.cards.append(card)
        elif task.status == TaskStatus.NEEDS_OPERATOR:
            parked.cards.append(card)
        elif task.status == TaskStatus.DONE and len(done.cards) < RECENT_ENDED:
            done.cards.append(card)
        elif task.status == TaskStatus.CANCELLED and len(cancelled.cards) < RECENT_ENDED:
            cancelled.cards.append(card)
    return [*by_stage.values(), waiting, parked, cancelled, done]


def day_start(now: float) -> float:
    return now // DAY_S * DAY_S


def chart_since(now: float) -> float:
    return day_start(now) - (CHART_DAYS - 1) * DAY_S


def spend_chart(spent: dict[float, Usage], now: float) -> list[dict[str, Any]]:
    """One bar a day for the last CHART_DAYS days (UTC), the tallest CHART_HEIGHT high."""
    first = chart_since(now)
    days = [first + i * DAY_S for i in range(CHART_DAYS)]
    used = [spent.get(day, Usage()) for day in days]
    dollars = [u.cost_usd for u in used]
    tokens = [u.tokens_in + u.tokens_out for u in used]
    top = max(dollars) or 1.0
    return [
        {
            "label": datetime.datetime.fromtimestamp(day, datetime.UTC).strftime("%b %d"),
            "usd": round(usd, 4),
            "tokens": n,
            "height": round(CHART_HEIGHT * usd / top, 1),
        }
        for day, usd, n in zip(days, dollars, tokens, strict=True)
    ]


def timeline(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task page's stage rows, each with its share of the task's whole time, in percent."""
    total = sum(row["active_s"] + row["waiting_s"] for row in stages) or 1.0
    return [
        {
            **row,
            "active_pct": round(100 * row["active_s"] / total, 1),
            "waiting_pct": round(100 * row["waiting_s"] / total, 1),
        }
        for row in stages
    ]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
