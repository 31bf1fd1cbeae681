"""Each invariant check of `orch chaos` catches the violation it exists for, on crafted data, and
passes the same data without it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orch.adapters.proctable import LinuxProcessTable, start_time
from orch.adapters.store import schema as t
from orch.adapters.store.sql import SqlStore
from orch.chaos import checks
from orch.chaos.checks import History, ProcessIdentity, Remote
from orch.chaos.observe import HeldJob, Monitor, Seen, bounds, match_open_runs
from orch.chaos.processes import Life
from orch.demo import sample
from orch.domain import pipeline as pl
from orch.domain.model import Effect, Event, GateRecord, Run, Task, Transition
from orch.domain.states import EffectState, Stage, TaskStatus


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'orch.db'}")
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def file_task(store: SqlStore, title: str = "a ticket") -> Task:
    pipeline = pl.default_pipeline()
    return store.file_and_create(
        "sample", "SAM", title, "", pl.to_dict(pipeline), pl.start(pipeline), "test"
    )


def add_transition(
    store: SqlStore, task: Task, version: int, to_stage: Stage, to_status: TaskStatus
) -> None:
    """Write a history row and move the task, as a faulty store or engine might."""
    with store.engine.begin() as conn:
        current = conn.execute(sa.select(t.tasks).where(t.tasks.c.id == task.id)).one()
        conn.execute(
            sa.insert(t.transitions).values(
                task_id=task.id,
                version=version,
                from_stage=current.stage,
                to_stage=to_stage.value,
                from_status=current.status,
                to_status=to_status.value,
                actor="test",
                reason="crafted",
                at=store.now(),
            )
        )
        conn.execute(
            sa.update(t.tasks)
            .where(t.tasks.c.id == task.id)
            .values(version=version, stage=to_stage.value, status=to_status.value)
        )


# -- I4 ------------------------------------------------------------------------------------------


def test_history_written_by_the_store_passes(store: SqlStore) -> None:
    task = file_task(store)
    add_transition(store, task, 2, Stage.ARCHITECTURE, TaskStatus.WAITING)

    finding = checks.check_history(checks.load_history(store))

    assert finding.ok, finding.violations
    assert finding.figures["transitions"] == 2


def test_a_gap_in_history_is_caught(store: SqlStore) -> None:
    task = file_task(store)
    add_transition(store, task, 3, Stage.ARCHITECTURE, TaskStatus.WAITING)

    finding = checks.check_history(checks.load_history(store))

    assert not finding.ok
    assert any("versions 1,3 are not 1..2" in v for v in finding.violations)


def test_a_transition_that_is_no_edge_of_the_pipeline_is_caught(store: SqlStore) -> None:
    task = file_task(store)
    add_transition(store, task, 2, Stage.DEPLOY, TaskStatus.ACTIVE)

    finding = checks.check_history(checks.load_history(store))

    assert [v for v in finding.violations if "not an edge" in v] == [
        "SAM-1 v2: analysis -> deploy is not an edge of its pipeline"
    ]


def test_a_transition_after_a_terminal_one_is_caught(store: SqlStore) -> None:
    task = file_task(store)
    add_transition(store, task, 2, Stage.CANCELLED, TaskStatus.CANCELLED)
    add_transition(store, task, 3, Stage.CANCELLED, TaskStatus.ACTIVE)

    finding = checks.check_history(checks.load_history(store))

    assert "SAM-1 v3: a transition after cancelled" in finding.violations


# -- I2 / I8 -------------------------------------------------------------------------------------


def test_a_task_left_active_with_no_job_is_lost(store: SqlStore) -> None:
    stranded = file_task(store, "stranded")
    file_task(store, "still queued")
    done = file_task(store, "done")
    with store.engine.begin() as conn:
        conn.execute(sa.delete(t.jobs).where(t.jobs.c.task_id == stranded.id))
        conn.execute(sa.delete(t.jobs).where(t.jobs.c.task_id == done.id))
    add_transition(store, done, 2, Stage.DONE, TaskStatus.DONE)

    finding = checks.check_lost(checks.load_history(store))

    assert finding.figures["lost"] == 2
    stranded_text, queued_text = finding.violations
    assert stranded_text.startswith("SAM-1 is still active at analysis v1")
    assert stranded_text.endswith("its jobs (version, state, due in s): []")
    assert queued_text.startswith("SAM-2 is still active at analysis v1")
    assert "(1, 'queued'," in queued_text


def test_an_approval_handled_but_never_applied_is_named(store: SqlStore) -> None:
    task = file_task(store)
    add_transition(store, task, 2, Stage.ARCHITECTURE, TaskStatus.WAITING)
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(t.tasks).where(t.tasks.c.id == task.id).values(waiting_for="approve-plan")
        )
    store.append_event(
        task.id, f"{task.id}:v2:approve", "approve", "person", {"checkpoint": "approve-plan"}
    )
    with store.engine.begin() as conn:
        conn.execute(sa.update(t.events).values(processed_at=store.now()))

    finding = checks.check_lost(checks.load_history(store))

    assert finding.violations == [
        "SAM-1 is waiting at architecture v2, though person's approve for it was recorded"
        " (read): the decision is lost"
    ]


def test_parked_and_terminal_tasks_are_not_lost(store: SqlStore) -> None:
    parked, cancelled = file_task(store), file_task(store)
    add_transition(store, parked, 2, Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR)
    add_transition(store, cancelled, 2, Stage.CANCELLED, TaskStatus.CANCELLED)

    finding = checks.check_lost(checks.load_history(store))

    assert finding.ok, finding.violations
    assert finding.figures["by_status"] == {"needs_operator": 1, "cancelled": 1}


# -- I3 ------------------------------------------------------------------------------------------


def test_a_job_running_past_its_lease_is_caught(store: SqlStore) -> None:
    task = file_task(store)
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(t.jobs)
            .where(t.jobs.c.task_id == task.id)
            .values(state="running", lease_token=1, lease_owner="host:1:1:x", lease_expires_at=1.0)
        )

    finding = checks.check_leases(checks.load_history(store), grace_s=1.0)

    assert not finding.ok
    assert "still runs under host:1:1:x" in finding.violations[0]


def _dead_identity() -> ProcessIdentity:
    """The identity of a process that has ended: its pid and the start time it had."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    start = start_time(proc.pid)
    assert start is not None
    proc.wait()
    return ProcessIdentity(proc.pid, start)


