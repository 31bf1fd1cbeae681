"""The pipeline as data, and the pure decisions taken on it.

A pipeline orders a subset of the fixed stage vocabulary, and says per stage which agent runs with
which prompt, which gates must pass, which actions (merge, deploy) follow, and where a failed gate
sends the task. Checkpoints are waits for a person before entering a stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from orch.domain.default_prompts import INSTRUCTIONS, PROMPTS, WORK
from orch.domain.errors import PipelineError
from orch.domain.gates import PASS_WORDS
from orch.domain.ledger import NO_BUDGET, Budget
from orch.domain.states import Stage, TaskStatus


class GateKind(StrEnum):
    ARTIFACT = "artifact"
    COMMAND = "command"
    VERDICT = "verdict"


class Action(StrEnum):
    MERGE = "merge"
    DEPLOY_STAGING = "deploy:staging"
    DEPLOY_PRODUCTION = "deploy:production"


@dataclass(frozen=True)
class GateSpec:
    name: str
    kind: GateKind
    path: str = ""  # template; artifact and verdict gates read this file
    headings: tuple[str, ...] = ()
    command: str = ""  # template; run by the shell in the worktree
    timeout_s: float = 600.0
    passes: tuple[str, ...] = PASS_WORDS  # a verdict gate: the verdicts that pass it


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    role: str
    agent: str | None  # a configured agent's name; None: the stage runs no agent
    prompt: str  # template
    gates: tuple[GateSpec, ...] = ()
    actions: tuple[Action, ...] = ()
    rework_to: Stage | None = None  # where a failed gate sends the task; None retries the stage
    timeout_s: float = 1800.0  # one attempt's wall-clock limit
    stall_s: float | None = 600.0  # an agent silent this long is stalled; None: never
    budget: Budget = NO_BUDGET  # what the stage's runs may spend in all, across attempts
    instructions: str = ""  # template; the role's standing instructions (a system prompt)


INTEGRITY = "confirm-integrity"  # the wait before a strict repository merges a flagged change


class OnTimeout(StrEnum):
    REMIND = "remind"  # notify again, and keep waiting
    PARK = "park"  # needs_operator


@dataclass(frozen=True)
class Checkpoint:
    name: str
    before: Stage
    reject_to: Stage
    question: str = ""
    timeout_s: float | None = None
    on_timeout: OnTimeout = OnTimeout.REMIND


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[StageSpec, ...]
    checkpoints: tuple[Checkpoint, ...] = ()
    max_rework_rounds: int = 3
    max_attempts: int = 3
    # working time a task may take, human waits excluded; None: no deadline
    deadline_s: float | None = None
    budget: Budget = NO_BUDGET  # what all of a task's agent runs may spend

    def __post_init__(self) -> None:
        if not self.stages:
            raise PipelineError("a pipeline needs at least one stage")
        names = [s.stage for s in self.stages]
        if len(set(names)) != len(names):
            raise PipelineError("a stage appears twice in the pipeline")
        for s in self.stages:
            if s.stage in (Stage.DONE, Stage.CANCELLED):
                raise PipelineError(f"{s.stage} is terminal and cannot be a pipeline stage")
            if s.rework_to is not None and s.rework_to not in names:
                raise PipelineError(f"stage {s.stage} reworks to {s.rework_to}, not in pipeline")
        for c in self.checkpoints:
            if c.before not in names or c.reject_to not in names:
                raise PipelineError(f"checkpoint {c.name} names a stage that is not in pipeline")

    @property
    def stage_names(self) -> tuple[Stage, ...]:
        return tuple(s.stage for s in self.stages)

    def spec(self, stage: Stage) -> StageSpec:
        for s in self.stages:
            if s.stage == stage:
                return s
        raise PipelineError(f"stage {stage} is not in this pipeline")

    def checkpoint_before(self, stage: Stage) -> Checkpoint | None:
        for c in self.checkpoints:
            if c.before == stage:
                return c
        return None

    def checkpoint(self, name: str) -> Checkpoint:
        for c in self.checkpoints:
            if c.name == name:
                return c
        merging = [s for s in self.stages if Action.MERGE in s.actions]
        if name == INTEGRITY and merging:
            # a repository with `protect: strict` waits here when a change weakens the checks
            return Checkpoint(
                INTEGRITY,
                before=merging[0].stage,
                reject_to=merging[0].rework_to or merging[0].stage,
                question="This change weakens the checks (see its integrity gate). Merge it?",
            )
        raise PipelineError(f"no checkpoint named {name}")

    def next_stage(self, stage: Stage) -> Stage:
        names = self.stage_names
        i = names.index(stage)
        return names[i + 1] if i + 1 < len(names) else Stage.DONE

    def edges(self) -> frozenset[tuple[Stage, Stage]]:
        """Every (from, to) stage pair a transition may take; (s, s) covers status changes."""
        names = self.stage_names
        out: set[tuple[Stage, Stage]] = set()
        for s in self.stages:
            out.add((s.stage, s.stage))
            out.add((s.stage, self.next_stage(s.stage)))
            out.add((s.stage, Stage.CANCELLED))
            out.add((s.stage, Stage.DONE))  # its pull request merged by hand, at any stage
            if s.rework_to is not None:
                out.add((s.stage, s.rework_to))
        for c in self.checkpoints:
            out.add((c.before, c.reject_to))
        # an operator's retry may restart a task from its stage or any stage before it
        for i, current in enumerate(names):
            for earlier in names[: i + 1]:
                out.add((current, earlier))
        out.add((Stage.CANCELLED, Stage.CANCELLED))
        # a task is created "into" its first stage
        out.add((names[0], names[0]))
        return frozenset(out)


class Move(StrEnum):
    ADVANCE = "advance"  # write a new stage/status
    RETRY = "retry"  # run the same stage again as a new attempt; no stage write
    PARK = "park"  # needs_operator


@dataclass(frozen=True)
class Decision:
    move: Move
    stage: Stage
    status: TaskStatus
    reason: str
    waiting_for: str | None = None
    feedback: str = ""
    rework: bool = False
    timer_s: float | None = None  # a waiting task's checkpoint timeout
    reset_rounds: bool = False  # an operator's retry starts the rework count again
    budgets: dict[str, Any] | None = None  # an operator's new budget overrides, if any


def _enter(pipeline: Pipeline, stage: Stage, reason: str, feedback: str = "") -> Decision:
    if stage == Stage.DONE:
        return Decision(Move.ADVANCE, Stage.DONE, TaskStatus.DONE, reason)
    cp = pipeline.checkpoint_before(stage)
    if cp is not None:
        return Decision(
            Move.ADVANCE,
            stage,
            TaskStatus.WAITING,
            reason,
            waiting_for=cp.name,
            feedback=feedback,
            timer_s=cp.timeout_s,
        )
    return Decision(Move.ADVANCE, stage, TaskStatus.ACTIVE, reason, feedback=feedback)


def start(pipeline: Pipeline) -> Decision:
    return _enter(pipeline, pipeline.stages[0].stage, "ticket filed")


def after_success(pipeline: Pipeline, stage: Stage) -> Decision:
    return _enter(pipeline, pipeline.next_stage(stage), f"{stage} passed its gates")


def after_gate_failure(
    pipeline: Pipeline, stage: Stage, rework_rounds: int, attempt: int, reason: str
) -> Decision:
    spec = pipeline.spec(stage)
    if spec.rework_to is not None:
        if rework_rounds >= pipeline.max_rework_rounds:
            return Decision(
                Move.PARK,
                stage,
                TaskStatus.NEEDS_OPERATOR,
                f"{pipeline.max_rework_rounds} rework rounds used; last: {reason}",
            )
        return Decision(
            Move.ADVANCE,
            spec.rework_to,
            TaskStatus.ACTIVE,
            f"{stage} failed: {reason}",
            feedback=reason,
            rework=True,
        )
    return after_attempt_failure(pipeline, stage, attempt, reason)


def after_merge_failure(
    pipeline: Pipeline, stage: Stage, rework_rounds: int, reason: str
) -> Decision:
    """The change could not land: it conflicts, its merge candidate fails the tests, its head
    moved, or it holds conflict markers. It goes back to be reworked as a failed gate sends it;
    it is not simply tried again, since the same change would fail the same way."""
    return after_gate_failure(pipeline, stage, rework_rounds, pipeline.max_attempts, reason)


def after_attempt_failure(pipeline: Pipeline, stage: Stage, attempt: int, reason: str) -> Decision:
    if attempt >= pipeline.max_attempts:
        return Decision(
            Move.PARK,
            stage,
            TaskStatus.NEEDS_OPERATOR,
            f"{attempt} attempts failed; last: {reason}",
        )
    return Decision(Move.RETRY, stage, TaskStatus.ACTIVE, reason, feedback=reason)


def on_approve(pipeline: Pipeline, stage: Stage, checkpoint: str, actor: str) -> Decision:
    pipeline.checkpoint(checkpoint)
    return Decision(Move.ADVANCE, stage, TaskStatus.ACTIVE, f"{checkpoint} approved by {actor}")


def on_reject(
    pipeline: Pipeline, checkpoint: str, actor: str, comment: str, rework_rounds: int
) -> Decision:
    cp = pipeline.checkpoint(checkpoint)
    if rework_rounds >= pipeline.max_rework_rounds:
        return Decision(
            Move.PARK,
            cp.before,
            TaskStatus.NEEDS_OPERATOR,
            f"{checkpoint} rejected by {actor} after {rework_rounds} rework rounds",
        )
    return Decision(
        Move.ADVANCE,
        cp.reject_to,
        TaskStatus.ACTIVE,
        f"{checkpoint} rejected by {actor}" + (f": {comment}" if comment else ""),
        feedback=comment,
        rework=True,
    )


def on_reaction(
    pipeline: Pipeline,
    stage: Stage,
    waiting_for: str | None,
    rework_rounds: int,
    source: str,
    feedback: str,
) -> Decision | None:
    """What the forge's reaction to the task's pull request decides (its own CI failed, or a
    reviewer asked for changes): the task goes back as a rejection sends it from a wait, or a
    failed gate from its stage, with the reaction as feedback; parked once its rework rounds
    are used. None where the stage has nowhere to go back to (it has not written code yet)."""
    if waiting_for is not None:
        cp = pipeline.checkpoint(waiting_for)
        target, at = cp.reject_to, cp.before
    else:
        spec = pipeline.spec(stage)
        if spec.rework_to is None:
            return None
        target, at = spec.rework_to, stage
    said = f"{source}: {feedback[:300]}"
    if rework_rounds >= pipeline.max_rework_rounds:
        return Decision(
            Move.PARK,
            at,
            TaskStatus.NEEDS_OPERATOR,
            f"{pipeline.max_rework_rounds} rework rounds used; last: {said}",
        )
    return Decision(Move.ADVANCE, target, TaskStatus.ACTIVE, said, feedback=feedback, rework=True)


MERGED_BY_HAND = "its pull request was merged by hand"  # how a task ended so says why


def on_landed(stage: Stage, actor: str, merge_sha: str) -> Decision:
    """A person merged the task's pull request by hand: the change is theirs to have landed, and
    the task ends done where it is, with nothing merged again (nor deployed by orch)."""
    why = f"{MERGED_BY_HAND} by {actor}" + (f" as {merge_sha[:12]}" if merge_sha else "")
    return Decision(Move.ADVANCE, Stage.DONE, TaskStatus.DONE, why)


def on_stop(stage: Stage, actor: str, reason: str) -> Decision:
    why = f"stopped by {actor}" + (f": {reason}" if reason else "")
    return Decision(Move.ADVANCE, Stage.CANCELLED, TaskStatus.CANCELLED, why)


def on_retry(pipeline: Pipeline, current: Stage, stage: Stage, actor: str) -> Decision:
    """An operator's retry from `stage`: the current stage or one before it, entered the usual
    way, so a checkpoint before it is waited for again."""
    names = pipeline.stage_names
    if stage not in names or current not in names or names.index(stage) > names.index(current):
        raise PipelineError(f"a retry goes back to {current} or a stage before it, not {stage}")
    entered = _enter(pipeline, stage, f"retry from {stage} requested by {actor}")
    return replace(entered, reset_rounds=True)


def parked(stage: Stage, reason: str) -> Decision:
    """The task stops where it is and waits for an operator, with the reason."""
    return Decision(Move.PARK, stage, TaskStatus.NEEDS_OPERATOR, reason)


def deadline_passed(pipeline: Pipeline, stage: Stage) -> Decision:
    """The task used its working time (time it held a repository slot)."""
    return parked(stage, f"deadline: the task used its {pipeline.deadline_s:g}s of working time")


def held_for_integrity(stage: Stage, flagged: Sequence[str]) -> Decision:
    """A change that weakens the checks, under `protect: strict`, waits for a person to confirm
    it before it merges."""
    return Decision(
        Move.ADVANCE,
        stage,
        TaskStatus.WAITING,
        f"the change weakens the checks ({'; '.join(flagged)}); a person must confirm it",
        waiting_for=INTEGRITY,
    )


def on_checkpoint_timeout(pipeline: Pipeline, stage: Stage, checkpoint: str) -> Decision | None:
    """What a checkpoint's timeout does: park the task, or None to remind and keep waiting."""
    cp = pipeline.checkpoint(checkpoint)
    if cp.on_timeout == OnTimeout.PARK:
        return Decision(
            Move.PARK,
            stage,
            TaskStatus.NEEDS_OPERATOR,
            f"{checkpoint} was not decided within {cp.timeout_s:g}s",
        )
    return None


