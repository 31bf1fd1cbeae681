"""The store contract, run on every store: memory, SQLite file and PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from orch.adapters.store.sql import SqlStore
from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.errors import Busy, CancelRequested, Conflict, LeaseLost
from orch.domain.ledger import Usage
from orch.domain.metrics import FENCED_WRITES, LEASE_RECLAIMS
from orch.domain.model import Claim, GateRecord, Task, Ticket
from orch.domain.pipeline import Checkpoint, Decision, Move, Pipeline
from orch.domain.states import EffectState, JobState, RunOutcome, Stage, TaskStatus
from orch.ports import SweepResult
from orch.testing import advance, retry, set_timer, supersede

# the default pipeline without its human waits: every success is another ACTIVE stage
FLOW: Pipeline = replace(pl.default_pipeline(), checkpoints=())
# a pipeline whose first stage waits for a person
GUARDED: Pipeline = replace(
    pl.default_pipeline(),
    checkpoints=(Checkpoint("go-ahead", before=Stage.ANALYSIS, reject_to=Stage.ANALYSIS),),
)

OWNER = "host:1:test"


def one_per_repo(_repo: str) -> int:
    return 1


def new_task(
    store: SqlStore, key: str = "APP-1", repo: str = "app", pipeline: Pipeline = FLOW
) -> Task:
    ticket = Ticket(key=key, repo=repo, title=f"title of {key}", body="body")
    return store.create_task(ticket, f"orch/{key}", pl.to_dict(pipeline), pl.start(pipeline), "t")


def claim(
    store: SqlStore,
    ttl_s: float = 60.0,
    limit: Callable[[str], int] = one_per_repo,
    owner: str = OWNER,
) -> Claim:
    c = store.claim(owner, ttl_s, limit)
    assert c is not None, "expected a runnable job"
    return c


@dataclass(frozen=True)
class Snapshot:
    task: Task
    transitions: list[Any]
    jobs: list[Any]
    effects: list[Any]
    gates: list[Any]
    runs: list[Any]
    pending: list[Any]


def snapshot(store: SqlStore, task_id: int) -> Snapshot:
    return Snapshot(
        task=store.get_task(task_id),
        transitions=store.transitions(task_id),
        jobs=store.jobs(task_id),
        effects=store.effects(task_id),
        gates=store.gate_records(task_id),
        runs=store.runs(task_id),
        pending=store.pending_events(task_id),
    )


def gate(task: Task, version: int, passed: bool, reason: str, head: str = "sha-1") -> GateRecord:
    return GateRecord(task.id, version, "tests", head, task.stage, passed, reason)


# -- creating tasks -----------------------------------------------------------------------------


def test_create_task_writes_version_one_a_transition_and_one_queued_job(store: SqlStore) -> None:
    task = new_task(store)
    assert (task.stage, task.status, task.version) == (Stage.ANALYSIS, TaskStatus.ACTIVE, 1)
    assert task.branch == "orch/APP-1"
    assert pl.from_dict(task.pipeline) == FLOW
    [tr] = store.transitions(task.id)
    assert (tr.version, tr.from_stage, tr.to_stage, tr.to_status, tr.actor) == (
        1,
        Stage.ANALYSIS,
        Stage.ANALYSIS,
        TaskStatus.ACTIVE,
        "t",
    )
    [job] = store.jobs(task.id)
    assert (job.state, job.version, job.stage, job.attempt, job.repo) == (
        JobState.QUEUED,
        1,
        Stage.ANALYSIS,
        0,
        "app",
    )


def test_create_task_waiting_at_a_checkpoint_enqueues_no_job(store: SqlStore) -> None:
    task = new_task(store, pipeline=GUARDED)
    assert (task.status, task.waiting_for, task.version) == (TaskStatus.WAITING, "go-ahead", 1)
    assert len(store.transitions(task.id)) == 1
    assert store.jobs(task.id) == []
    assert store.claim(OWNER, 60, one_per_repo) is None


def test_a_second_live_task_for_the_same_ticket_is_a_conflict(store: SqlStore) -> None:
    first = new_task(store, "APP-1")
    with pytest.raises(Conflict):
        new_task(store, "APP-1")
    assert [t.id for t in store.list_tasks()] == [first.id]
    assert len(store.jobs(first.id)) == 1


def test_a_ticket_key_is_live_once_across_repositories(store: SqlStore) -> None:
    new_task(store, "APP-1", repo="app")
    with pytest.raises(Conflict):
        new_task(store, "APP-1", repo="other")


def test_find_task_returns_the_task_for_a_key(store: SqlStore) -> None:
    task = new_task(store, "APP-7")
    found = store.find_task("APP-7")
    assert found is not None and found.id == task.id
    assert store.find_task("APP-8") is None


def test_board_tickets_are_numbered_per_prefix(store: SqlStore) -> None:
    a1 = store.file_ticket("app", "APP", "one", "")
    a2 = store.file_ticket("app", "APP", "two", "")
    b1 = store.file_ticket("lib", "LIB", "three", "")
    assert (a1.key, a2.key, b1.key) == ("APP-1", "APP-2", "LIB-1")
    assert store.get_ticket("APP-2") == Ticket("APP-2", "app", "two", "", "")
    assert store.get_ticket("APP-3") is None


# -- claiming -----------------------------------------------------------------------------------


def test_claim_returns_none_when_nothing_is_runnable(store: SqlStore) -> None:
    assert store.claim(OWNER, 60, one_per_repo) is None


def test_claim_bumps_the_token_and_the_attempt(store: SqlStore) -> None:
    task = new_task(store)
    c1 = claim(store)
    assert (c1.task_id, c1.version, c1.stage, c1.attempt, c1.owner) == (
        task.id,
        1,
        Stage.ANALYSIS,
        1,
        OWNER,
    )
    [job] = store.jobs(task.id)
    assert (job.state, job.token, job.owner, job.attempt) == (
        JobState.RUNNING,
        c1.token,
        OWNER,
        1,
    )
    assert c1.token > 0
    retry(store, c1, "try again", backoff_s=0)
    c2 = claim(store)
    assert c2.job_id == c1.job_id
    assert c2.attempt == 2
    assert c2.token > c1.token


def test_a_running_job_is_not_claimed_twice(store: SqlStore) -> None:
    new_task(store)
    claim(store)
    assert store.claim("other:2:x", 60, lambda _r: 10) is None


def test_per_repo_limit_one_claims_one_job_of_the_repo(store: SqlStore) -> None:
    new_task(store, "APP-1", "app")
    new_task(store, "APP-2", "app")
    first = claim(store)
    assert store.claim(OWNER, 60, one_per_repo) is None
    other = new_task(store, "LIB-1", "lib")
    second = claim(store)
    assert second.task_id == other.id
    assert first.task_id != second.task_id


def test_per_repo_limit_two_claims_both_jobs_of_the_repo(store: SqlStore) -> None:
    a = new_task(store, "APP-1", "app")
    b = new_task(store, "APP-2", "app")
    c = new_task(store, "APP-3", "app")
    got = {claim(store, limit=lambda _r: 2).task_id, claim(store, limit=lambda _r: 2).task_id}
    assert got == {a.id, b.id}
    assert store.claim(OWNER, 60, lambda _r: 2) is None
    assert c.id not in got


def test_per_repo_limit_is_per_repository(store: SqlStore) -> None:
    new_task(store, "APP-1", "app")
    new_task(store, "APP-2", "app")
    lib = new_task(store, "LIB-1", "lib")
    limits = {"app": 0, "lib": 1}
    c = claim(store, limit=lambda r: limits[r])
    assert c.task_id == lib.id
    assert store.claim(OWNER, 60, lambda r: limits[r]) is None


def test_a_limit_of_zero_claims_nothing(store: SqlStore) -> None:
    new_task(store)
    assert store.claim(OWNER, 60, lambda _r: 0) is None
    [job] = store.jobs(store.list_tasks()[0].id)
    assert job.state == JobState.QUEUED


def test_an_active_task_keeps_its_repo_slot_between_stages(store: SqlStore) -> None:
    new_task(store, "APP-1", "app")
    new_task(store, "APP-2", "app")
    first = claim(store)
    onward = pl.Decision(pl.Move.ADVANCE, Stage.ARCHITECTURE, TaskStatus.ACTIVE, "next")
    advance(store, first, Stage.ANALYSIS, onward, "w")
    # the first task is still active: its next stage, not the second task, gets the slot
    assert claim(store).task_id == first.task_id
    assert store.claim(OWNER, 60, one_per_repo) is None


def test_a_task_that_waits_for_a_person_gives_its_repo_slot_back(store: SqlStore) -> None:
    new_task(store, "APP-1", "app")
    second = new_task(store, "APP-2", "app")
    first = claim(store)
    plan_wait = pl.after_success(pl.default_pipeline(), Stage.ANALYSIS)
    waiting = advance(store, first, Stage.ANALYSIS, plan_wait, "w")
    assert waiting.status == TaskStatus.WAITING
    assert claim(store).task_id == second.id


# -- compare-and-set ----------------------------------------------------------------------------


def test_advance_moves_the_task_and_enqueues_the_next_job(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    moved = advance(store, c, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "worker:w")
    assert (moved.stage, moved.status, moved.version) == (
        Stage.ARCHITECTURE,
        TaskStatus.ACTIVE,
        2,
    )
    jobs = store.jobs(task.id)
    assert [(j.version, j.state) for j in jobs] == [(1, JobState.SUCCEEDED), (2, JobState.QUEUED)]
    last = store.transitions(task.id)[-1]
    assert (last.version, last.from_stage, last.to_stage, last.actor) == (
        2,
        Stage.ANALYSIS,
        Stage.ARCHITECTURE,
        "worker:w",
    )


def test_advance_with_the_wrong_expected_stage_is_a_conflict_and_writes_nothing(
    store: SqlStore,
) -> None:
    task = new_task(store)
    c = claim(store)
    before = snapshot(store, task.id)
    with pytest.raises(Conflict):
        advance(store, c, Stage.DEVELOPMENT, pl.after_success(FLOW, Stage.DEVELOPMENT), "w")
    assert snapshot(store, task.id) == before
    # the lease is still held: the right CAS goes through
    advance(store, c, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    assert store.get_task(task.id).version == 2


def test_advance_with_a_stale_version_is_a_conflict_and_writes_nothing(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    stale = replace(c, version=c.version + 5)
    before = snapshot(store, task.id)
    with pytest.raises(Conflict):
        advance(store, stale, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    assert snapshot(store, task.id) == before


def test_advance_into_a_wait_enqueues_no_job(store: SqlStore) -> None:
    p = pl.default_pipeline()
    task = new_task(store, pipeline=p)
    c = claim(store)
    moved = advance(store, c, Stage.ANALYSIS, pl.after_success(p, Stage.ANALYSIS), "w")
    assert (moved.status, moved.waiting_for) == (TaskStatus.WAITING, "approve-plan")
    assert [j.state for j in store.jobs(task.id)] == [JobState.SUCCEEDED]
    assert store.claim(OWNER, 60, one_per_repo) is None


def test_parking_a_task_kills_its_job_and_enqueues_nothing(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    park = pl.after_attempt_failure(FLOW, Stage.ANALYSIS, FLOW.max_attempts, "agent exited 1")
    moved = advance(store, c, Stage.ANALYSIS, park, "w")
    assert moved.status == TaskStatus.NEEDS_OPERATOR
    assert "agent exited 1" in moved.status_reason
    assert [j.state for j in store.jobs(task.id)] == [JobState.DEAD]


def test_a_rework_counts_a_round_and_keeps_the_feedback(store: SqlStore) -> None:
    task = new_task(store)
    rework = Decision(
        Move.ADVANCE, Stage.ANALYSIS, TaskStatus.ACTIVE, "r", feedback="do it again", rework=True
    )
    c = claim(store)
    moved = advance(store, c, Stage.ANALYSIS, rework, "w")
    assert (moved.rework_rounds, moved.feedback) == (1, "do it again")
    c2 = claim(store)
    moved = advance(store, c2, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    assert moved.rework_rounds == 1
    assert moved.feedback == "", "feedback is cleared when the task moves on"
    assert task.id == moved.id


def test_transitions_are_gap_free_and_follow_pipeline_edges(store: SqlStore) -> None:
    task = new_task(store)
    stage = task.stage
    # one retry and one rework on the way, then straight through to done
    c = claim(store)
    retry(store, c, "flaky", backoff_s=0)
    while True:
        c = claim(store)
        if stage == Stage.REVIEW and store.get_task(task.id).rework_rounds == 0:
            d = pl.after_gate_failure(FLOW, stage, 0, c.attempt, "request-changes")
        else:
            d = pl.after_success(FLOW, stage)
        moved = advance(store, c, stage, d, "w")
        stage = moved.stage
        if moved.status == TaskStatus.DONE:
            break
    history = store.transitions(task.id)
    assert [t.version for t in history] == list(range(1, len(history) + 1))
    assert history[-1].version == store.get_task(task.id).version
    # creation, one move per stage, and the rework's detour back through development
    assert len(history) == 1 + len(FLOW.stages) + 2
    edges = FLOW.edges()
    for t in history:
        assert (t.from_stage, t.to_stage) in edges
    for prev, nxt in itertools.pairwise(history):
        assert nxt.from_stage == prev.to_stage
        assert nxt.from_status == prev.to_status
    assert all(j.state == JobState.SUCCEEDED for j in store.jobs(task.id))
    assert store.claim(OWNER, 60, one_per_repo) is None


# -- leases, the sweeper and fencing ------------------------------------------------------------


def test_an_expired_lease_is_requeued_by_the_sweeper(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store, ttl_s=-1)
    result = store.sweep(max_attempts=3)
    assert (result.requeued, result.dead) == (1, 0)
    [job] = store.jobs(task.id)
    assert (job.state, job.owner, job.last_error) == (JobState.QUEUED, None, "lease expired")
    again = claim(store)
    assert again.job_id == c.job_id
    assert again.token > c.token
    assert again.attempt == 2


def test_a_live_lease_is_not_swept(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store, ttl_s=60)
    result = store.sweep(max_attempts=3)
    assert (result.requeued, result.dead) == (0, 0)
    [job] = store.jobs(task.id)
    assert (job.state, job.token) == (JobState.RUNNING, c.token)


def test_renewal_keeps_a_lease_from_being_swept(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store, ttl_s=-1)
    store.renew(c, ttl_s=60)
    assert store.sweep(max_attempts=3).requeued == 0
    assert store.jobs(task.id)[0].state == JobState.RUNNING


def test_the_lease_expiry_is_set_from_the_database_clock(store: SqlStore) -> None:
    task = new_task(store)
    before = store.now()
    claim(store, ttl_s=60)
    after = store.now()
    [job] = store.jobs(task.id)
    assert job.expires_at is not None
    assert before + 60 <= job.expires_at <= after + 60


def test_the_sweeper_dead_letters_a_job_whose_attempts_are_used_up(store: SqlStore) -> None:
    task = new_task(store)
    for _ in range(2):
        claim(store, ttl_s=-1)
        assert store.sweep(max_attempts=3).requeued == 1
    claim(store, ttl_s=-1)
    result = store.sweep(max_attempts=3)
    assert (result.requeued, result.dead) == (0, 1)
    [job] = store.jobs(task.id)
    assert job.state == JobState.DEAD
    after = store.get_task(task.id)
    assert (after.status, after.stage, after.version) == (
        TaskStatus.NEEDS_OPERATOR,
        Stage.ANALYSIS,
        2,
    )
    last = store.transitions(task.id)[-1]
    assert (last.version, last.actor, last.from_status, last.to_status) == (
        2,
        "sweeper",
        TaskStatus.ACTIVE,
        TaskStatus.NEEDS_OPERATOR,
    )
    assert store.claim(OWNER, 60, one_per_repo) is None


def test_a_dead_lettered_job_frees_its_repo_slot(store: SqlStore) -> None:
    new_task(store, "APP-1")
    other = new_task(store, "APP-2")
    claim(store, ttl_s=-1)
    assert store.sweep(max_attempts=1).dead == 1
    assert claim(store).task_id == other.id


def _stale_and_live_claims(store: SqlStore) -> tuple[Task, Claim, Claim]:
    task = new_task(store)
    old = claim(store, ttl_s=-1, owner="paused:1:old")
    assert store.sweep(max_attempts=3).requeued == 1
    new = claim(store, owner="live:2:new")
    assert new.job_id == old.job_id
    assert new.token > old.token
    return task, old, new


FencedWrite = Callable[[SqlStore, Task, Claim, Claim], object]


def _renew(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return s.renew(old, 60)


def _advance(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return advance(s, old, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")


def _retry(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return retry(s, old, "stale failure", 0)


def _supersede(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return supersede(s, old)


def _record_gate(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return s.record_gate(old, gate(t, old.version, False, "stale verdict"))


def _begin_effect(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return s.begin_effect(old, "APP-1:deploy-staging:merge:v1", "merge", "app", "sha-old")


def _finish_effect(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return s.finish_effect(old, "live-effect", EffectState.SUCCEEDED, {"by": "old"})


def _start_run(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return s.start_run(old, "scripted", 4242, "/tmp/old.log")


def _finish_run(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    run_id = s.runs(t.id)[0].id
    return s.finish_run(old, run_id, 0, Usage(5, 5, cost_usd=1.0))


def _mark_events(s: SqlStore, t: Task, old: Claim, new: Claim) -> object:
    return s.mark_events(old, [e.id for e in s.pending_events(t.id)])


FENCED: dict[str, FencedWrite] = {
    "renew": _renew,
    "advance": _advance,
    "retry": _retry,
    "supersede": _supersede,
    "record_gate": _record_gate,
    "begin_effect": _begin_effect,
    "finish_effect": _finish_effect,
    "start_run": _start_run,
    "finish_run": _finish_run,
    "mark_events": _mark_events,
}


@pytest.mark.parametrize("write", sorted(FENCED))
def test_every_write_under_a_fenced_off_claim_raises_lease_lost_and_writes_nothing(
    store: SqlStore, write: str
) -> None:
    task, old, new = _stale_and_live_claims(store)
    # things the live owner made, for the stale owner to try to touch
    store.begin_effect(new, "live-effect", "notify", "app", "")
    store.start_run(new, "scripted", 1111, "/tmp/new.log")
    store.append_event(task.id, "ev-1", "approve", "alice", {})
    before = snapshot(store, task.id)
    with pytest.raises(LeaseLost):
        FENCED[write](store, task, old, new)
    assert snapshot(store, task.id) == before
    # the live owner is unaffected
    store.renew(new, 60)
    advance(store, new, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    assert store.get_task(task.id).version == 2


def test_the_store_counts_the_leases_it_takes_back_and_the_writes_it_refuses(
    store: SqlStore,
) -> None:
    task, old, new = _stale_and_live_claims(store)
    with pytest.raises(LeaseLost):
        store.renew(old, 60)
    with pytest.raises(LeaseLost):
        store.start_run(old, "scripted", 1, "/tmp/x.log")
    store.renew(new, 60)

    counters = store.metrics().counters
    assert (counters[LEASE_RECLAIMS], counters[FENCED_WRITES]) == (1, 2)
    assert store.runs(task.id) == []  # the refused write left nothing but its count


def test_writes_under_a_claim_whose_job_finished_raise_lease_lost(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    advance(store, c, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    before = snapshot(store, task.id)
    with pytest.raises(LeaseLost):
        store.renew(c, 60)
    with pytest.raises(LeaseLost):
        retry(store, c, "late", 0)
    assert snapshot(store, task.id) == before


# -- retry and backoff ----------------------------------------------------------------------------


def test_retry_requeues_the_job_with_the_reason(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    retry(store, c, "agent exited 1", backoff_s=0)
    [job] = store.jobs(task.id)
    assert (job.state, job.owner, job.last_error) == (JobState.QUEUED, None, "agent exited 1")
    after = store.get_task(task.id)
    assert (after.version, after.feedback, after.stage) == (1, "", Stage.ANALYSIS)
    again = claim(store)
    assert (again.attempt, again.last_error) == (2, "agent exited 1")
    assert len(store.transitions(task.id)) == 1, "a retry is not a transition"


def test_a_retry_without_backoff_is_claimable_at_once(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    retry(store, c, "x", backoff_s=0)
    assert claim(store).attempt == 2


def test_a_retry_with_backoff_is_not_claimable_until_it_is_due(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    retry(store, c, "x", backoff_s=3600)
    assert store.claim(OWNER, 60, one_per_repo) is None
    due = store.next_run_after()
    assert due is not None and due > store.now() + 3000
    assert store.jobs(task.id)[0].state == JobState.QUEUED


def test_next_run_after_is_none_without_queued_jobs(store: SqlStore) -> None:
    assert store.next_run_after() is None
    new_task(store)
    assert store.next_run_after() is not None
    claim(store)
    assert store.next_run_after() is None


# -- the inbox ------------------------------------------------------------------------------------


def test_an_event_key_is_appended_once(store: SqlStore) -> None:
    task = new_task(store)
    assert store.append_event(task.id, "k-1", "approve", "alice", {"comment": "ok"}) is True
    assert store.append_event(task.id, "k-1", "approve", "alice", {"comment": "ok"}) is False
    [ev] = store.pending_events(task.id)
    assert (ev.key, ev.kind, ev.actor, ev.payload) == ("k-1", "approve", "alice", {"comment": "ok"})


def test_an_event_for_a_waiting_task_enqueues_exactly_one_job(store: SqlStore) -> None:
    task = new_task(store, pipeline=GUARDED)
    assert store.append_event(task.id, "k-1", "approve", "alice", {})
    assert store.append_event(task.id, "k-2", "reject", "bob", {})
    assert store.append_event(task.id, "k-1", "approve", "alice", {}) is False
    [job] = store.jobs(task.id)
    assert (job.state, job.version, job.stage) == (JobState.QUEUED, 1, Stage.ANALYSIS)
    c = claim(store)
    assert c.task_id == task.id
    assert len(store.pending_events(task.id)) == 2


def test_an_event_after_the_inbox_job_of_a_wait_ran_enqueues_another(store: SqlStore) -> None:
    # a stray event woke the waiting task, its job read the inbox and was superseded; the
    # person's real decision that follows must wake the task again
    task = new_task(store, pipeline=GUARDED)
    assert store.append_event(task.id, "stray", "approve", "mallory", {"checkpoint": "other"})
    c = claim(store)
    store.mark_events(c, [e.id for e in store.pending_events(task.id)])
    supersede(store, c)
    assert store.append_event(task.id, "real", "approve", "alice", {"checkpoint": "go-ahead"})
    again = store.claim(OWNER, 60, one_per_repo)
    assert again is not None, "the decision sits in the inbox with no job to read it"
    assert again.task_id == task.id
    assert [e.key for e in store.pending_events(task.id)] == ["real"]


def test_an_event_for_an_active_task_enqueues_nothing_more(store: SqlStore) -> None:
    task = new_task(store)
    store.append_event(task.id, "k-1", "approve", "alice", {})
    assert len(store.jobs(task.id)) == 1


def test_marked_events_are_no_longer_pending(store: SqlStore) -> None:
    task = new_task(store)
    store.append_event(task.id, "k-1", "approve", "alice", {})
    store.append_event(task.id, "k-2", "approve", "bob", {})
    c = claim(store)
    first = store.pending_events(task.id)[0]
    store.mark_events(c, [first.id])
    assert [e.key for e in store.pending_events(task.id)] == ["k-2"]


# -- effects --------------------------------------------------------------------------------------


def test_begin_effect_is_idempotent_by_key(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    first = store.begin_effect(c, "APP-1:notify:v2", "notify", "app", "pre-1")
    second = store.begin_effect(c, "APP-1:notify:v2", "notify", "app", "pre-2")
    assert first == second
    assert (first.state, first.precondition, first.task_id) == (
        EffectState.INITIATED,
        "pre-1",
        task.id,
    )
    assert len(store.effects(task.id)) == 1


def test_an_effect_succeeds_at_most_once(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    store.begin_effect(c, "k", "notify", "app", "")
    done = store.finish_effect(c, "k", EffectState.SUCCEEDED, {"n": 1})
    assert (done.state, done.result) == (EffectState.SUCCEEDED, {"n": 1})
    with pytest.raises(Conflict):
        store.finish_effect(c, "k", EffectState.SUCCEEDED, {"n": 2})
    [effect] = store.effects(task.id)
    assert (effect.state, effect.result) == (EffectState.SUCCEEDED, {"n": 1})


def test_an_unknown_effect_may_still_be_resolved(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    store.begin_effect(c, "k", "merge", "app", "sha-1")
    assert store.finish_effect(c, "k", EffectState.UNKNOWN, {}).state == EffectState.UNKNOWN
    done = store.finish_effect(c, "k", EffectState.SUCCEEDED, {"merge_sha": "m"})
    assert done.state == EffectState.SUCCEEDED


def test_a_second_merge_in_flight_for_the_same_repo_is_refused(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    store.begin_effect(c, "APP-1:merge:v5", "merge", "app", "sha-1")
    with pytest.raises(Busy):
        store.begin_effect(c, "APP-2:merge:v3", "merge", "app", "sha-2")
    assert store.get_effect("APP-2:merge:v3") is None
    assert [e.key for e in store.effects(task.id)] == ["APP-1:merge:v5"]


def test_an_unknown_merge_also_holds_the_repo_merge_slot(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    store.begin_effect(c, "m-1", "merge", "app", "sha-1")
    store.finish_effect(c, "m-1", EffectState.UNKNOWN, {})
    with pytest.raises(Busy):
        store.begin_effect(c, "m-2", "merge", "app", "sha-2")
    assert store.get_effect("m-2") is None


@pytest.mark.parametrize("resolved_by", ["its worker", "the sweeper"])
def test_a_job_retried_for_a_taken_merge_slot_is_due_once_the_merge_in_flight_is_resolved(
    store: SqlStore, resolved_by: str
) -> None:
    new_task(store, "APP-1")
    new_task(store, "APP-2")
    new_task(store, "WEB-1", repo="web")
    merging = claim(store, limit=lambda _repo: 5)
    store.begin_effect(merging, "APP-1:merge", "merge", "app", "sha-1")
    waiting, elsewhere = claim(store, limit=lambda _repo: 5), claim(store, limit=lambda _repo: 5)
    assert {waiting.task_id, elsewhere.task_id} == {2, 3}
    if waiting.task_id == 3:
        waiting, elsewhere = elsewhere, waiting
    with pytest.raises(Busy) as busy:
        store.begin_effect(waiting, "APP-2:merge", "merge", "app", "sha-2")
    retry(store, waiting, str(busy.value), 3600.0, counts=False)
    retry(store, elsewhere, "something else", 3600.0)  # another repository's wait
    assert store.claim(OWNER, 60.0, lambda _repo: 5) is None  # both wait their hour

    if resolved_by == "its worker":
        store.finish_effect(merging, "APP-1:merge", EffectState.SUCCEEDED, {"merge_sha": "m"})
    else:  # the worker died: the sweep gives its job back, and the forge's word settles it
        retry(store, merging, "its worker died", 3600.0)
        assert store.settle_effect("APP-1:merge", EffectState.SUCCEEDED, {"merge_sha": "m"})

    again = store.claim(OWNER, 60.0, lambda _repo: 5)
    assert again is not None and again.task_id == waiting.task_id
    assert store.claim(OWNER, 60.0, lambda _repo: 5) is None


def test_one_deploy_per_target_starts_at_a_time_and_other_targets_are_free(
    store: SqlStore,
) -> None:
    new_task(store)
    c = claim(store)
    store.begin_effect(c, "d-1", "deploy:production", "app", "sha-1")
    with pytest.raises(Busy):
        store.begin_effect(c, "d-2", "deploy:production", "app", "sha-2")
    store.begin_effect(c, "d-3", "deploy:staging", "app", "sha-2")
    store.begin_effect(c, "d-4", "deploy:production", "web", "sha-2")
    store.finish_effect(c, "d-1", EffectState.SUCCEEDED, {})
    assert store.begin_effect(c, "d-2", "deploy:production", "app", "sha-2").state == (
        EffectState.INITIATED
    )


def test_the_latest_effect_of_a_kind_is_the_one_that_changed_last(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    kinds = ("deploy:production", "rollback:production")
    assert store.latest_effect("app", kinds) is None
    store.begin_effect(c, "d-1", "deploy:production", "app", "sha-1")
    store.begin_effect(c, "d-2", "deploy:staging", "app", "sha-2")
    store.finish_effect(c, "d-2", EffectState.SUCCEEDED, {})
    assert store.latest_effect("app", kinds) is None  # in flight, or another kind
    store.finish_effect(c, "d-1", EffectState.SUCCEEDED, {})
    store.begin_effect(c, "d-3", "deploy:production", "app", "sha-3")
    store.finish_effect(c, "d-3", EffectState.FAILED, {})
    store.begin_effect(c, "r-1", "rollback:production", "app", "sha-0")
    store.finish_effect(c, "r-1", EffectState.SUCCEEDED, {})
    latest = store.latest_effect("app", kinds)
    assert latest is not None and latest.key == "r-1"
    assert store.latest_effect("web", kinds) is None
    failed = store.latest_effect("app", kinds, EffectState.FAILED)
    assert failed is not None and failed.key == "d-3"


def test_a_failed_effect_is_re_armed_by_a_new_intent(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    store.begin_effect(c, "deploy:app:staging:abc", "deploy:staging", "app", "abc")
    store.finish_effect(c, "deploy:app:staging:abc", EffectState.FAILED, {"exit_code": 1})
    again = store.begin_effect(c, "deploy:app:staging:abc", "deploy:staging", "app", "abc")
    assert (again.state, again.result) == (EffectState.INITIATED, {})
    assert len(store.effects(task.id)) == 1


def test_a_succeeded_effect_is_returned_as_it_is_by_a_new_intent(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    store.begin_effect(c, "k", "notify", "app", "")
    store.finish_effect(c, "k", EffectState.SUCCEEDED, {"text": "hi"})
    again = store.begin_effect(c, "k", "notify", "app", "")
    assert (again.state, again.result) == (EffectState.SUCCEEDED, {"text": "hi"})


def test_merges_in_different_repos_may_be_in_flight_together(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    store.begin_effect(c, "m-app", "merge", "app", "sha-1")
    other = store.begin_effect(c, "m-lib", "merge", "lib", "sha-2")
    assert other.state == EffectState.INITIATED


@pytest.mark.parametrize("outcome", [EffectState.SUCCEEDED, EffectState.FAILED])
def test_a_resolved_merge_frees_the_repo_for_the_next_merge(
    store: SqlStore, outcome: EffectState
) -> None:
    new_task(store)
    c = claim(store)
    store.begin_effect(c, "m-1", "merge", "app", "sha-1")
    store.finish_effect(c, "m-1", outcome, {})
    nxt = store.begin_effect(c, "m-2", "merge", "app", "sha-2")
    assert (nxt.key, nxt.state) == ("m-2", EffectState.INITIATED)


# -- gate verdicts --------------------------------------------------------------------------------


def test_a_gate_verdict_is_recorded_once_and_replayed(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    first = store.record_gate(c, gate(task, 1, True, "tests passed"))
    again = store.record_gate(c, gate(task, 1, False, "tests failed"))
    assert (first.passed, first.reason) == (True, "tests passed")
    assert (again.passed, again.reason) == (True, "tests passed")
    assert len(store.gate_records(task.id)) == 1
    found = store.find_gate(task.id, 1, "tests", "sha-1")
    assert found is not None and found.passed


def test_a_new_head_or_version_gets_its_own_verdict(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    store.record_gate(c, gate(task, 1, True, "ok", head="sha-1"))
    later = store.record_gate(c, gate(task, 1, False, "red", head="sha-2"))
    assert not later.passed
    assert store.find_gate(task.id, 2, "tests", "sha-1") is None
    assert len(store.gate_records(task.id)) == 2


# -- runs -----------------------------------------------------------------------------------------


def test_runs_record_exit_and_usage_and_add_to_the_task_cost(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    run_id = store.start_run(c, "scripted", 123, "/tmp/x.log")
    store.finish_run(c, run_id, 0, Usage(10, 4, cost_usd=0.5))
    [run] = store.runs(task.id)
    assert (run.agent, run.pid, run.exit_code, run.attempt, run.stage) == (
        "scripted",
        123,
        0,
        1,
        Stage.ANALYSIS,
    )
    assert run.ended_at is not None
    after = store.get_task(task.id)
    assert (after.tokens_in, after.tokens_out, after.cost_usd) == (10, 4, 0.5)


def test_spend_over_time_sums_runs_per_interval_since_a_moment(store: SqlStore) -> None:
    new_task(store, "APP-1")
    new_task(store, "WEB-1", repo="web")
    first = claim(store)
    run_id = store.start_run(first, "scripted", 1, "/tmp/a.log")
    store.finish_run(first, run_id, 0, Usage(10, 4, cost_usd=0.5))
    second = claim(store)
    run_id = store.start_run(second, "scripted", 2, "/tmp/b.log")
    store.finish_run(second, run_id, 0, Usage(1, 1, cost_usd=0.25))
    hours = {r.started_at // 3600 * 3600 for t in store.list_tasks() for r in store.runs(t.id)}

    spent = store.spend_over_time(min(hours), 3600)

    assert set(spent) == hours
    assert sum(u.tokens_in for u in spent.values()) == 11
    assert sum(u.cost_usd for u in spent.values()) == pytest.approx(0.75)
    assert store.spend_over_time(max(hours) + 3600, 3600) == {}


def test_a_run_records_its_cache_tokens_session_and_the_agents_account(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    run_id = store.start_run(c, "claude", 7, "/tmp/x.log")
    store.finish_run(
        c, run_id, 0, Usage(10, 4, 900, 30, 0.25), session="s-1", detail="wrote the spec"
    )
    [run] = store.runs(task.id)
    assert run.usage == Usage(10, 4, 900, 30, 0.25)
    assert (run.session, run.detail) == ("s-1", "wrote the spec")
    assert store.get_task(task.id).spent == Usage(10, 4, 900, 30, 0.25)


def test_the_usage_of_a_run_whose_lease_was_lost_is_counted_once_and_the_sweep_closed_it(
    store: SqlStore,
) -> None:
    task = new_task(store)
    lost = claim(store)
    run_id = store.start_run(lost, "claude", 7, "/tmp/lost.log")
    # the run's worker lost the lease: the sweep that took it closed its run; its spending can
    # still be written
    third = claim_again(store, lost)
    with pytest.raises(LeaseLost):
        store.finish_run(lost, run_id, -9, Usage(100, 10, cost_usd=0.1))
    store.record_usage(task.id, run_id, Usage(100, 10, cost_usd=0.1))
    store.record_usage(task.id, run_id, Usage(100, 10, cost_usd=0.1))
    [run] = store.runs(task.id)
    assert run.usage == Usage(100, 10, cost_usd=0.1)
    assert run.ended_at is not None
    assert (run.outcome, run.exit_code) == (RunOutcome.LEASE_LOST, None)
    assert store.get_task(task.id).spent == Usage(100, 10, cost_usd=0.1)
    # and the live owner's own run is counted too
    live = store.start_run(third, "claude", 8, "/tmp/third.log")
    store.finish_run(third, live, 0, Usage(1, 1, cost_usd=0.01))
    assert store.get_task(task.id).spent == Usage(101, 11, cost_usd=0.11)


def test_a_run_in_flight_counts_against_the_period_as_noted_until_its_usage_replaces_it(
    store: SqlStore,
) -> None:
    task = new_task(store)
    c = claim(store)
    since = store.now() - 1
    run_id = store.start_run(c, "claude", 7, "/tmp/run.log")
    store.note_spending(run_id, Usage(100, 10, cost_usd=0.1))
    store.note_spending(run_id, Usage(300, 30, cost_usd=0.3))  # each note replaces the last
    assert store.spent_since(since) == Usage(300, 30, cost_usd=0.3)
    assert store.spent_since(since, "app") == Usage(300, 30, cost_usd=0.3)
    assert store.spent_since(since, "other") == Usage()
    assert store.get_task(task.id).spent == Usage(), "in no task's totals while in flight"
    assert store.spending(task.id) == {}, "nor in its stages' ledger"

    store.finish_run(c, run_id, 0, Usage(400, 40, cost_usd=0.4))
    store.note_spending(run_id, Usage(1, 1, cost_usd=0.01))  # a late note changes nothing
    assert store.spent_since(since) == Usage(400, 40, cost_usd=0.4)
    assert store.get_task(task.id).spent == Usage(400, 40, cost_usd=0.4)


def test_what_a_run_in_flight_retries_is_known_until_it_ends(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    run_id = store.start_run(c, "claude", 7, "/tmp/run.log")
    assert store.retrying_runs() == {}
    store.note_spending(run_id, Usage(10, 1), "the provider failed: HTTP 529 overloaded_error")
    assert store.retrying_runs() == {task.id: "the provider failed: HTTP 529 overloaded_error"}
    store.note_spending(run_id, Usage(20, 2))  # it got an answer since
    assert store.retrying_runs() == {}
    store.note_spending(run_id, Usage(30, 3), "the provider failed: HTTP 500 api_error")
    store.finish_run(c, run_id, 1, Usage(30, 3))
    assert store.retrying_runs() == {}, "a run that ended retries nothing"


def test_a_noted_circuit_keeps_its_later_end_and_stays_until_it_is_closed(store: SqlStore) -> None:
    now = store.now()
    store.open_circuit("claude", now + 60, 60, "HTTP 529 overloaded_error")
    store.open_circuit("claude", now + 30, 30, "a shorter one")  # the later end stands
    store.open_circuit("forge", now - 1, 30, "its cooldown is over")  # kept: nothing probed yet
    assert store.circuits() == {
        "claude": (now + 60, 60, "HTTP 529 overloaded_error"),
        "forge": (now - 1, 30, "its cooldown is over"),
    }
    store.open_circuit("claude", now + 120, 120, "the probe failed")
    assert store.circuits()["claude"] == (now + 120, 120, "the probe failed")
    store.close_circuit("claude")
    store.close_circuit("codex")  # one never opened
    assert store.circuits() == {"forge": (now - 1, 30, "its cooldown is over")}


@pytest.mark.parametrize("end", ["advance", "retry", "supersede", "timer"])
def test_a_jobs_last_write_closes_the_run_its_worker_could_not_close(
    store: SqlStore, end: str
) -> None:
    task = new_task(store)
    c = claim(store)
    run_id = store.start_run(c, "claude", 7, "/tmp/run.log")
    # the worker could not record how the run ended (a store outage, say); its job ends anyway
    if end == "advance":
        advance(store, c, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    elif end == "retry":
        retry(store, c, "try again", 0.0)
    elif end == "supersede":
        supersede(store, c)
    else:
        set_timer(store, c, 5.0)
    [run] = store.runs(task.id)
    assert run.ended_at is not None
    assert run.outcome == RunOutcome.ERROR
    assert run.detail == "closed for its worker: its worker could not record it"
    # its spending was never counted: it is read back from its log once its worker is gone
    assert [r.id for r in store.unaccounted_runs()] == [run_id]


def test_a_dead_lettered_jobs_open_run_is_closed_as_lease_lost(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store, ttl_s=-1)
    store.start_run(c, "claude", 7, "/tmp/run.log")
    assert store.sweep(max_attempts=1).dead == 1
    [run] = store.runs(task.id)
    assert (run.outcome, run.ended_at is not None) == (RunOutcome.LEASE_LOST, True)


def test_a_move_made_unless_stopped_is_refused_once_a_stop_is_asked_and_writes_nothing(
    store: SqlStore,
) -> None:
    task = new_task(store)
    c = claim(store)
    assert store.append_event(task.id, "stop", "stop", "ann", {}, cancel=True)
    before = snapshot(store, task.id)
    move = machine.advance(
        store.get_task(task.id), pl.after_success(FLOW, Stage.ANALYSIS), "w", unless_stopped=True
    )
    with pytest.raises(CancelRequested):
        store.apply(c, move)
    assert snapshot(store, task.id) == before
    # the cancel itself is never refused
    cancel = pl.on_stop(Stage.ANALYSIS, "ann", "")
    store.apply(c, machine.advance(store.get_task(task.id), cancel, "ann", unless_stopped=True))
    assert store.get_task(task.id).status == TaskStatus.CANCELLED


def test_working_time_is_the_time_a_task_held_a_repository_slot(store: SqlStore) -> None:
    first = new_task(store, "APP-1")
    second = new_task(store, "APP-2")
    c = claim(store)
    assert c.task_id == first.id
    assert store.get_task(first.id).slot_since is not None
    # the second task waits for the one slot: that is not work
    assert store.claim(OWNER, 60.0, one_per_repo) is None
    queued = store.get_task(second.id)
    assert (queued.slot_since, queued.worked_s) == (None, 0.0)
    advance(store, c, Stage.ANALYSIS, pl.on_stop(Stage.ANALYSIS, "ann", "no"), "ann")
    done = store.get_task(first.id)
    assert done.slot_since is None
    assert done.worked_s >= 0.0
    assert done.worked(done.updated_at + 100.0) == done.worked_s  # no slot, no more work
    c2 = claim(store)
    assert c2.task_id == second.id
    working = store.get_task(second.id)
    assert working.slot_since is not None and working.worked_s == 0.0


def test_a_task_waiting_for_a_budget_frees_its_slot_and_a_stop_brings_its_job_forward(
    store: SqlStore,
) -> None:
    first = new_task(store, "APP-1")
    second = new_task(store, "APP-2")
    c = claim(store)
    assert c.task_id == first.id
    store.apply(c, machine.budget_wait("budget over time: spent", 86_400))
    waiting = store.get_task(first.id)
    assert waiting.slot is None and waiting.slot_since is None
    [job] = [j for j in store.jobs(first.id) if j.state == JobState.QUEUED]
    assert job.run_after > store.now() + 86_000 and job.attempt == 0
    # the slot it gave back is another task's now
    c2 = claim(store)
    assert c2.task_id == second.id

    assert store.append_event(first.id, "stop", "stop", "ann", {}, cancel=True)

    [job] = [j for j in store.jobs(first.id) if j.state == JobState.QUEUED]
    assert job.run_after <= store.now()
    # a STOP needs no slot: the full repository does not hold it up
    stopping = claim(store)
    assert stopping.task_id == first.id


def claim_again(store: SqlStore, held: Claim) -> Claim:
    """Another worker takes the job `held` after its lease expires."""
    store.renew(held, -1)
    assert store.sweep(max_attempts=9).requeued == 1
    return claim(store, owner="third:3:new")


def test_spending_is_summed_per_stage_over_every_run(store: SqlStore) -> None:
    task = new_task(store)
    c = claim(store)
    for n in (1, 2):
        run_id = store.start_run(c, "claude", n, f"/tmp/{n}.log")
        store.finish_run(c, run_id, 0, Usage(n, n, n, n, n / 10))
    assert store.spending(task.id) == {Stage.ANALYSIS: Usage(3, 3, 3, 3, pytest.approx(0.3))}
    summary = store.summary()
    assert summary.spent.tokens_in == 3
    assert summary.spent_by_repo["app"].cache_read == 3


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_claims_never_exceed_the_repo_limit(store: SqlStore) -> None:
    for n in range(1, 5):
        new_task(store, f"APP-{n}", "app")
    barrier = threading.Barrier(6)
    claims: list[Claim | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        barrier.wait()
        try:
            got = store.claim(f"w:{i}:x", 60, one_per_repo)
        except BaseException as exc:  # collected and asserted below
            with lock:
                errors.append(exc)
            return
        with lock:
            claims.append(got)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    held = [c for c in claims if c is not None]
    assert len(held) == 1
    running = [
        j for t in store.list_tasks() for j in store.jobs(t.id) if j.state == JobState.RUNNING
    ]
    assert len(running) == 1


def test_the_leases_of_a_dead_owner_are_voided_and_swept_at_once(store: SqlStore) -> None:
    new_task(store, "APP-1", "app")
    new_task(store, "WEB-1", "web")
    dead = claim(store, ttl_s=3600.0, owner="host:1:1:dead")
    live = claim(store, ttl_s=3600.0, owner="host:2:2:live")
    assert store.lease_owners() == ["host:1:1:dead", "host:2:2:live"]

    assert store.void_leases("host:1:1:dead") == 1
    assert store.sweep(max_attempts=3).requeued == 1
    assert store.jobs(dead.task_id)[0].state == JobState.QUEUED
    assert store.jobs(live.task_id)[0].state == JobState.RUNNING
    assert store.lease_owners() == ["host:2:2:live"]
    with pytest.raises(LeaseLost):
        store.renew(dead, 60.0)  # the dead owner, should it come back, writes nothing


def test_live_jobs_are_the_queued_and_running_ones_with_their_leases(store: SqlStore) -> None:
    done = new_task(store, "APP-1", "app")
    running = new_task(store, "WEB-1", "web")
    queued = new_task(store, "DOC-1", "doc")
    finished = claim(store)
    store.apply(finished, machine.nothing_to_do(store.get_task(done.id)))
    held = claim(store, owner="host:2:2:live")
    assert store.jobs(done.id)[0].state not in (JobState.QUEUED, JobState.RUNNING)

    live = store.live_jobs()

    assert [(j.task_id, j.state) for j in live] == [
        (running.id, JobState.RUNNING),
        (queued.id, JobState.QUEUED),
    ]
    assert (live[0].owner, live[0].token) == ("host:2:2:live", held.token)


def test_tasks_can_be_listed_by_status(store: SqlStore) -> None:
    parked = new_task(store, "APP-1", "app")
    new_task(store, "WEB-1", "web")
    c = claim(store)
    assert c.task_id == parked.id
    advance(
        store,
        c,
        Stage.ANALYSIS,
        Decision(Move.PARK, Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR, "3 attempts failed"),
        "worker",
    )
    listed = store.list_tasks(status=TaskStatus.NEEDS_OPERATOR)
    assert [(t.key, t.status_reason) for t in listed] == [("APP-1", "3 attempts failed")]
    assert [t.key for t in store.list_tasks(status=TaskStatus.ACTIVE)] == ["WEB-1"]


def test_a_finished_run_records_how_it_ended(store: SqlStore) -> None:
    new_task(store)
    c = claim(store)
    run_id = store.start_run(c, "scripted", 4242, "/tmp/log")
    store.finish_run(c, run_id, -9, Usage(), RunOutcome.STALLED)
    (run,) = store.runs(c.task_id)
    assert (run.exit_code, run.outcome) == (-9, "stalled")


def test_metrics_aggregate_tasks_transitions_runs_usage_jobs_and_effects(store: SqlStore) -> None:
    empty = store.metrics()
    assert (empty.tasks, empty.transitions, empty.runs, empty.effects) == ({}, {}, {}, {})
    assert (empty.queue_depth, empty.oldest_wait_s, empty.reclaimed_runs) == (0, 0.0, 0)

    new_task(store, "APP-1", "app")
    c = claim(store)
    run_id = store.start_run(c, "claude", 7, "/tmp/analysis.log")
    store.finish_run(c, run_id, 0, Usage(10, 4, 2, 1, 0.5))
    store.begin_effect(c, "APP-1:notify:1", "notify", "app", "")
    store.finish_effect(c, "APP-1:notify:1", EffectState.SUCCEEDED, {})
    advance(store, c, Stage.ANALYSIS, pl.after_success(FLOW, Stage.ANALYSIS), "w")
    # the architecture job's worker goes silent with its agent running: the sweep takes it back
    lost = claim(store)
    store.start_run(lost, "claude", 8, "/tmp/architecture.log")
    store.renew(lost, -1)
    assert store.sweep(max_attempts=9).requeued == 1
    new_task(store, "WEB-1", "web")

    m = store.metrics()
    assert m.tasks == {("architecture", "active"): 1, ("analysis", "active"): 1}
    assert m.transitions[("analysis", "architecture", "active")] == 1
    assert sum(m.transitions.values()) == len(store.transitions(c.task_id)) + 1
    assert list(m.stage_seconds) == ["analysis"]
    analysis = m.stage_seconds["analysis"]
    assert (analysis.count, analysis.cumulative[-1]) == (1, 1)
    assert analysis.total >= 0
    assert {k: h.count for k, h in m.run_seconds.items()} == {
        ("analysis", "claude"): 1,
        ("architecture", "claude"): 1,
    }
    assert m.runs == {
        ("analysis", "claude", "exited"): 1,
        ("architecture", "claude", "lease_lost"): 1,
    }
    assert m.usage == {
        ("app", "analysis", "claude"): Usage(10, 4, 2, 1, 0.5),
        ("app", "architecture", "claude"): Usage(),
    }
    assert m.jobs == {"succeeded": 1, "queued": 2}
    assert m.queue_depth == 2
    assert m.oldest_wait_s >= 0
    assert m.reclaimed_runs == 1
    assert m.effects == {("notify", "SUCCEEDED"): 1}


def test_a_stage_lasts_from_the_change_that_entered_it_to_the_one_that_left_it(
    store: SqlStore,
) -> None:
    task = new_task(store)
    for stage in (Stage.ANALYSIS, Stage.ARCHITECTURE):
        advance(store, claim(store), stage, pl.after_success(FLOW, stage), "w")
    created = store.get_task(task.id).created_at
    entered_architecture, left_architecture = (
        x.at for x in store.transitions(task.id) if x.from_stage != x.to_stage
    )
    m = store.metrics()
    assert {stage: h.count for stage, h in m.stage_seconds.items()} == {
        "analysis": 1,
        "architecture": 1,
    }
    assert m.stage_seconds["analysis"].total == pytest.approx(entered_architecture - created)
    assert m.stage_seconds["architecture"].total == pytest.approx(
        left_architecture - entered_architecture
    )


def test_only_writes_a_person_would_see_move_the_change_count(store: SqlStore) -> None:
    quiet = store.changes.count
    assert store.claim(OWNER, 30, one_per_repo) is None
    assert store.sweep(max_attempts=3) == SweepResult()
    assert store.void_leases("nobody") == 0
    assert store.changes.count == quiet

    new_task(store)
    filed = store.changes.count
    c = claim(store)
    claimed = store.changes.count
    store.renew(c, 60)

    assert quiet < filed < claimed
    assert store.changes.count == claimed
