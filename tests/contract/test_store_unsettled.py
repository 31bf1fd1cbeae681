"""The store contract for merges left unresolved: found for the sweeper only while no job of
their task runs, and settled at most once."""

from __future__ import annotations

from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.domain.model import Ticket
from orch.domain.states import EffectKind, EffectState

PIPELINE = pl.default_pipeline()


def merging(store: SqlStore) -> tuple[int, str]:
    """A task whose worker began a merge and died with its lease expired."""
    ticket = Ticket("APP-1", "app", "t")
    task = store.create_task(ticket, "orch/APP-1", pl.to_dict(PIPELINE), pl.start(PIPELINE), "t")
    claim = store.claim("host:1:gone", -1, lambda _r: 1)
    assert claim is not None
    store.begin_effect(claim, "APP-1#1:merge:abc", EffectKind.MERGE, "app", "abc")
    return task.id, "APP-1#1:merge:abc"


def test_a_merge_left_by_a_dead_worker_is_found_once_its_lease_is_swept(store: SqlStore) -> None:
    _task, key = merging(store)
    assert store.unsettled_merges() == []  # its job still counts as running
    store.sweep(3)
    assert [e.key for e in store.unsettled_merges()] == [key]


def test_a_merge_is_settled_once_and_frees_the_slot(store: SqlStore) -> None:
    _task, key = merging(store)
    store.sweep(3)
    assert store.settle_effect(key, EffectState.FAILED, {"error": "not merged"}) is True
    assert store.settle_effect(key, EffectState.SUCCEEDED, {"merge_sha": "x"}) is False
    effect = store.get_effect(key)
    assert effect is not None and effect.state == EffectState.FAILED
    assert store.unsettled_merges() == []


def test_a_running_job_keeps_its_merge_to_itself(store: SqlStore) -> None:
    _task, key = merging(store)
    store.sweep(3)
    running = store.claim("host:2:live", 60, lambda _r: 1)
    assert running is not None
    assert store.unsettled_merges() == []
    assert store.settle_effect(key, EffectState.FAILED, {"error": "not merged"}) is False