# -- serialisation: a task keeps a snapshot of the pipeline it started with --------------------


def to_dict(pipeline: Pipeline) -> dict[str, Any]:
    return {
        "stages": [
            {
                "stage": s.stage.value,
                "role": s.role,
                "agent": s.agent,
                "prompt": s.prompt,
                "gates": [
                    {
                        "name": g.name,
                        "kind": g.kind.value,
                        "path": g.path,
                        "headings": list(g.headings),
                        "command": g.command,
                        "timeout_s": g.timeout_s,
                        "passes": list(g.passes),
                    }
                    for g in s.gates
                ],
                "actions": [a.value for a in s.actions],
                "rework_to": s.rework_to.value if s.rework_to else None,
                "timeout_s": s.timeout_s,
                "stall_s": s.stall_s,
                "budget": s.budget.as_dict(),
                "instructions": s.instructions,
            }
            for s in pipeline.stages
        ],
        "checkpoints": [
            {
                "name": c.name,
                "before": c.before.value,
                "reject_to": c.reject_to.value,
                "question": c.question,
                "timeout_s": c.timeout_s,
                "on_timeout": c.on_timeout.value,
            }
            for c in pipeline.checkpoints
        ],
        "max_rework_rounds": pipeline.max_rework_rounds,
        "max_attempts": pipeline.max_attempts,
        "deadline_s": pipeline.deadline_s,
        "budget": pipeline.budget.as_dict(),
    }


