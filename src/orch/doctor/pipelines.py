"""A pipeline file checked the way orch reads it, reporting every problem the schema finds
rather than only the first one, which is what a person fixing the file before a push wants."""

from __future__ import annotations

from collections.abc import Mapping

from orch.doctor.report import count
from orch.domain import pipeline as pl
from orch.domain.errors import PipelineError
from orch.domain.ledger import Budget
from orch.pipeline_file import budget_problems, parse, schema_problems
from orch.ports import Agent


def problems(
    text: str,
    source: str,
    agent_names: list[str] | None = None,
    agents: Mapping[str, Agent] | None = None,
) -> tuple[pl.Pipeline | None, list[str]]:
    """The pipeline `text` describes, or the problems that keep orch from reading it, each
    naming the file, the line and the field. `agent_names` are the agents a stage may name
    (None: any); `agents`, when given, are held to the budgets the file sets."""
    try:
        pipeline = parse(text, source, agent_names)
    except PipelineError as exc:
        return None, schema_problems(text, source) or [str(exc)]
    if agents is not None:
        unusable = budget_problems(pipeline, agents, source)
        if unusable:
            return None, unusable
    return pipeline, []


def summary(pipeline: pl.Pipeline) -> str:
    names = [s.stage.value for s in pipeline.stages]
    return f"{count(len(names), 'stage', 'stages')}: {', '.join(names)}"


def describe(pipeline: pl.Pipeline) -> list[str]:
    """The pipeline in force, a line per stage and per checkpoint in the order a task meets
    them, then its limits: what a person checks a file against before pushing it."""
    lines = []
    for spec in pipeline.stages:
        cp = pipeline.checkpoint_before(spec.stage)
        if cp is not None:
            lines.append(f"  wait {cp.name}: a person decides; rejected: back to {cp.reject_to}")
        parts = [f"agent {spec.agent}" if spec.agent else "no agent"]
        if spec.gates:
            parts.append("gates " + ", ".join(f"{g.name} ({g.kind})" for g in spec.gates))
        if spec.actions:
            parts.append("then " + ", ".join(a.value for a in spec.actions))
        if spec.rework_to is not None:
            parts.append(f"failed: back to {spec.rework_to}")
        elif spec.gates:
            parts.append("failed: retry")
        if not spec.budget.unlimited:
            parts.append(f"budget {_budget(spec.budget)}")
        lines.append(f"  {spec.stage}: {'; '.join(parts)}")
    limits = [
        f"max_attempts {pipeline.max_attempts}",
        f"max_rework_rounds {pipeline.max_rework_rounds}",
    ]
    if pipeline.deadline_s is not None:
        limits.append(f"deadline {pipeline.deadline_s:g}s of working time")
    if not pipeline.budget.unlimited:
        limits.append(f"task budget {_budget(pipeline.budget)}")
    if not any(pl.Action.MERGE in s.actions for s in pipeline.stages):
        limits.append("merges nothing (merge: false)")
    lines.append("  " + "; ".join(limits))
    return lines


def _budget(budget: Budget) -> str:
    parts = []
    if budget.usd is not None:
        parts.append(f"${budget.usd:g}")
    if budget.tokens is not None:
        parts.append(f"{budget.tokens} tokens")
    return " and ".join(parts)


def builtin_problems(agent_names: list[str]) -> list[str]:
    """The built-in pipeline's stages name agents by name: each must be configured."""
    needed = {s.agent for s in pl.default_pipeline().stages if s.agent}
    missing = sorted(needed - set(agent_names))
    if missing:
        return [f"the built-in pipeline needs agent(s) {', '.join(missing)}"]
    return []