def test_a_live_process_carrying_a_dead_incarnation_is_a_zombie() -> None:
    dead = _dead_identity()
    incarnation = f"{socket.gethostname()}:{dead.pid}:{dead.start}:0123456789ab"
    env = {**os.environ, "ORCH_INCARNATION": incarnation}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        table = LinuxProcessTable()
        found = []
        for _ in range(50):  # until the child's environment is readable in /proc
            found = checks.find_zombies(table, [dead])
            if found:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        other = checks.find_zombies(table, [ProcessIdentity(dead.pid, dead.start + "1")])
    finally:
        child.kill()
        child.wait()

    assert [z.pid for z in found] == [child.pid]
    assert other == []
    finding = checks.check_zombies(found)
    assert finding.figures["zombies"] == 1
    assert f"pid {child.pid} still alive" in finding.violations[0]


# -- I1 ------------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    return sample.git(*args, cwd=cwd)


def merge_into_main(work: Path, head: str, message: str) -> None:
    """A merge commit of `head` onto main, pushed to the remote (as orch's forge does)."""
    _git(work, "fetch", "--quiet", "origin")
    base = _git(work, "rev-parse", "origin/main")
    tree = _git(work, "merge-tree", "--write-tree", base, head).split()[0]
    commit = _git(work, "commit-tree", tree, "-p", base, "-p", head, "-m", message)
    _git(work, "push", "--quiet", "origin", f"{commit}:refs/heads/main")


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Remote, str]:
    work, bare = sample.create(tmp_path)
    initial = _git(bare, "rev-parse", "main")
    _git(work, "checkout", "--quiet", "-b", "orch/SAM-1")
    (work / "feature.txt").write_text("feature\n")
    _git(work, "add", "feature.txt")
    _git(work, "commit", "--quiet", "-m", "feature")
    head = _git(work, "rev-parse", "HEAD")
    _git(work, "push", "--quiet", "origin", "orch/SAM-1")
    return work, Remote("sample", bare, "main", initial), head