def from_dict(data: dict[str, Any]) -> Pipeline:
    stages = tuple(
        StageSpec(
            stage=Stage(s["stage"]),
            role=s["role"],
            agent=s["agent"],
            prompt=s["prompt"],
            gates=tuple(
                GateSpec(
                    name=g["name"],
                    kind=GateKind(g["kind"]),
                    path=g.get("path", ""),
                    headings=tuple(g.get("headings", ())),
                    command=g.get("command", ""),
                    timeout_s=float(g.get("timeout_s", 600.0)),
                    passes=tuple(g.get("passes", PASS_WORDS)),
                )
                for g in s.get("gates", ())
            ),
            actions=tuple(Action(a) for a in s.get("actions", ())),
            rework_to=Stage(s["rework_to"]) if s.get("rework_to") else None,
            timeout_s=float(s.get("timeout_s", 1800.0)),
            stall_s=_optional_float(s.get("stall_s", 600.0)),
            budget=Budget.from_dict(s.get("budget")),
            instructions=s.get("instructions", ""),
        )
        for s in data["stages"]
    )
    checkpoints = tuple(
        Checkpoint(
            name=c["name"],
            before=Stage(c["before"]),
            reject_to=Stage(c["reject_to"]),
            question=c.get("question", ""),
            timeout_s=c.get("timeout_s"),
            on_timeout=OnTimeout(c.get("on_timeout", "remind")),
        )
        for c in data.get("checkpoints", ())
    )
    return Pipeline(
        stages=stages,
        checkpoints=checkpoints,
        max_rework_rounds=int(data.get("max_rework_rounds", 3)),
        max_attempts=int(data.get("max_attempts", 3)),
        deadline_s=_optional_float(data.get("deadline_s")),
        budget=Budget.from_dict(data.get("budget")),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def with_agent(pipeline: Pipeline, agent: str) -> Pipeline:
    """The same pipeline with every agent stage driven by `agent`."""
    return replace(
        pipeline,
        stages=tuple(replace(s, agent=agent) if s.agent else s for s in pipeline.stages),
    )


def _role(stage: Stage, role: str, agent: str | None, **kw: Any) -> StageSpec:
    return StageSpec(stage, role, agent, PROMPTS[role], instructions=INSTRUCTIONS[role], **kw)


def default_pipeline() -> Pipeline:
    tests = GateSpec("tests", GateKind.COMMAND, command="{{ repo.test_command }}")
    return Pipeline(
        stages=(
            _role(
                Stage.ANALYSIS,
                "analyst",
                "default",
                gates=(
                    GateSpec(
                        "spec",
                        GateKind.ARTIFACT,
                        path=f"{WORK}/spec.md",
                        headings=("Problem", "Acceptance criteria"),
                    ),
                ),
            ),
            _role(
                Stage.ARCHITECTURE,
                "architect",
                "default",
                gates=(
                    GateSpec(
                        "adr",
                        GateKind.ARTIFACT,
                        path=f"{WORK}/adr.md",
                        headings=("Context", "Decision", "Consequences"),
                    ),
                ),
            ),
            _role(Stage.DEVELOPMENT, "developer", "default", gates=(tests,)),
            _role(
                Stage.REVIEW,
                "reviewer",
                "default",
                gates=(
                    GateSpec(
                        "review",
                        GateKind.VERDICT,
                        path=f"{WORK}/review.md",
                        passes=("approve", "approved"),
                    ),
                ),
                rework_to=Stage.DEVELOPMENT,
            ),
            _role(
                Stage.TESTING,
                "tester",
                "default",
                gates=(
                    tests,
                    GateSpec(
                        "test-report",
                        GateKind.VERDICT,
                        path=f"{WORK}/test-report.md",
                        headings=("Results",),
                        passes=("pass", "passed"),
                    ),
                ),
                rework_to=Stage.DEVELOPMENT,
            ),
            _role(
                Stage.DEPLOY_STAGING,
                "deployer",
                None,
                actions=(Action.MERGE, Action.DEPLOY_STAGING),
                rework_to=Stage.DEVELOPMENT,
            ),
            _role(Stage.DEPLOY, "deployer", None, actions=(Action.DEPLOY_PRODUCTION,)),
        ),
        checkpoints=(
            Checkpoint(
                "approve-plan",
                before=Stage.ARCHITECTURE,
                reject_to=Stage.ANALYSIS,
                question="Approve the plan in the specification?",
            ),
            Checkpoint(
                "confirm-deploy",
                before=Stage.DEPLOY,
                reject_to=Stage.DEVELOPMENT,
                question="Deploy this release to production?",
            ),
        ),
    )
