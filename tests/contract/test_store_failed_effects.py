"""The store contract for effects that failed and are done later, outside any job (a write-back
to the tracker sent again): they are found by kind, of every task, oldest first, and each is
recorded as done at most once, only while it is still FAILED."""

from __future__ import annotations

from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.domain.model import Claim, Ticket
from orch.domain.states import EffectKind, EffectState

PIPELINE = pl.default_pipeline()


def working(store: SqlStore, key: str, repo: str) -> Claim:
    """A task of `repo` whose job is claimed."""
    ticket = Ticket(key, repo, "t")
    store.create_task(ticket, f"orch/{key}", pl.to_dict(PIPELINE), pl.start(PIPELINE), "t")
    claim = store.claim(f"host:1:{key}", 60, lambda _r: 1)
    assert claim is not None
    return claim


def failed(store: SqlStore, claim: Claim, key: str, kind: str = "report") -> str:
    store.begin_effect(claim, key, kind, "app", "")
    store.finish_effect(claim, key, EffectState.FAILED, {"error": "down", "news": {"n": key}})
    return key


def test_failed_effects_of_a_kind_are_found_across_tasks_oldest_first(store: SqlStore) -> None:
    one = working(store, "APP-1", "app")
    two = working(store, "WEB-1", "web")
    first = failed(store, one, "APP-1#1:report:a")
    second = failed(store, two, "WEB-1#1:report:a")
    third = failed(store, one, "APP-1#2:report:b")
    failed(store, one, "APP-1#2:notify", kind=EffectKind.NOTIFY)
    store.begin_effect(one, "APP-1#3:report:c", "report", "app", "")  # in flight
    made = store.begin_effect(two, "WEB-1#2:report:b", "report", "web", "")
    store.finish_effect(two, made.key, EffectState.SUCCEEDED, {"text": "x"})
    found = store.failed_effects("report")
    assert [e.key for e in found] == [first, second, third]
    assert [e.task_id for e in found] == [one.task_id, two.task_id, one.task_id]
    assert found[0].result == {"error": "down", "news": {"n": first}}
    assert [e.key for e in store.failed_effects(EffectKind.NOTIFY)] == ["APP-1#2:notify"]


def test_a_failed_effect_is_marked_done_once_with_its_result(store: SqlStore) -> None:
    claim = working(store, "APP-1", "app")
    key = failed(store, claim, "APP-1#1:report:a")
    assert store.mark_redone(key, {"text": "sent", "resent": "in full"}) is True
    assert store.mark_redone(key, {"text": "again"}) is False
    effect = store.get_effect(key)
    assert effect is not None and effect.state == EffectState.SUCCEEDED
    assert effect.result == {"text": "sent", "resent": "in full"}
    assert store.failed_effects("report") == []


def test_only_a_failed_effect_is_marked_done(store: SqlStore) -> None:
    claim = working(store, "APP-1", "app")
    store.begin_effect(claim, "APP-1#1:report:a", "report", "app", "")
    assert store.mark_redone("APP-1#1:report:a", {"text": "x"}) is False  # in flight
    made = store.get_effect("APP-1#1:report:a")
    assert made is not None and made.state == EffectState.INITIATED
    assert store.mark_redone("APP-1#9:report:nothing", {"text": "x"}) is False


def test_a_failed_effect_its_job_tries_again_is_not_marked_done(store: SqlStore) -> None:
    claim = working(store, "APP-1", "app")
    key = failed(store, claim, "APP-1#1:report:a")
    store.begin_effect(claim, key, "report", "app", "")  # re-armed: the job acts on it itself
    assert store.failed_effects("report") == []
    assert store.mark_redone(key, {"text": "x"}) is False
    effect = store.get_effect(key)
    assert effect is not None and effect.state == EffectState.INITIATED


def test_a_failed_effect_is_marked_done_without_a_claim_while_its_job_runs(
    store: SqlStore,
) -> None:
    claim = working(store, "APP-1", "app")  # the lease is live
    key = failed(store, claim, "APP-1#1:report:a")
    assert store.mark_redone(key, {"text": "x"}) is True
