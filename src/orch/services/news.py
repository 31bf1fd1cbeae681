"""What a decision about a task tells people, as News (orch.domain.news)."""

from __future__ import annotations

from dataclasses import replace

from orch.domain import pipeline as pl
from orch.domain.errors import PipelineError
from orch.domain.model import Task
from orch.domain.news import News, NewsKind, Verdict
from orch.domain.pipeline import Decision
from orch.domain.states import TaskStatus
from orch.ports import Store


def tell(store: Store, task: Task, decision: Decision) -> News | None:
    """The news in `decision` for `task` as it is before it: a wait, its end, a parking, or a
    stage left for the next one; None if it is none of those."""
    base = News(
        NewsKind.ALERT,
        "",
        task_key=task.key,
        title=task.title,
        repo=task.repo,
        stage=decision.stage.value,
        status=decision.status.value,
        reason=decision.reason,
        cost_usd=task.cost_usd,
    )
    if decision.status == TaskStatus.WAITING:
        return replace(
            base,
            kind=NewsKind.WAITING,
            text=f"{task.key} waits for {decision.waiting_for} before {decision.stage}",
            checkpoint=decision.waiting_for or "",
            question=_question(task, decision.waiting_for or ""),
        )
    if decision.status == TaskStatus.DONE:
        return replace(base, kind=NewsKind.DONE, text=f"{task.key} is done: {task.title}")
    if decision.status == TaskStatus.NEEDS_OPERATOR:
        text = f"{task.key} needs an operator: {decision.reason}"
        return replace(base, kind=NewsKind.PARKED, text=text)
    if decision.status == TaskStatus.CANCELLED:
        text = f"{task.key} is cancelled: {decision.reason}"
        return replace(base, kind=NewsKind.CANCELLED, text=text)
    if decision.stage == task.stage:
        return None
    verdicts = tuple(
        Verdict(r.gate, r.passed, r.reason)
        for r in store.gate_records(task.id)
        if r.version == task.version
    )
    spent = store.spending(task.id).get(task.stage)
    moved = "went back" if decision.rework else "went on"
    return replace(
        base,
        kind=NewsKind.STAGE_DONE,
        text=f"{task.key} left {task.stage} and {moved} to {decision.stage}: {decision.reason}",
        from_stage=task.stage.value,
        verdicts=verdicts,
        stage_cost_usd=spent.cost_usd if spent is not None else 0.0,
    )


def about(task: Task, kind: NewsKind, text: str) -> News:
    """News of `kind` about the task as it is."""
    return News(
        kind,
        text,
        task_key=task.key,
        title=task.title,
        repo=task.repo,
        stage=task.stage.value,
        status=task.status.value,
        cost_usd=task.cost_usd,
    )


def _question(task: Task, checkpoint: str) -> str:
    try:
        return pl.from_dict(task.pipeline).checkpoint(checkpoint).question
    except (KeyError, TypeError, ValueError, PipelineError):
        return ""
