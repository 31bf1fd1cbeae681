"""A store that stops answering (a full disk, a read-only file): orch stops claiming, alerts
once, and resumes by itself when the store answers again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from orch.domain.errors import StoreUnavailable
from orch.domain.model import Claim
from orch.domain.states import RunOutcome, Stage, TaskStatus
from orch.services.dispatcher import Dispatcher, DispatcherSettings
from orch.testing import InstantAgent, memory_store, rig


class FlakyClaims:
    """The rig's store, but every claim fails while `down` is set."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.down = threading.Event()
        self.refused = 0

    def claim(self, owner: str, ttl_s: float, repo_limit: Callable[[str], int]) -> Claim | None:
        if self.down.is_set():
            self.refused += 1
            raise StoreUnavailable("store write failed: database or disk is full")
        claimed: Claim | None = self._store.claim(owner, ttl_s, repo_limit)
        return claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_store_that_refuses_claims_pauses_claiming_with_one_alert_until_it_answers() -> None:
    r = rig({"default": InstantAgent()})
    flaky = FlakyClaims(r.store)
    dispatcher = Dispatcher(
        flaky,  # type: ignore[arg-type]
        r.engine,
        r.repos.limit,
        DispatcherSettings(slots=1, poll_interval_s=0.01),
        alert=r.notifier.notify,
    )
    try:
        flaky.down.set()
        task = r.intake.file("app", "Add a greeting", "Say hello.")
        dispatcher.start()
        wait_until(lambda: flaky.refused >= 5, "several refused claims")
        alerts = [text for key, text in r.notifier.sent if key.endswith(":store-down")]
        full = "store write failed: database or disk is full"
        assert alerts == [f"orch stopped claiming work: {full}"]
        assert r.store.get_task(task.id).stage == Stage.ANALYSIS

        flaky.down.clear()
        wait_until(
            lambda: r.store.get_task(task.id).status == TaskStatus.WAITING, "the task to run"
        )
        assert len([k for k, _ in r.notifier.sent if k.endswith(":store-down")]) == 1
    finally:
        dispatcher.stop()
        r.close()


class RunsCannotClose:
    """The rig's store, but recording how a run ended fails, as on a full disk."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def finish_run(self, *_args: Any, **_kwargs: Any) -> None:
        raise StoreUnavailable("store write failed: database or disk is full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_run_whose_end_could_not_be_recorded_is_closed_by_its_jobs_last_write() -> None:
    store = RunsCannotClose(memory_store())
    r = rig({"default": InstantAgent()}, store=store)  # type: ignore[arg-type]
    try:
        task = r.intake.file("app", "Add a greeting", "Say hello.")
        r.run_until_idle()
        assert r.store.get_task(task.id).waiting_for == "approve-plan"
        [run] = r.store.runs(task.id)
        assert run.ended_at is not None
        assert (run.outcome, run.detail) == (
            RunOutcome.ERROR,
            "closed for its worker: its worker could not record it",
        )
    finally:
        r.close()