def _empty_history() -> History:
    return History([], {}, [], [], [], [], 0.0)


def test_one_merge_per_head_passes(project: tuple[Path, Remote, str]) -> None:
    work, remote, head = project
    merge_into_main(work, head, "merge once")

    finding = checks.check_irreversible([remote], {}, _empty_history())

    assert finding.ok, finding.violations
    assert finding.figures["merges"] == 1


def test_a_head_merged_twice_is_a_duplicate(project: tuple[Path, Remote, str]) -> None:
    work, remote, head = project
    merge_into_main(work, head, "merge once")
    merge_into_main(work, head, "merge again")

    finding = checks.check_irreversible([remote], {}, _empty_history())

    assert finding.figures["duplicate_merges"] == 1
    assert finding.violations == [f"sample: head {head[:12]} merged 2 times"]


def test_a_merge_recorded_but_not_on_the_branch_is_caught(
    project: tuple[Path, Remote, str],
) -> None:
    work, remote, head = project
    merge_into_main(work, head, "merge once")
    landed = _git(remote.path, "rev-parse", "main")
    effects = [
        Effect("k1", 1, "merge", EffectState.SUCCEEDED, head, {"merge_sha": landed}),
        Effect("k2", 1, "merge", EffectState.SUCCEEDED, head, {"merge_sha": "f" * 40}),
    ]
    history = History([_task(1)], {}, [], [], effects, [], 0.0)

    finding = checks.check_irreversible([remote], {}, history)

    assert finding.violations == ["k2: SUCCEEDED, but ffffffffffff is not merged"]


def test_a_release_deployed_twice_is_a_duplicate(tmp_path: Path) -> None:
    log = tmp_path / "deploy.log"
    log.write_text(
        "2026-01-01T00:00:00Z staging abc\n"
        "2026-01-01T00:00:01Z production abc\n"
        "2026-01-01T00:00:02Z production abc\n"
        "2026-01-01T00:00:03Z production def\n"
    )

    finding = checks.check_irreversible([], {"sample": log}, _empty_history())

    assert finding.figures["duplicate_deploys"] == 1
    assert finding.violations == ["sample: release abc deployed to production 2 times"]


# -- I9 and I10 ---------------------------------------------------------------------------------


def _candidate(sha: str, passed: bool = True) -> GateRecord:
    return GateRecord(1, 5, "merge-candidate", sha, Stage.DEPLOY_STAGING, passed, "")


def test_a_merge_that_landed_untested_is_caught(project: tuple[Path, Remote, str]) -> None:
    work, remote, head = project
    merge_into_main(work, head, "merge")
    landed = _git(remote.path, "rev-parse", "main")
    tested = History([], {}, [], [], [], [], 0.0, [_candidate(landed)])
    assert checks.check_landed([remote], tested).ok

    # the branch's head passed, but not the merged tree that landed
    for gates in ([_candidate(head)], [_candidate(landed, passed=False)]):
        finding = checks.check_landed([remote], History([], {}, [], [], [], [], 0.0, gates))
        assert finding.violations == [
            f"sample: {landed[:12]} is on main without a passing merge-candidate test of that"
            " commit"
        ]


def test_a_target_moving_backwards_is_caught_unless_orch_rolled_it_back(
    project: tuple[Path, Remote, str], tmp_path: Path
) -> None:
    work, remote, head = project
    merge_into_main(work, head, "merge")
    old, new = remote.initial_sha, _git(remote.path, "rev-parse", "main")
    log = tmp_path / "deploy.log"
    log.write_text(f"t0 production {old}\nt1 production {new}\nt2 production {old}\n")

    finding = checks.check_forward([remote], {"sample": log}, _empty_history())
    assert finding.violations == [
        f"sample: production went from {new[:12]} to {old[:12]}, not a descendant, with no"
        " rollback recorded"
    ]
    rollback = Effect(
        "r", 1, "rollback:production", EffectState.SUCCEEDED, old, {"rolled_back": new}
    )
    history = History([_task(1)], {}, [], [], [rollback], [], 0.0)
    assert checks.check_forward([remote], {"sample": log}, history).ok


