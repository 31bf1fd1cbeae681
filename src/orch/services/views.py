"""Read models: what the CLI, the API and the demo show of a task. One shape for all three."""

from __future__ import annotations

from typing import Any

from orch.domain import pipeline as pl
from orch.domain.ledger import Budget, Usage, budgets_of
from orch.domain.model import Effect, Task, Transition
from orch.domain.periods import OverTime
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectKind,
    EffectState,
    EventKind,
    TaskStatus,
    is_terminal,
)
from orch.ports import StateSummary, Store
from orch.services.waits import Waits


def stage_timings(
    transitions: list[Transition], now: float, terminal: bool
) -> list[dict[str, Any]]:
    """Seconds spent per stage, split into working and waiting, in the order first entered."""
    out: dict[str, dict[str, Any]] = {}
    for i, tr in enumerate(transitions):
        end = transitions[i + 1].at if i + 1 < len(transitions) else (tr.at if terminal else now)
        row = out.setdefault(
            tr.to_stage.value,
            {
                "stage": tr.to_stage.value,
                "entered_at": tr.at,
                "left_at": None,
                "active_s": 0.0,
                "waiting_s": 0.0,
                "visits": 0,
            },
        )
        if i == 0 or transitions[i - 1].to_stage != tr.to_stage:
            row["visits"] += 1
        span = max(0.0, end - tr.at)
        if tr.to_status == TaskStatus.WAITING:
            row["waiting_s"] += span
        else:
            row["active_s"] += span
        if i + 1 < len(transitions) and transitions[i + 1].to_stage != tr.to_stage:
            row["left_at"] = end
    for row in out.values():
        row["active_s"] = round(row["active_s"], 3)
        row["waiting_s"] = round(row["waiting_s"], 3)
    return list(out.values())


def task_summary(task: Task, waits: Waits | None = None) -> dict[str, Any]:
    """A task's row; with `waits`, what an active task that is not moving waits for."""
    held_up = waits.why(task) if waits is not None else None
    return {
        "key": task.key,
        "id": task.id,
        "repo": task.repo,
        "title": task.title,
        "stage": task.stage.value,
        "status": task.status.value,
        "waiting_for": task.waiting_for,
        "version": task.version,
        "branch": task.branch,
        "reason": task.status_reason,
        # an active task that is not moving: what it waits for (kind, text, until)
        "held_up": held_up.as_dict() if held_up is not None else None,
        "rework_rounds": task.rework_rounds,
        "cost": _usage(task.spent),
        "budgets": task.budgets,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    }


def task_detail(
    store: Store,
    task: Task,
    waits: Waits | None = None,
    over: tuple[OverTime, ...] = (),
) -> dict[str, Any]:
    """A task in full; `over`, the budgets over time of its repository and of all."""
    transitions = store.transitions(task.id)
    try:
        stage_names = [s["stage"] for s in task.pipeline["stages"]]
        agents = {s["stage"]: s.get("agent") for s in task.pipeline["stages"]}
    except (KeyError, TypeError):
        stage_names, agents = [], {}  # an unreadable snapshot still shows its history
    stages = stage_timings(transitions, store.now(), is_terminal(task.status))
    runs = store.runs(task.id)
    effects = store.effects(task.id)
    spent: dict[str, Usage] = {}
    for r in runs:
        if r.accounted_at is not None:  # one in flight shows in `runs` what it spent so far
            spent[r.stage.value] = spent.get(r.stage.value, Usage()) + r.usage
    for row in stages:
        row["agent"] = agents.get(row["stage"])
        row["usage"] = _usage(spent.get(row["stage"], Usage()))
    return {
        **task_summary(task, waits or Waits(store)),
        "feedback": task.feedback,
        "pipeline": stage_names,
        "stages": stages,
        "gates": [
            {
                "stage": g.stage.value,
                "gate": g.gate,
                "version": g.version,
                "head_sha": g.head_sha,
                "passed": g.passed,
                "reason": g.reason,
                "at": g.at,
            }
            for g in store.gate_records(task.id)
        ],
        "effects": [
            {
                "key": e.key,
                "kind": e.kind,
                "state": e.state.value,
                "precondition": e.precondition,
                "result": e.result,
                "created_at": e.created_at,
                "updated_at": e.updated_at,
            }
            for e in effects
        ],
        "deploys": deploys(effects),
        "runs": [
            {
                "stage": r.stage.value,
                "attempt": r.attempt,
                "agent": r.agent,
                "pid": r.pid,
                "exit_code": r.exit_code,
                "outcome": r.outcome,
                "log": r.log_path,
                "started_at": r.started_at,
                "ended_at": r.ended_at,
                "usage": _usage(r.usage),
                # where its tokens and dollars came from: the provider (read by orch's proxy),
                # the agent's own account, or orch's estimate from the price table
                "usage_from": r.usage_from.as_dict() if r.usage_from else None,
                "session": r.session,
                "detail": r.detail,
                "tools": r.tools,
            }
            for r in runs
        ],
        "ledger": {**_ledger(task, spent), "over_time": over_time_view(over)},
        "cancel": _cancel_view(task, store),
        "events": [
            {
                "kind": e.kind,
                "actor": e.actor,
                "payload": e.payload,
                "created_at": e.created_at,
                "processed_at": e.processed_at,
            }
            for e in store.events(task.id)
        ],
        "history": [
            {
                "version": t.version,
                "from": {"stage": t.from_stage.value, "status": t.from_status.value},
                "to": {"stage": t.to_stage.value, "status": t.to_status.value},
                "actor": t.actor,
                "reason": t.reason,
                "at": t.at,
            }
            for t in transitions
        ],
    }


