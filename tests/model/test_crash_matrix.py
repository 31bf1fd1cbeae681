"""Every crash point x every place it is reached along the whole default pipeline, exhaustively.

For each point and n = 1, 2, 3, … one ticket runs through the whole pipeline (people approving
both checkpoints) with the point armed: orch dies the nth time it passes it, restarts, and work
goes on until the task settles. n grows until a whole run no longer reaches the point. The STOP
points are walked with a STOP pressed at every stage (and, for the agent's SIGTERM, while each
agent works), since only a STOP reaches them.

Each case must end where a run without the crash ends (done, or cancelled after a STOP), with
exactly one merge (none if the STOP came first), at most one production deploy, a history on
the pipeline's edges (I4), no key succeeded twice (I7), no job left running, and I1-I8 holding.
A failing case fails its point's test, naming the case.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from orch import crashpoints
from orch.domain.states import Stage, TaskStatus
from orch.ports import AgentRequest
from orch.testing import SimulatedCrash, crash_at

from .harness import REPO, Outcome, World, build_world, model_pipeline
from .invariants import check_all, observe

# Points no in-process run can reach, and why; process-level chaos samples them instead. Empty:
# every point is reached in process (MemoryForge.merge passes forge.request.sent, as the local
# git forge does; the in-process agent's kill passes agent.sigterm, as a process group's does).
PROCESS_ONLY: dict[str, str] = {}
# Points only a STOP reaches: walked with STOP variants only.
STOP_ONLY = frozenset({"cancel.flag", "agent.sigterm"})
# Points walked with a STOP pressed too: between jobs at every stage (in each wait, at the
# checkpoints), or while an agent works (which the STOP then kills: the agent's SIGTERM).
STOP_VARIANTS: dict[str, tuple[tuple[Stage, bool], ...]] = {
    "cancel.flag": (
        *((stage, False) for stage in model_pipeline().stage_names),
        (Stage.DEVELOPMENT, True),
    ),
    "inbox.event": (
        *((stage, False) for stage in model_pipeline().stage_names),
        (Stage.DEVELOPMENT, True),
    ),
    "agent.sigterm": tuple(
        (spec.stage, True) for spec in model_pipeline().stages if spec.agent is not None
    ),
}
STEPS = 300  # enough for a whole run with a crash, a restart and a cancel, many times over


@dataclass(frozen=True)
class Stop:
    """A STOP pressed when the task reaches `stage`: between its jobs (in a wait if one
    precedes the stage), or while its agent works."""

    stage: Stage
    while_agent_works: bool

    def __str__(self) -> str:
        return f"STOP {'while the agent of' if self.while_agent_works else 'at'} {self.stage}"


@dataclass
class Journey:
    world: World
    task_id: int
    fired: bool
    crashed_at: str  # the task's stage and status when orch died, if it did


def journey(point: str, n: int, stop: Stop | None) -> Journey:
    """One ticket through the whole pipeline, orch dying the nth time it passes `point`.
    Without a stall timeout, an agent that hangs runs until a STOP kills it."""
    w = build_world(pipeline=model_pipeline(stall_s=None))
    r = w.rig
    task = r.intake.file(REPO, "Add a greeting", "Say hello to the user.")
    stopped = False
    crashed_at = ""

    def press_stop(request: AgentRequest) -> Outcome | None:
        nonlocal stopped
        if stop is None or not stop.while_agent_works or stopped or request.stage != stop.stage:
            return None
        r.intake.stop(task.key, "ann", str(stop))
        stopped = True
        return Outcome.HANG

    w.agent.on_start = press_stop
    with crash_at(f"{point}:{n}"):
        idle = 0
        for _ in range(STEPS):
            t = r.store.get_task(task.id)
            if t.status in (TaskStatus.DONE, TaskStatus.CANCELLED):
                break
            try:
                if stop and not stop.while_agent_works and not stopped and t.stage == stop.stage:
                    r.intake.stop(task.key, "ann", str(stop))
                    stopped = True
                elif r.dispatcher.run_once():
                    idle = 0
                elif t.status == TaskStatus.WAITING:
                    # a person approves; again after a crash ate the first (recorded once)
                    r.intake.decide(task.key, True, "approver")
                    idle += 1
                else:
                    # nothing runnable: let leases and backoffs run out, and sweep
                    idle += 1
                    w.clock.advance(w.ttl + 1)
                    w.sweep()
                if idle > 5:
                    break
            except SimulatedCrash:
                crashed_at = crashed_at or f"{t.stage}/{t.status}"
                r.restart()
                w.sweep()  # startup recovery
        fired = crashpoints.fired()
    return Journey(w, task.id, fired, crashed_at)


def assert_settled_as_without_the_crash(j: Journey, stop: Stop | None) -> None:
    r = j.world.rig
    task = r.store.get_task(j.task_id)
    check_all(
        observe(r, deploys=j.world.deploys, agents=j.world.agent.processes),
        swept_at=j.world.swept_at,
        settled=True,
    )
    names = list(r.pipeline.stage_names)
    if stop is None:
        expected, merges = TaskStatus.DONE, 1
    else:
        expected = TaskStatus.CANCELLED
        merges = int(names.index(stop.stage) > names.index(Stage.DEPLOY_STAGING))
    assert task.status == expected, f"ended {task.stage}/{task.status}: {task.status_reason}"
    assert len(r.forge.merges) == merges, f"merges {r.forge.merges}"
    production = [rel for target, rel in j.world.deploys.entries() if target == "production"]
    assert len(production) == (1 if expected == TaskStatus.DONE else 0), (
        f"production deploys {production}"
    )
    assert not [job for job in r.store.jobs(task.id) if job.state == "running"], "a job runs"


def variants(point: str) -> Iterator[Stop | None]:
    if point not in STOP_ONLY:
        yield None
    for stage, while_agent_works in STOP_VARIANTS.get(point, ()):
        yield Stop(stage, while_agent_works)


@pytest.mark.parametrize("point", crashpoints.POINTS)
def test_a_crash_at_each_place_a_point_is_reached_ends_as_if_it_never_happened(
    point: str,
) -> None:
    if point in PROCESS_ONLY:
        pytest.skip(f"{point} is reached by process-level chaos only: {PROCESS_ONLY[point]}")
    reached = 0
    failed: list[str] = []
    for stop in variants(point):
        for n in range(1, 100):
            j = journey(point, n, stop)
            try:
                if not j.fired:
                    break
                reached += 1
                case = f"{point}:{n}" + (f" with {stop}" if stop else "")
                try:
                    assert_settled_as_without_the_crash(j, stop)
                except AssertionError as exc:
                    failed.append(f"{case}, orch died at {j.crashed_at}: {exc}")
            finally:
                j.world.close()
        else:
            raise AssertionError(f"{point} fired 99 times in one run")
    assert reached, (
        f"crash point {point} is never reached by an in-process run of the whole pipeline: "
        "wire crashpoints.hit() where it belongs, or list it in PROCESS_ONLY with the reason"
    )
    assert not failed, "\n".join(failed)