# -- I5 ------------------------------------------------------------------------------------------


def _task(task_id: int, repo: str = "sample") -> Task:
    return Task(
        id=task_id,
        key=f"SAM-{task_id}",
        repo=repo,
        title="t",
        body="",
        stage=Stage.DONE,
        status=TaskStatus.DONE,
        version=1,
        branch="orch/x",
        pipeline={},
    )


def _run(run_id: int, task_id: int, start: float, end: float | None) -> Run:
    return Run(run_id, task_id, run_id, Stage.DEVELOPMENT, 1, "a", 100 + run_id, 0, "", start, end)


def test_more_runs_in_flight_than_the_limit_are_caught() -> None:
    tasks = [_task(1), _task(2), _task(3)]
    runs = [_run(1, 1, 0.0, 10.0), _run(2, 2, 1.0, 5.0), _run(3, 3, 4.0, 6.0)]
    history = History(tasks, {}, [], runs, [], [], 20.0)

    within = checks.check_repo_limits(history, {"sample": 3}, {})
    beyond = checks.check_repo_limits(history, {"sample": 2}, {})

    assert within.ok and within.figures["peak"] == {"sample": 3}
    assert beyond.violations == ["sample: 3 runs in flight at 4.000, limit 2"]


def test_two_runs_of_one_task_at_once_are_caught_and_open_runs_are_ended_or_skipped() -> None:
    history = History(
        [_task(1)],
        {},
        [],
        [_run(1, 1, 0.0, None), _run(2, 1, 3.0, 4.0), _run(3, 1, 9.0, None)],
        [],
        [],
        20.0,
    )

    finding = checks.check_repo_limits(history, {"sample": 5}, {1: 3.5})

    assert finding.violations == ["SAM-1: two runs at once at 3.000"]
    assert finding.figures["runs_without_end_skipped"] == 1


# -- I6 ------------------------------------------------------------------------------------------


def _stopped(task_id: int, status: TaskStatus, stage: Stage) -> tuple[Task, Event]:
    task = Task(
        id=task_id,
        key=f"SAM-{task_id}",
        repo="sample",
        title="t",
        body="",
        stage=stage,
        status=status,
        version=2,
        branch="orch/x",
        pipeline={},
    )
    event = Event(task_id, task_id, f"{task_id}:stop", "stop", "person", {}, created_at=10.0)
    return task, event


def test_a_stop_that_never_applied_and_a_run_after_cancel_are_caught() -> None:
    cancelled, stop1 = _stopped(1, TaskStatus.CANCELLED, Stage.CANCELLED)
    ignored, stop2 = _stopped(2, TaskStatus.ACTIVE, Stage.REVIEW)
    finished, stop3 = _stopped(3, TaskStatus.DONE, Stage.DONE)
    cancel = Transition(
        1, 2, Stage.REVIEW, Stage.CANCELLED, TaskStatus.ACTIVE, TaskStatus.CANCELLED, "w", "", 12.0
    )
    history = History(
        [cancelled, ignored, finished],
        {1: [cancel]},
        [],
        [_run(1, 1, 13.0, 14.0)],
        [],
        [stop1, stop2, stop3],
        20.0,
    )

    finding = checks.check_stops(history, bound_s=60.0)

    assert finding.figures["outcomes"] == {"cancelled": 1, "not applied": 1, "done first": 1}
    assert finding.figures["longest_cancel_s"] == pytest.approx(2.0)
    assert finding.violations == [
        "SAM-1: a development run started after it was cancelled",
        "SAM-2 was stopped and has settled at review/active ('')",
    ]


# -- I7 ------------------------------------------------------------------------------------------


def test_notifications_are_counted_per_key_from_the_log_lines() -> None:
    sent = checks.notifications(
        {
            "serve#1": ["x [info ] notify SAM-1#1:notify:v2: SAM-1 waits for approve-plan"],
            "serve#2": [
                "x [info ] notify SAM-1#1:notify:v2: SAM-1 waits for approve-plan",
                "x [info ] notify SAM-1#1:notify:v4: SAM-1 is done: t",
                "x [warning] write fenced: job 3 token 2",
            ],
        }
    )

    finding = checks.check_keys(_empty_history(), sent)

    assert sent == {"SAM-1#1:notify:v2": ["serve#1", "serve#2"], "SAM-1#1:notify:v4": ["serve#2"]}
    assert finding.ok
    assert finding.figures["notifications_repeated"] == 1


