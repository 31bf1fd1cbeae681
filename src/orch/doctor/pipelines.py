"""A pipeline file checked the way orch reads it, reporting every problem the schema finds
rather than only the first one, which is what a person fixing the file before a push wants."""

from __future__ import annotations

from collections.abc import Mapping

from orch.doctor.report import count
from orch.domain import pipeline as pl
from orch.domain.errors import PipelineError
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


def builtin_problems(agent_names: list[str]) -> list[str]:
    """The built-in pipeline's stages name agents by name: each must be configured."""
    needed = {s.agent for s in pl.default_pipeline().stages if s.agent}
    missing = sorted(needed - set(agent_names))
    if missing:
        return [f"the built-in pipeline needs agent(s) {', '.join(missing)}"]
    return []
