"""docs/state-machine.md is the specification of a task's life: its transition table is the code's
(`machine.TRANSITIONS`), and every move the domain's decision functions make is in that table,
while every row of the table is a move some decision function makes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.machine import TRANSITIONS, Happening
from orch.domain.model import Task
from orch.domain.pipeline import Checkpoint, OnTimeout, Pipeline
from orch.domain.states import JobState, Stage, TaskStatus

SPEC = Path(__file__).resolve().parents[2] / "docs" / "state-machine.md"
LIVE = (TaskStatus.ACTIVE, TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR)
Move = tuple[Happening, TaskStatus | None, TaskStatus]


def documented() -> set[tuple[str, str | None, str]]:
    """The rows of the document's transition table: (happening, from, to)."""
    text = SPEC.read_text(encoding="utf-8")
    section = text.split("## 3. Transitions", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("happening", "") or set(cells[0]) <= {"-"}:
            continue
        rows.add((cells[0], None if cells[1] == "—" else cells[1], cells[2]))
    return rows


def test_the_documented_transition_table_is_the_codes() -> None:
    in_code = {(h.value, f.value if f else None, t.value) for h, f, t in TRANSITIONS}
    assert documented() == in_code


def task(status: TaskStatus, stage: Stage = Stage.DEVELOPMENT, rounds: int = 0) -> Task:
    return Task(
        1, "APP-1", "app", "t", "", stage, status, 3, "orch/APP-1", {}, rework_rounds=rounds
    )


def pipelines() -> list[Pipeline]:
    default = pl.default_pipeline()
    names = default.stage_names
    guarded = replace(
        default,
        checkpoints=(
            *default.checkpoints,
            Checkpoint("go", before=names[0], reject_to=names[0], timeout_s=60.0),
            Checkpoint(
                "late",
                before=names[-1],
                reject_to=names[0],
                timeout_s=60.0,
                on_timeout=OnTimeout.PARK,
            ),
        ),
    )
    return [default, guarded, replace(default, checkpoints=())]


def moves() -> Iterator[Move]:
    """Every move the decision functions make, from every status they apply to."""
    a, w, n = TaskStatus.ACTIVE, TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR
    for p in pipelines():
        names, top = p.stage_names, p.max_rework_rounds
        yield Happening.FILED, None, pl.start(p).status
        for stage in names:
            yield Happening.PASSED, a, pl.after_success(p, stage).status
            for rounds, attempt in itertools.product((0, top), (1, p.max_attempts)):
                failed = pl.after_gate_failure(p, stage, rounds, attempt, "red")
                yield Happening.GATE_FAILED, a, failed.status
                yield (
                    Happening.MERGE_FAILED,
                    a,
                    pl.after_merge_failure(p, stage, rounds, "x").status,
                )
            for attempt in (1, p.max_attempts):
                yield (
                    Happening.RUN_FAILED,
                    a,
                    pl.after_attempt_failure(p, stage, attempt, "x").status,
                )
            yield Happening.RUN_FAILED, a, pl.parked(stage, "permanent failure").status
            yield Happening.HELD, a, pl.held_for_integrity(stage, ["tests deleted"]).status
            yield Happening.PARKED, a, pl.parked(stage, "budget spent").status
            yield Happening.PARKED, a, pl.deadline_passed(replace(p, deadline_s=60.0), stage).status
            for rounds in (0, top):
                reacted = pl.on_reaction(p, stage, None, rounds, "ci", "red")
                if reacted is not None:
                    yield Happening.REACTED, a, reacted.status
            for earlier in names[: names.index(stage) + 1]:
                yield Happening.RETRIED, n, pl.on_retry(p, stage, earlier, "ops").status
        for cp in p.checkpoints:
            yield Happening.APPROVED, w, pl.on_approve(p, cp.before, cp.name, "ann").status
            for rounds in (0, top):
                yield Happening.REJECTED, w, pl.on_reject(p, cp.name, "bob", "no", rounds).status
                reacted = pl.on_reaction(p, cp.before, cp.name, rounds, "ci", "red")
                assert reacted is not None
                yield Happening.REACTED, w, reacted.status
            if cp.timeout_s is not None:
                timed_out = pl.on_checkpoint_timeout(p, cp.before, cp.name)
                yield Happening.TIMED_OUT, w, timed_out.status if timed_out else w
    for status in LIVE:
        yield Happening.LANDED, status, pl.on_landed(Stage.REVIEW, "gitea:ann", "abc").status
        yield Happening.STOPPED, status, pl.on_stop(Stage.REVIEW, "ann", "").status
        blocked = pl.parked(Stage.REVIEW, "stop requested, but a deploy's outcome is unknown")
        yield Happening.STOPPED, status, blocked.status
        for attempt in (1, 3):
            end = machine.lease_expired(attempt, max_attempts=3)
            if end.state == JobState.QUEUED:
                yield Happening.LEASE_EXPIRED, status, status  # the job runs again
            else:
                parked = machine.park(task(status), "lease expired", "sweeper", False)
                assert parked.write is not None
                yield Happening.LEASE_EXPIRED, status, parked.write.status
    for status in (TaskStatus.ACTIVE, TaskStatus.WAITING):
        parked = machine.park(task(status), "stop outlived its bound", "sweeper", False)
        assert parked.write is not None
        yield Happening.STOP_OVERDUE, status, parked.write.status


def test_every_move_the_domain_makes_is_in_the_table_and_every_row_is_made() -> None:
    made = set(moves())
    assert made - TRANSITIONS == set(), "moves the table does not list"
    assert TRANSITIONS - made == set(), "rows no decision function makes"


def test_a_written_move_goes_from_the_tasks_status_to_the_decisions() -> None:
    p = pl.default_pipeline()
    for status, decision in itertools.product(
        LIVE, (pl.after_success(p, Stage.ANALYSIS), pl.on_stop(Stage.REVIEW, "ann", ""))
    ):
        change = machine.advance(task(status), decision, "w")
        assert change.write is not None
        assert (change.write.from_status, change.write.status) == (status, decision.status)