def test_a_reused_pid_seen_long_after_a_run_started_is_not_taken_for_its_agent() -> None:
    owner: Any = object()  # whose child it was does not matter here
    agent = Seen(pid=4242, start="100", owner=owner, first=10.1, last=10.4)
    later = Seen(pid=4242, start="9000", owner=owner, first=95.0, last=120.0)  # pid wrapped
    ends = match_open_runs([later, agent], [(1, 4242, 10.0), (2, 4242, 200.0)])
    assert ends == {1: 10.4}


def test_the_agent_of_a_run_may_be_a_launcher_started_long_before_the_run() -> None:
    owner: Any = object()
    earlier = Seen(pid=4242, start="50", owner=owner, first=1.0, last=4.0)  # ended: pid reused
    waiting = Seen(pid=4242, start="100", owner=owner, first=5.0, last=80.0)  # told at 60
    ends = match_open_runs([earlier, waiting], [(1, 4242, 60.0), (2, 4242, 90.0)])
    assert ends == {1: 80.0}  # and a run after it ended is no one's seen here


# -- I8/F6 ---------------------------------------------------------------------------------------

FENCE_WAIT_S = 2.0


def _monitor() -> Monitor:
    """A monitor that samples nothing: its watches are set by hand."""
    return Monitor(None, list)  # type: ignore[arg-type]


def _life(number: int, ready_at: float, ended_at: float | None) -> Life:
    life = Life("worker", number, None, "1", ready_at, None, Path("out"), Path("err"))  # type: ignore[arg-type]
    life.ready_at, life.ended_at = ready_at, ended_at
    return life


def _restart(monitor: Monitor, life: Life, job_id: int, moved_after: float | None) -> None:
    assert life.ready_at is not None
    monitor.watch("restart", life, [HeldJob(job_id, job_id, 1)], life.ready_at)
    if moved_after is not None:
        monitor.watches[-1].resolved_at = life.ready_at + moved_after
        monitor.watches[-1].how = "reclaimed"


def test_a_restart_that_moves_work_late_breaks_the_bound_and_is_named() -> None:
    monitor = _monitor()
    quick, slow = _life(1, 100.0, None), _life(2, 200.0, None)
    _restart(monitor, quick, 7, 0.4)
    _restart(monitor, slow, 8, 34.6)

    finding = bounds(monitor, [quick, slow], FENCE_WAIT_S)

    assert finding.figures["longest_redrive_s"] == pytest.approx(34.6)
    assert finding.violations == [
        "work re-driven 34.6s after worker#2 restarted (job 8 of task 8, reclaimed)"
    ]


def test_a_restart_killed_again_before_its_work_moved_is_not_measured() -> None:
    monitor = _monitor()
    killed, next_one = _life(1, 100.0, 101.5), _life(2, 105.0, None)
    _restart(monitor, killed, 7, 34.6)  # moved only by a later process
    _restart(monitor, next_one, 7, 29.6 - 5.0)

    finding = bounds(monitor, [killed, next_one], FENCE_WAIT_S)

    assert finding.violations == []
    assert finding.figures["restarts_cut_short"] == 1
    assert finding.figures["longest_redrive_s"] == pytest.approx(24.6)


def test_a_restart_that_lived_past_the_bound_without_moving_work_is_measured() -> None:
    monitor = _monitor()
    idle = _life(1, 100.0, 140.0)
    _restart(monitor, idle, 7, None)

    finding = bounds(monitor, [idle], FENCE_WAIT_S)

    assert finding.violations == ["1 restart(s) after which runnable work never moved"]


FENCED_7 = "write fenced: job 7 token 1 of w1"
GIVEN_UP_7 = "lease given up: job 7 token 1 of w1: lease not renewed for 4s"


