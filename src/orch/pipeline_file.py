"""Reading a repository's `.orch/pipeline.yaml`: changes to the built-in pipeline.

The file changes the built-in pipeline by stage name: a stage entry inherits every field it does
not set, a stage it does not list stays as built in, and `remove: true` takes one out. With
`replace: true` its `stages` are the whole pipeline instead, in the order given. A pipeline in
which no stage merges lands nothing, so it is refused unless it says `merge: false`.
`checkpoints`, if given, replaces the built-in list. Every error names the file, the line and the
field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orch.domain import pipeline as pl
from orch.domain.errors import OrchError, PipelineError
from orch.domain.gates import PASS_WORDS
from orch.domain.ledger import Budget, unmetered
from orch.domain.prompts import render, sample_context
from orch.domain.states import WORK_STAGES, Stage
from orch.ports import Agent

PIPELINE_PATH = ".orch/pipeline.yaml"

# the stage names a pipeline may list, from the one definition in orch.domain.states
WorkStage = Literal[tuple(s.value for s in WORK_STAGES)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateModel(_Strict):
    name: str
    kind: Literal["artifact", "command", "verdict"]
    path: str = ""
    headings: list[str] = []
    command: str = ""
    timeout_s: float = Field(600.0, gt=0)
    passes: list[str] | None = None  # a verdict gate's pass words

    @model_validator(mode="after")
    def _needs(self) -> GateModel:
        if self.kind == "command" and not self.command:
            raise ValueError("a command gate needs `command`")
        if self.kind in ("artifact", "verdict") and not self.path:
            raise ValueError(f"an {self.kind} gate needs `path`")
        if self.passes is not None:
            if self.kind != "verdict":
                raise ValueError("only a verdict gate takes `passes`")
            words = [" ".join(w.lower().split()) for w in self.passes]
            if not words or not all(words):
                raise ValueError("`passes` lists at least one non-empty verdict")
            self.passes = words
        return self


class BudgetModel(_Strict):
    usd: float | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)

    def budget(self) -> Budget:
        return Budget(self.usd, self.tokens)


class StageModel(_Strict):
    name: WorkStage
    role: str | None = None
    agent: str | None = None
    prompt: str | None = None
    gates: list[GateModel] | None = None
    actions: list[Literal["merge", "deploy:staging", "deploy:production"]] | None = None
    rework_to: WorkStage | None = None
    timeout_s: float | None = Field(None, gt=0)
    stall_s: float | None = Field(None, gt=0)  # absent: the default; `null` turns it off
    instructions: str | None = None
    budget: BudgetModel | None = None
    remove: bool = False  # take the built-in stage out (when the file extends the pipeline)

    @model_validator(mode="after")
    def _removed_alone(self) -> StageModel:
        if self.remove and self.model_fields_set - {"name", "remove"}:
            raise ValueError("a removed stage takes no other field")
        return self


class CheckpointModel(_Strict):
    name: str
    before: WorkStage | None = None
    after: WorkStage | None = None
    reject_to: WorkStage
    question: str = ""
    timeout_s: float | None = Field(None, gt=0)
    on_timeout: Literal["remind", "park"] = "remind"

    @model_validator(mode="after")
    def _one_side(self) -> CheckpointModel:
        if (self.before is None) == (self.after is None):
            raise ValueError("a checkpoint needs exactly one of `before` and `after`")
        return self


class PipelineModel(_Strict):
    # false: `stages` change the built-in stages by name; true: they are the whole pipeline
    replace: bool = False
    # false: the pipeline is meant to land nothing (no stage merges)
    merge: bool = True
    stages: list[StageModel] | None = None
    checkpoints: list[CheckpointModel] | None = None
    max_rework_rounds: int | None = Field(None, ge=0)
    max_attempts: int | None = Field(None, ge=1)
    deadline_s: float | None = Field(None, gt=0)
    budget: BudgetModel | None = None


def parse(
    text: str, source: str = PIPELINE_PATH, agents: Iterable[str] | None = None
) -> pl.Pipeline:
    base = pl.default_pipeline()
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise PipelineError(f"{source}:{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"{source}:1: not valid YAML: {exc}") from exc
    if data is None:
        return base
    if not isinstance(data, dict):
        raise PipelineError(f"{source}:1: the top level must be a mapping")
    try:
        model = PipelineModel.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise PipelineError(f"{source}:{_line(root, loc)}: {_field(loc)}: {err['msg']}") from exc

    def fail(loc: Sequence[str | int], message: str) -> PipelineError:
        return PipelineError(f"{source}:{_line(root, tuple(loc))}: {_field(tuple(loc))}: {message}")

    stages = base.stages
    if model.stages is not None:
        stages = _stages(model, base, fail)
    names = [s.stage for s in stages]
    # where the file sets each stage, for errors about what it set
    entry = {Stage(sm.name): i for i, sm in enumerate(model.stages or ())}
    known_agents = None if agents is None else set(agents)
    for s in stages:
        at: tuple[str | int, ...] = ("stages", entry[s.stage]) if s.stage in entry else ()
        if known_agents is not None and s.agent is not None and s.agent not in known_agents:
            where = (*at, "agent") if at else ("stages",)
            raise fail(where, f"stage {s.stage} needs agent {s.agent!r}, which is not configured")
        if s.rework_to is not None and s.rework_to not in names:
            where = (*at, "rework_to") if at else ("stages",)
            raise fail(where, f"{s.rework_to} is not a stage of this pipeline")
    checkpoints = base.checkpoints
    if model.checkpoints is not None:
        cps = []
        for i, cm in enumerate(model.checkpoints):
            if cm.before is not None:
                before = Stage(cm.before)
            else:
                assert cm.after is not None
                after = Stage(cm.after)
                if after not in names:
                    raise fail(
                        ("checkpoints", i, "after"), f"{after} is not a stage of this pipeline"
                    )
                before = (
                    names[names.index(after) + 1]
                    if names.index(after) + 1 < len(names)
                    else Stage.DONE
                )
                if before == Stage.DONE:
                    raise fail(
                        ("checkpoints", i, "after"), "a checkpoint cannot follow the last stage"
                    )
            for field_name, stage in (("before", before), ("reject_to", Stage(cm.reject_to))):
                if stage not in names:
                    raise fail(
                        ("checkpoints", i, field_name), f"{stage} is not a stage of this pipeline"
                    )
            cps.append(
                pl.Checkpoint(
                    cm.name,
                    before,
                    Stage(cm.reject_to),
                    cm.question,
                    cm.timeout_s,
                    pl.OnTimeout(cm.on_timeout),
                )
            )
        checkpoints = tuple(cps)
    else:
        checkpoints = tuple(c for c in checkpoints if c.before in names and c.reject_to in names)
    if model.merge and not any(pl.Action.MERGE in s.actions for s in stages):
        raise fail(
            ("stages",) if model.stages is not None else (),
            "no stage merges, so a task would end done with nothing landed: give a stage"
            " `actions: [merge]` (the built-in deploy-staging has it), or say `merge: false`"
            " if this pipeline is meant to land nothing",
        )
    try:
        return pl.Pipeline(
            stages=stages,
            checkpoints=checkpoints,
            max_rework_rounds=base.max_rework_rounds
            if model.max_rework_rounds is None
            else model.max_rework_rounds,
            max_attempts=base.max_attempts if model.max_attempts is None else model.max_attempts,
            deadline_s=model.deadline_s,
            budget=model.budget.budget() if model.budget else base.budget,
        )
    except PipelineError as exc:
        raise PipelineError(f"{source}:1: {exc}") from exc


def _stages(model: PipelineModel, base: pl.Pipeline, fail: Any) -> tuple[pl.StageSpec, ...]:
    """The stages the file makes: the built-in ones changed by name, or (with `replace`) its
    own list in its own order."""
    assert model.stages is not None
    defaults = {s.stage: s for s in base.stages}
    entries: dict[Stage, tuple[int, StageModel]] = {}
    for i, sm in enumerate(model.stages):
        stage = Stage(sm.name)
        if stage in entries:
            raise fail(("stages", i, "name"), f"{stage} is listed twice")
        if sm.remove and model.replace:
            raise fail(
                ("stages", i, "remove"),
                "with `replace: true` a stage is left out by not listing it",
            )
        entries[stage] = (i, sm)
    if model.replace:
        order = list(entries)
    else:
        # the built-in order; a listed stage the built-in pipeline lacks goes where the stage
        # vocabulary puts it
        order = [
            s
            for s in WORK_STAGES
            if (s in defaults or s in entries) and not (s in entries and entries[s][1].remove)
        ]
    if not order:
        raise fail(("stages",), "every stage is left out: a pipeline needs at least one")
    names = set(order)
    built: list[pl.StageSpec] = []
    for stage in order:
        spec = defaults.get(stage)
        if stage not in entries:
            assert spec is not None
            if spec.rework_to is not None and spec.rework_to not in names:
                spec = replace(spec, rework_to=None)
            built.append(spec)
            continue
        i, sm = entries[stage]
        spec = spec or pl.StageSpec(stage, sm.role or sm.name, None, "")
        spec = replace(spec, **_changes(sm, spec, names))
        _check_templates(spec, ("stages", i), fail)
        built.append(spec)
    return tuple(built)


def _changes(sm: StageModel, spec: pl.StageSpec, names: set[Stage]) -> dict[str, Any]:
    """The fields of `spec` that the entry `sm` sets; an inherited rework target that is not a
    stage of the pipeline is dropped."""
    changes: dict[str, Any] = {}
    if sm.role is not None:
        changes["role"] = sm.role
    if "agent" in sm.model_fields_set:
        changes["agent"] = sm.agent
    if sm.prompt is not None:
        changes["prompt"] = sm.prompt
    if sm.gates is not None:
        changes["gates"] = tuple(
            pl.GateSpec(
                g.name,
                pl.GateKind(g.kind),
                g.path,
                tuple(g.headings),
                g.command,
                g.timeout_s,
                tuple(g.passes) if g.passes is not None else PASS_WORDS,
            )
            for g in sm.gates
        )
    if sm.actions is not None:
        changes["actions"] = tuple(pl.Action(a) for a in sm.actions)
    if "rework_to" in sm.model_fields_set:
        changes["rework_to"] = Stage(sm.rework_to) if sm.rework_to else None
    elif spec.rework_to is not None and spec.rework_to not in names:
        changes["rework_to"] = None
    if sm.timeout_s is not None:
        changes["timeout_s"] = sm.timeout_s
    if "stall_s" in sm.model_fields_set:
        changes["stall_s"] = sm.stall_s
    if sm.instructions is not None:
        changes["instructions"] = sm.instructions
    if sm.budget is not None:
        changes["budget"] = sm.budget.budget()
    return changes


def _check_templates(spec: pl.StageSpec, at: tuple[str | int, ...], fail: Any) -> None:
    ctx = sample_context()
    checks: list[tuple[tuple[str | int, ...], str]] = [
        ((*at, "prompt"), spec.prompt),
        ((*at, "instructions"), spec.instructions),
    ]
    for j, g in enumerate(spec.gates):
        checks.append(((*at, "gates", j, "path"), g.path))
        checks.append(((*at, "gates", j, "command"), g.command))
    for loc, template in checks:
        try:
            render(template, ctx)
        except OrchError as exc:
            raise fail(loc, str(exc)) from exc


def schema_problems(text: str, source: str) -> list[str]:
    """Every problem the schema finds in a pipeline file, each naming the file, the line and
    the field (`parse` stops at the first): what a person fixing the file wants to see."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []  # parse's own message names the line
    if not isinstance(data, dict):
        return []
    try:
        PipelineModel.model_validate(data)
    except ValidationError as exc:
        return [
            f"{source}:{_line(root, tuple(err['loc']))}: {_field(tuple(err['loc']))}: {err['msg']}"
            for err in exc.errors()
        ]
    return []


def budget_problems(pipeline: pl.Pipeline, agents: Mapping[str, Agent], source: str) -> list[str]:
    """A budget must be in a unit its stage's agent reports: one it cannot be held to would
    look like a limit and be none."""
    out = []
    for spec in pipeline.stages:
        agent = agents.get(spec.agent) if spec.agent is not None else None
        if agent is None:
            continue
        for budget, whose in ((spec.budget, f"stage {spec.stage}"), (pipeline.budget, "task")):
            units = unmetered(budget, agent.meters)
            if units:
                out.append(
                    f"{source}: the {whose} budget is in {' and '.join(units)}, which agent"
                    f" {agent.name!r} of stage {spec.stage} does not report"
                    + (" (give it `prices`)" if units == ["usd"] and agent.meters else "")
                )
    return out


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest YAML node that `loc` reaches."""
    node = root
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    nxt, line = v, k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line