def _cancel_view(task: Task, store: Store) -> dict[str, Any] | None:
    """A STOP not yet applied, and the effects in flight it waits for."""
    if task.cancel_requested_at is None or is_terminal(task.status):
        return None
    stops = [e for e in store.events(task.id) if e.kind == EventKind.STOP]
    return {
        "requested_at": task.cancel_requested_at,
        "actor": stops[0].actor if stops else "",
        "reason": str(stops[0].payload.get("reason", "")) if stops else "",
        "deferred_by": [
            e.key
            for e in store.effects(task.id)
            if e.state in UNRESOLVED_EFFECT_STATES and e.kind != EffectKind.NOTIFY
        ],
    }


def state_view(
    summary: StateSummary,
    circuits: dict[str, dict[str, object]] | None = None,
    over: tuple[OverTime, ...] = (),
) -> dict[str, Any]:
    return {
        # per agent, and the forge's: an outage opens its circuit and new attempts wait
        "circuits": circuits or {},
        # each budget over time, with what its period spent so far
        "budgets": over_time_view(over),
        "tasks": {"by_stage": summary.by_stage, "by_status": summary.by_status},
        "running": summary.running,
        "recent_transitions": summary.recent,
        "cost": _usage(summary.spent),
        "cost_by_repo": {repo: _usage(u) for repo, u in sorted(summary.spent_by_repo.items())},
    }


def over_time_view(over: tuple[OverTime, ...]) -> list[dict[str, Any]]:
    return [
        {
            "period": o.period.value,
            "repo": o.repo or None,  # None: all repositories together
            "scope": o.scope,
            "budget": o.budget.as_dict(),
            "spent": _usage(o.spent),
            "resets_at": o.resets_at,
            "spent_up": bool(o.budget.exhausted(o.spent)),
        }
        for o in over
    ]


def _usage(u: Usage) -> dict[str, Any]:
    """Tokens and dollars as the API shows them: `usd` rounded to a millionth of a dollar."""
    d = u.as_dict()
    return {"usd": d.pop("cost_usd"), **d}


def _ledger(task: Task, by_stage: dict[str, Usage]) -> dict[str, Any]:
    """Spending per stage and in all, against the budgets that hold for the task."""
    try:
        pipeline = pl.from_dict(task.pipeline)
    except (KeyError, TypeError, ValueError):
        return {"stages": {}, "task": {"spent": _usage(task.spent), "budget": None}}
    stages = {}
    for spec in pipeline.stages:
        stage_budget, task_budget = budgets_of(
            task.budgets, spec.stage.value, spec.budget, pipeline.budget
        )
        if spec.stage.value in by_stage or not stage_budget.unlimited:
            stages[spec.stage.value] = {
                "spent": _usage(by_stage.get(spec.stage.value, Usage())),
                "budget": None if stage_budget.unlimited else stage_budget.as_dict(),
            }
    _, task_budget = budgets_of(task.budgets, "", Budget(), pipeline.budget)
    return {
        "stages": stages,
        "task": {
            "spent": _usage(task.spent),
            "budget": None if task_budget.unlimited else task_budget.as_dict(),
        },
    }


_DEPLOY_OUTCOMES: dict[tuple[str, EffectState], str] = {
    (EffectKind.DEPLOY, EffectState.SUCCEEDED): "deployed",
    (EffectKind.DEPLOY, EffectState.FAILED): "failed",
    (EffectKind.DEPLOY, EffectState.INITIATED): "in flight",
    (EffectKind.DEPLOY, EffectState.UNKNOWN): "unknown",
    (EffectKind.SUPERSEDED, EffectState.SUCCEEDED): "superseded",
    (EffectKind.ROLLBACK, EffectState.SUCCEEDED): "rolled back",
    (EffectKind.ROLLBACK, EffectState.FAILED): "rollback failed",
    (EffectKind.ROLLBACK, EffectState.INITIATED): "rolling back",
    (EffectKind.ROLLBACK, EffectState.UNKNOWN): "rollback unknown",
}


def deploys(effects: list[Effect]) -> list[dict[str, Any]]:
    """What each deploy of the task did to its target: deployed, superseded by a newer release
    the target already ran, failed its check, rolled back (to `release`), in order."""
    out = []
    for e in effects:
        kind, _, target = e.kind.partition(":")
        outcome = _DEPLOY_OUTCOMES.get((kind, e.state))
        if outcome is None or (kind == EffectKind.DEPLOY and e.result.get("superseded_by")):
            continue  # a deploy found superseded once it held the slot: its skip tells it
        if outcome == "deployed" and e.result.get("check") == "failed":
            outcome = "check failed"
        out.append(
            {
                "target": target,
                "release": e.precondition,
                "outcome": outcome,
                "superseded_by": e.result.get("superseded_by"),
                "rolled_back_from": e.result.get("rolled_back"),
                "at": e.updated_at,
            }
        )
    return out