def _paused(
    tmp_path: Path, ended_after_resume: float | None, lines: tuple[str, ...] = (), number: int = 1
) -> Life:
    """worker#`number`, paused at 100 s and resumed at 140 s, with `lines` in its log."""
    err = tmp_path / f"worker-{number}.err"
    err.write_text("".join(f"x [warning] {line}\n" for line in lines))
    life = Life("worker", number, None, "1", 90.0, None, Path("out"), err)  # type: ignore[arg-type]
    life.ready_at = 90.0
    if ended_after_resume is not None:
        life.ended_at = 140.0 + ended_after_resume
    return life


def _taken(
    monitor: Monitor, life: Life, job: int = 7, *, while_stopped: bool = True, at: float = 131.0
) -> None:
    """`life` held `job` (token 1) when it was stopped; another process took it at `at`."""
    [w] = monitor.watch("pause", life, [HeldJob(job, job, 1)], 100.0)
    w.resolved_at, w.how = at, "reclaimed"
    w.resumed_at, w.taken_while_stopped = 140.0, while_stopped


def test_a_paused_worker_that_lived_on_after_losing_its_job_must_have_met_the_fence(
    tmp_path: Path,
) -> None:
    monitor = _monitor()
    unfenced = _paused(tmp_path, None)
    _taken(monitor, unfenced)

    finding = bounds(monitor, [unfenced], FENCE_WAIT_S)

    assert finding.violations == [
        "paused worker#1 lost job(s) 7 while stopped and lived on, but no write under them was"
        " fenced and no lease of theirs given up"
    ]


def test_a_paused_worker_whose_late_write_was_refused_keeps_the_bound(tmp_path: Path) -> None:
    monitor = _monitor()
    fenced = _paused(tmp_path, 30.0, (FENCED_7, FENCED_7))
    _taken(monitor, fenced)

    finding = bounds(monitor, [fenced], FENCE_WAIT_S)

    assert finding.violations == []
    assert finding.figures["fenced_writes"] == 2
    assert finding.figures["longest_reclaim_s"] == pytest.approx(31.0)


def test_a_paused_worker_that_died_before_its_next_heartbeat_had_nothing_to_fence(
    tmp_path: Path,
) -> None:
    monitor = _monitor()
    crashed = _paused(tmp_path, 0.3)  # at its crash point, just after SIGCONT
    _taken(monitor, crashed)

    finding = bounds(monitor, [crashed], FENCE_WAIT_S)

    assert finding.violations == []
    assert finding.figures["fenced_writes"] == 0


def test_a_paused_worker_that_gave_up_its_lease_keeps_the_bound(
    tmp_path: Path,
) -> None:
    monitor = _monitor()
    expired = _paused(tmp_path, 30.0, (GIVEN_UP_7,))
    _taken(monitor, expired)

    finding = bounds(monitor, [expired], FENCE_WAIT_S)

    assert finding.violations == []
    assert (finding.figures["fenced_writes"], finding.figures["leases_given_up"]) == (0, 1)


def test_a_paused_worker_whose_job_was_taken_only_after_it_resumed_had_nothing_to_fence(
    tmp_path: Path,
) -> None:
    """It renewed after SIGCONT, and the job changed hands once it was killed later on."""
    monitor = _monitor()
    renewed = _paused(tmp_path, 4.0)
    _taken(monitor, renewed, while_stopped=False, at=146.0)

    finding = bounds(monitor, [renewed], FENCE_WAIT_S)

    assert finding.violations == []


def test_a_fence_line_counts_only_for_its_own_worker_job_and_token(
    tmp_path: Path,
) -> None:
    monitor = _monitor()
    fenced = _paused(tmp_path, None, (FENCED_7,), number=1)
    # worker#2's lines name another job, and job 8 under a later claim: not the one it lost
    other = ("write fenced: job 7 token 1 of w2", "lease given up: job 8 token 2 of w2: ttl")
    unfenced = _paused(tmp_path, None, other, number=2)
    _taken(monitor, fenced, 7)
    _taken(monitor, unfenced, 8)

    finding = bounds(monitor, [fenced, unfenced], FENCE_WAIT_S)

    assert finding.violations == [
        "paused worker#2 lost job(s) 8 while stopped and lived on, but no write under them was"
        " fenced and no lease of theirs given up"
    ]
