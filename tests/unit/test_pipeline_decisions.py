"""The pipeline as decision tables: every pure decision on the default pipeline, row by row."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orch.domain import pipeline as pl
from orch.domain.errors import PipelineError
from orch.domain.pipeline import Checkpoint, Decision, Move, Pipeline, StageSpec
from orch.domain.states import WORK_STAGES, Stage, TaskStatus

P = pl.default_pipeline()
A, AR, D, R, T, DS, DP = WORK_STAGES
ACTIVE, WAITING, PARKED, DONE = (
    TaskStatus.ACTIVE,
    TaskStatus.WAITING,
    TaskStatus.NEEDS_OPERATOR,
    TaskStatus.DONE,
)


def test_default_pipeline_orders_every_work_stage() -> None:
    assert P.stage_names == WORK_STAGES


def test_start_enters_analysis_active() -> None:
    d = pl.start(P)
    assert (d.move, d.stage, d.status, d.waiting_for) == (Move.ADVANCE, A, ACTIVE, None)


def test_start_waits_when_a_checkpoint_guards_the_first_stage() -> None:
    p = replace(P, checkpoints=(Checkpoint("go", before=A, reject_to=A),))
    d = pl.start(p)
    assert (d.move, d.stage, d.status, d.waiting_for) == (Move.ADVANCE, A, WAITING, "go")


# after a stage passes its gates: (stage, next stage, status, checkpoint waited for)
SUCCESSORS = [
    (A, AR, WAITING, "approve-plan"),
    (AR, D, ACTIVE, None),
    (D, R, ACTIVE, None),
    (R, T, ACTIVE, None),
    (T, DS, ACTIVE, None),
    (DS, DP, WAITING, "confirm-deploy"),
    (DP, Stage.DONE, DONE, None),
]


@pytest.mark.parametrize(("stage", "successor", "status", "waiting_for"), SUCCESSORS)
def test_after_success_enters_the_next_stage(
    stage: Stage, successor: Stage, status: TaskStatus, waiting_for: str | None
) -> None:
    d = pl.after_success(P, stage)
    assert d.move == Move.ADVANCE
    assert (d.stage, d.status, d.waiting_for) == (successor, status, waiting_for)
    assert not d.rework


def test_successor_table_covers_every_stage() -> None:
    assert [row[0] for row in SUCCESSORS] == list(P.stage_names)


# a failed gate in a stage with a rework target: (stage, target)
REWORK = [(R, D), (T, D), (DS, D)]
# stages whose failed gate retries the stage itself
NO_REWORK = [A, AR, D, DP]


def test_rework_tables_cover_every_stage() -> None:
    assert sorted([s for s, _ in REWORK] + NO_REWORK) == sorted(P.stage_names)


@pytest.mark.parametrize(("stage", "target"), REWORK)
@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_gate_failure_below_the_round_limit_sends_the_task_to_its_rework_target(
    stage: Stage, target: Stage, rounds: int
) -> None:
    d = pl.after_gate_failure(P, stage, rounds, attempt=1, reason="tests red")
    assert (d.move, d.stage, d.status) == (Move.ADVANCE, target, ACTIVE)
    assert d.rework
    assert d.feedback == "tests red"


@pytest.mark.parametrize(("stage", "target"), REWORK)
@pytest.mark.parametrize("rounds", [3, 4])
def test_gate_failure_with_rework_rounds_exhausted_parks_the_task(
    stage: Stage, target: Stage, rounds: int
) -> None:
    d = pl.after_gate_failure(P, stage, rounds, attempt=1, reason="tests red")
    assert (d.move, d.stage, d.status) == (Move.PARK, stage, PARKED)
    assert "tests red" in d.reason
    assert not d.rework


@pytest.mark.parametrize("stage", NO_REWORK)
@pytest.mark.parametrize(
    ("attempt", "move", "status"),
    [(1, Move.RETRY, ACTIVE), (2, Move.RETRY, ACTIVE), (3, Move.PARK, PARKED)],
)
def test_gate_failure_without_a_rework_target_counts_as_a_failed_attempt(
    stage: Stage, attempt: int, move: Move, status: TaskStatus
) -> None:
    d = pl.after_gate_failure(P, stage, rework_rounds=0, attempt=attempt, reason="no spec")
    assert (d.move, d.stage, d.status) == (move, stage, status)
    assert "no spec" in d.reason


@pytest.mark.parametrize("stage", WORK_STAGES)
@pytest.mark.parametrize("attempt", [1, 2])
def test_attempt_failure_below_max_attempts_retries_the_stage(stage: Stage, attempt: int) -> None:
    d = pl.after_attempt_failure(P, stage, attempt, "agent exited 1")
    assert (d.move, d.stage, d.status) == (Move.RETRY, stage, ACTIVE)
    assert d.feedback == "agent exited 1"


@pytest.mark.parametrize("stage", WORK_STAGES)
@pytest.mark.parametrize("attempt", [3, 4])
def test_attempt_failure_at_max_attempts_parks_with_the_reason(stage: Stage, attempt: int) -> None:
    d = pl.after_attempt_failure(P, stage, attempt, "agent exited 1")
    assert (d.move, d.stage, d.status) == (Move.PARK, stage, PARKED)
    assert "agent exited 1" in d.reason


def test_max_attempts_comes_from_the_pipeline() -> None:
    p = replace(P, max_attempts=1)
    assert pl.after_attempt_failure(p, D, 1, "x").move == Move.PARK
    p5 = replace(P, max_attempts=5)
    assert pl.after_attempt_failure(p5, D, 4, "x").move == Move.RETRY


def test_max_rework_rounds_comes_from_the_pipeline() -> None:
    p = replace(P, max_rework_rounds=0)
    assert pl.after_gate_failure(p, R, 0, 1, "x").move == Move.PARK


# waiting at a checkpoint: (checkpoint, stage the task waits to enter, rejection target)
CHECKPOINTS = [("approve-plan", AR, A), ("confirm-deploy", DP, D)]


@pytest.mark.parametrize(("checkpoint", "stage", "reject_to"), CHECKPOINTS)
def test_approval_activates_the_stage_the_task_waited_before(
    checkpoint: str, stage: Stage, reject_to: Stage
) -> None:
    d = pl.on_approve(P, stage, checkpoint, "alice")
    assert (d.move, d.stage, d.status, d.waiting_for) == (Move.ADVANCE, stage, ACTIVE, None)
    assert "alice" in d.reason
    assert not d.rework


@pytest.mark.parametrize(("checkpoint", "stage", "reject_to"), CHECKPOINTS)
def test_rejection_sends_the_task_to_the_reject_target_with_the_comment(
    checkpoint: str, stage: Stage, reject_to: Stage
) -> None:
    d = pl.on_reject(P, checkpoint, "bob", "too broad", rework_rounds=0)
    assert (d.move, d.stage, d.status) == (Move.ADVANCE, reject_to, ACTIVE)
    assert d.feedback == "too broad"
    assert d.rework
    assert "bob" in d.reason and "too broad" in d.reason


@pytest.mark.parametrize(("checkpoint", "stage", "reject_to"), CHECKPOINTS)
def test_rejection_with_rework_rounds_exhausted_parks_at_the_checkpoint_stage(
    checkpoint: str, stage: Stage, reject_to: Stage
) -> None:
    d = pl.on_reject(P, checkpoint, "bob", "still no", rework_rounds=3)
    assert (d.move, d.stage, d.status) == (Move.PARK, stage, PARKED)


def test_approval_of_an_unknown_checkpoint_is_refused() -> None:
    with pytest.raises(PipelineError):
        pl.on_approve(P, AR, "no-such-checkpoint", "alice")


def test_rejection_at_an_unknown_checkpoint_is_refused() -> None:
    with pytest.raises(PipelineError):
        pl.on_reject(P, "no-such-checkpoint", "alice", "", 0)


def test_serialisation_round_trip_is_equal() -> None:
    assert pl.from_dict(pl.to_dict(P)) == P


def test_serialisation_round_trip_keeps_overrides() -> None:
    p = replace(
        pl.with_agent(P, "claude"),
        max_attempts=5,
        max_rework_rounds=1,
        checkpoints=(Checkpoint("go", before=D, reject_to=A, question="Go?"),),
    )
    assert pl.from_dict(pl.to_dict(p)) == p


def test_with_agent_replaces_only_stages_that_run_an_agent() -> None:
    p = pl.with_agent(P, "codex")
    assert [s.agent for s in p.stages] == [
        "codex" if s.agent is not None else None for s in P.stages
    ]


# -- every decision the functions can produce is an edge of the pipeline ----------------------


def _every_decision(p: Pipeline) -> list[tuple[Stage, Decision]]:
    """(from stage, decision) for every input the decision functions accept on `p`."""
    out: list[tuple[Stage, Decision]] = []
    first = p.stages[0].stage
    out.append((first, pl.start(p)))
    limits = sorted({0, p.max_rework_rounds - 1, p.max_rework_rounds, p.max_rework_rounds + 1})
    attempts = sorted({1, p.max_attempts - 1, p.max_attempts, p.max_attempts + 1} - {0})
    for stage in p.stage_names:
        out.append((stage, pl.after_success(p, stage)))
        for attempt in attempts:
            out.append((stage, pl.after_attempt_failure(p, stage, attempt, "r")))
            for rounds in limits:
                out.append((stage, pl.after_gate_failure(p, stage, rounds, attempt, "r")))
    for cp in p.checkpoints:
        out.append((cp.before, pl.on_approve(p, cp.before, cp.name, "a")))
        for rounds in limits:
            out.append((cp.before, pl.on_reject(p, cp.name, "a", "c", rounds)))
    return out


PIPELINES = {
    "default": P,
    "no-checkpoints": replace(P, checkpoints=()),
    "single-stage": Pipeline(stages=(StageSpec(D, "developer", "default", "p"),)),
    "reordered": Pipeline(
        stages=(
            StageSpec(D, "developer", "default", "p"),
            StageSpec(R, "reviewer", "default", "p", rework_to=D),
            StageSpec(A, "analyst", "default", "p", rework_to=R),
        ),
        checkpoints=(Checkpoint("c", before=A, reject_to=D),),
        max_rework_rounds=1,
        max_attempts=1,
    ),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_transition_a_decision_can_produce_is_an_edge(name: str) -> None:
    p = PIPELINES[name]
    edges = p.edges()
    for source, d in _every_decision(p):
        target = source if d.move in (Move.RETRY, Move.PARK) else d.stage
        assert (source, target) in edges, (source, d)


def test_edges_contain_nothing_outside_the_pipeline_and_its_terminals() -> None:
    allowed = set(P.stage_names) | {Stage.DONE, Stage.CANCELLED}
    for a, b in P.edges():
        assert a in allowed and b in allowed
    # no edge skips a stage forward
    assert (A, D) not in P.edges()
    assert (D, DP) not in P.edges()


def test_every_work_stage_can_be_cancelled() -> None:
    for stage in P.stage_names:
        assert (stage, Stage.CANCELLED) in P.edges()


# -- validation ---------------------------------------------------------------------------------


def _spec(stage: Stage, **kw: object) -> StageSpec:
    return StageSpec(stage, "role", "default", "prompt", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Pipeline(stages=()), "at least one stage"),
        (lambda: Pipeline(stages=(_spec(A), _spec(D), _spec(A))), "twice"),
        (lambda: Pipeline(stages=(_spec(A), _spec(Stage.DONE))), "terminal"),
        (lambda: Pipeline(stages=(_spec(Stage.CANCELLED),)), "terminal"),
        (lambda: Pipeline(stages=(_spec(A, rework_to=D),)), "reworks to"),
        (
            lambda: Pipeline(
                stages=(_spec(A), _spec(D)), checkpoints=(Checkpoint("c", before=R, reject_to=A),)
            ),
            "checkpoint c",
        ),
        (
            lambda: Pipeline(
                stages=(_spec(A), _spec(D)), checkpoints=(Checkpoint("c", before=D, reject_to=T),)
            ),
            "checkpoint c",
        ),
    ],
    ids=[
        "empty",
        "duplicate-stage",
        "done-as-stage",
        "cancelled-as-stage",
        "rework-outside",
        "checkpoint-before-missing",
        "checkpoint-reject-to-missing",
    ],
)
def test_invalid_pipelines_are_refused(build: object, fragment: str) -> None:
    with pytest.raises(PipelineError, match=fragment):
        build()  # type: ignore[operator]


def test_spec_of_a_stage_outside_the_pipeline_is_an_error() -> None:
    p = Pipeline(stages=(_spec(A),))
    with pytest.raises(PipelineError):
        p.spec(D)
