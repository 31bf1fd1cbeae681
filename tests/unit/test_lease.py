"""The supervisor's lease: a child never outlives it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from orch.domain.errors import CancelRequested, LeaseLost, ShuttingDown, StoreUnavailable
from orch.domain.ledger import Usage
from orch.domain.model import Claim
from orch.domain.states import RunOutcome, Stage
from orch.services.lease import Heartbeats, Held, Lease

CLAIM = Claim(job_id=1, task_id=1, version=1, stage=Stage.ANALYSIS, attempt=1, token=1, owner="w")


class RenewingStore:
    """Renews until told to fail, then fails every renewal the way it was told to."""

    def __init__(self, failure: Exception | None) -> None:
        self.failure = failure
        self.renewals = 0
        self.stopped = False

    def renew(self, claim: Claim, ttl_s: float) -> bool:
        self.renewals += 1
        if self.failure is not None:
            raise self.failure
        return self.stopped


class EndlessChild:
    """A child that never exits by itself; records how it was stopped."""

    pid = 4242

    def __init__(self) -> None:
        self.killed = threading.Event()

    def wait(self, timeout_s: float) -> int | None:
        return -9 if self.killed.wait(timeout_s) else None

    def kill(self, grace_s: float) -> int | None:
        self.killed.set()
        return -9

    def output_bytes(self) -> int:
        return 0

    def usage(self) -> Usage:
        return Usage()

    def report(self) -> None:
        return None

    def retrying(self) -> bool:
        return False


@pytest.mark.parametrize(
    "failure",
    [LeaseLost("job 1 is held by another worker"), StoreUnavailable("database is locked")],
)
def test_a_lease_that_cannot_be_renewed_kills_the_child(failure: Exception) -> None:
    store = RenewingStore(failure)
    child = EndlessChild()
    with (
        Lease(store, CLAIM, ttl_s=0.05, heartbeat_s=0.01) as lease,  # type: ignore[arg-type]
        pytest.raises(LeaseLost),
    ):
        lease.supervise(child, timeout_s=600, grace_s=0)
    assert child.killed.is_set()
    assert store.renewals >= 1


def test_a_child_past_its_timeout_is_killed_and_reported_as_timed_out() -> None:
    store = RenewingStore(None)
    child = EndlessChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(child, timeout_s=0.05, grace_s=0)
    assert (code, outcome) == (-9, RunOutcome.TIMED_OUT)
    assert child.killed.is_set()


def test_an_interrupted_wait_kills_the_child_before_it_propagates() -> None:
    class Interrupting(EndlessChild):
        def wait(self, timeout_s: float) -> int | None:
            if not self.killed.is_set():
                raise KeyboardInterrupt
            return -9

    child = Interrupting()
    store = RenewingStore(None)
    with (
        Lease(store, CLAIM, ttl_s=30, heartbeat_s=5) as lease,  # type: ignore[arg-type]
        pytest.raises(KeyboardInterrupt),
    ):
        lease.supervise(child, timeout_s=60, grace_s=0)
    assert child.killed.is_set()


def test_a_fenced_renewal_after_the_lease_was_lost_refuses() -> None:
    store = RenewingStore(LeaseLost("fenced"))
    lease = Lease(store, CLAIM, ttl_s=30, heartbeat_s=5)  # type: ignore[arg-type]
    with pytest.raises(LeaseLost):
        lease.renew()
    store.failure = None
    with pytest.raises(LeaseLost):
        lease.renew()


def test_a_lease_its_job_finds_past_its_ttl_is_given_up_without_a_write_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process resumed after a pause longer than the TTL: its job looks before the heartbeat
    renews, and nothing is tried under the lease any more, the renewal included."""
    store = RenewingStore(None)
    clock = [100.0]
    lease = Lease(store, CLAIM, ttl_s=30, heartbeat_s=5, monotonic=lambda: clock[0])  # type: ignore[arg-type]
    clock[0] += 45

    with caplog.at_level(logging.WARNING, logger="orch.lease"), pytest.raises(LeaseLost):
        lease.check()

    assert lease.due_in() is None
    with pytest.raises(LeaseLost):
        lease.renew()
    assert store.renewals == 0
    assert [r.getMessage() for r in caplog.records] == [
        "lease given up: job 1 token 1 of w: lease not renewed for 30s"
    ]


def test_a_stop_kills_a_cancellable_child_and_spares_one_that_is_not() -> None:
    store = RenewingStore(None)
    store.stopped = True
    agent = EndlessChild()
    with (
        Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease,  # type: ignore[arg-type]
        pytest.raises(CancelRequested),
    ):
        lease.supervise(agent, timeout_s=600, grace_s=0)
    assert agent.killed.is_set()

    deploy = EndlessChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(deploy, timeout_s=0.2, grace_s=0, cancellable=False)
    # the deploy ran to its own timeout: the stop never cut it off
    assert (code, outcome) == (-9, RunOutcome.TIMED_OUT)


class TalkingChild(EndlessChild):
    """A child that prints something every time it is waited on, and never exits."""

    def __init__(self) -> None:
        super().__init__()
        self.printed = 0

    def output_bytes(self) -> int:
        self.printed += 10
        return self.printed


def test_a_silent_child_is_killed_as_stalled_while_one_that_prints_runs_on() -> None:
    store = RenewingStore(None)
    silent = EndlessChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(silent, timeout_s=600, grace_s=0, stall_s=0.05)
    assert (code, outcome) == (-9, RunOutcome.STALLED)

    talking = TalkingChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(talking, timeout_s=0.3, grace_s=0, stall_s=0.05)
    # output kept coming, so only the attempt's own timeout ended it
    assert (code, outcome) == (-9, RunOutcome.TIMED_OUT)


class RetryingChild(TalkingChild):
    """A child that keeps printing its CLI's retries of a provider that fails it."""

    def retrying(self) -> bool:
        return True


def test_a_child_that_only_prints_its_provider_retries_is_stalled() -> None:
    store = RenewingStore(None)
    child = RetryingChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(child, timeout_s=5, grace_s=0, stall_s=0.05)
    assert (code, outcome) == (-9, RunOutcome.STALLED)
    assert child.printed > 10, "it printed all along"


def test_the_task_deadline_ends_an_attempt_before_its_own_timeout_and_says_so() -> None:
    store = RenewingStore(None)
    child = EndlessChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(child, timeout_s=600, grace_s=0, deadline_s=0.05)
    assert (code, outcome) == (-9, RunOutcome.DEADLINE)


def test_a_shutdown_kills_the_child_and_lets_the_job_go() -> None:
    store = RenewingStore(None)
    shutdown = threading.Event()
    shutdown.set()
    child = EndlessChild()
    with (
        Lease(store, CLAIM, ttl_s=30, heartbeat_s=0.01, shutdown=shutdown) as lease,  # type: ignore[arg-type]
        pytest.raises(ShuttingDown),
    ):
        lease.supervise(child, timeout_s=600, grace_s=0)
    assert child.killed.is_set()


def test_a_lease_reads_nothing_between_its_renewals() -> None:
    store = RenewingStore(None)
    child = EndlessChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=5) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(child, timeout_s=0.3, grace_s=0)
    # a RenewingStore has nothing but `renew`: any other read would have failed the beat, and
    # the STOP comes back with a renewal (see the test of a cancellable child above)
    assert (code, outcome, store.renewals) == (-9, RunOutcome.TIMED_OUT, 0)


def test_a_stop_asked_in_this_process_reaches_its_job_without_waiting_for_a_renewal() -> None:
    store = RenewingStore(None)
    held = Held()
    other = Claim(
        job_id=2, task_id=2, version=1, stage=Stage.ANALYSIS, attempt=1, token=1, owner="w"
    )
    agent, bystander = EndlessChild(), EndlessChild()
    with (
        Lease(store, CLAIM, ttl_s=30, heartbeat_s=600, held=held) as lease,  # type: ignore[arg-type]
        Lease(store, other, ttl_s=30, heartbeat_s=600, held=held) as spared,  # type: ignore[arg-type]
    ):
        held.stop_asked(CLAIM.task_id)
        with pytest.raises(CancelRequested):
            lease.supervise(agent, timeout_s=600, grace_s=0)
        _, outcome = spared.supervise(bystander, timeout_s=0.2, grace_s=0)
    assert agent.killed.is_set()
    assert outcome == RunOutcome.TIMED_OUT  # only the stopped task's job was told
    assert store.renewals == 0


class AskedStore(RenewingStore):
    """A store that answers whether the task's STOP stands."""

    def __init__(self, stands: bool) -> None:
        super().__init__(None)
        self.stands = stands
        self.asked = 0

    def cancel_requested(self, task_id: int) -> bool:
        self.asked += 1
        return self.stands


@pytest.mark.parametrize("stands", [True, False])
def test_a_stop_asked_just_before_its_job_holds_the_lease_is_checked_with_the_store(
    stands: bool,
) -> None:
    store, held = AskedStore(stands), Held()
    held.stop_asked(CLAIM.task_id)  # the job has claimed the task, and holds no lease yet
    child = EndlessChild()
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=600, held=held) as lease:  # type: ignore[arg-type]
        if stands:
            with pytest.raises(CancelRequested):
                lease.supervise(child, timeout_s=600, grace_s=0)
        else:
            # a STOP that no longer stands (the task was retried since) stops nothing
            assert lease.supervise(child, timeout_s=0.2, grace_s=0)[1] == RunOutcome.TIMED_OUT
    assert store.asked == 1
    # it is asked once: the next lease of the task reads nothing
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=600, held=held):  # type: ignore[arg-type]
        pass
    assert store.asked == 1


def test_a_lease_holds_until_its_last_renewal_was_sent_plus_its_ttl_less_a_margin() -> None:
    store = RenewingStore(None)
    clock = iter([1000.0, 1010.0])
    lease = Lease(store, CLAIM, ttl_s=4, heartbeat_s=600, wall=lambda: next(clock))  # type: ignore[arg-type]
    assert lease.valid_until() == 0.0  # not renewed yet: nothing is sure
    lease.renew()
    assert lease.valid_until() == 1000.0 + 4 - 1  # a quarter of the ttl, at most 2 s
    lease.renew()
    assert lease.valid_until() == 1013.0


class ManyJobsStore:
    """Renews each job's lease and counts it; a job in `failing` cannot be renewed."""

    def __init__(self) -> None:
        self.renewals: Counter[int] = Counter()
        self.failing: set[int] = set()
        self.lock = threading.Lock()

    def renew(self, claim: Claim, ttl_s: float) -> bool:
        with self.lock:
            if claim.job_id in self.failing:
                raise StoreUnavailable("database is locked")
            self.renewals[claim.job_id] += 1
        return False


def job(n: int) -> Claim:
    return Claim(
        job_id=n, task_id=n, version=1, stage=Stage.ANALYSIS, attempt=1, token=1, owner="w"
    )


def eventually(what: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.005)
    return False


def test_one_thread_renews_every_lease_of_a_process_as_each_falls_due() -> None:
    store, beats = ManyJobsStore(), Heartbeats()
    before = set(threading.enumerate())
    with contextlib.ExitStack() as held:
        for n in range(1, 21):
            held.enter_context(Lease(store, job(n), ttl_s=30, heartbeat_s=0.02, beats=beats))  # type: ignore[arg-type]
        started = [t.name for t in set(threading.enumerate()) - before]
        renewed = eventually(lambda: all(store.renewals[n] >= 3 for n in range(1, 21)))
    assert renewed
    assert started == ["orch-heartbeats"]  # twenty leases, one heartbeat


def test_a_lease_let_go_is_renewed_no_more() -> None:
    store, beats = ManyJobsStore(), Heartbeats()
    with Lease(store, job(1), ttl_s=30, heartbeat_s=0.01, beats=beats):  # type: ignore[arg-type]
        assert eventually(lambda: store.renewals[1] >= 2)
    after = store.renewals[1]
    with Lease(store, job(2), ttl_s=30, heartbeat_s=0.01, beats=beats):  # type: ignore[arg-type]
        assert eventually(lambda: store.renewals[2] >= 5)  # the heartbeat beats on meanwhile
    assert store.renewals[1] == after


def test_a_lease_that_cannot_be_renewed_is_lost_while_the_others_keep_their_beat() -> None:
    store, beats = ManyJobsStore(), Heartbeats()
    store.failing = {1}
    with (
        Lease(store, job(1), ttl_s=0.2, heartbeat_s=0.02, beats=beats) as failing,  # type: ignore[arg-type]
        Lease(store, job(2), ttl_s=30, heartbeat_s=0.02, beats=beats) as healthy,  # type: ignore[arg-type]
    ):
        lost = eventually(lambda: failing.due_in() is None)
        renewed_then = store.renewals[2]
        assert eventually(lambda: store.renewals[2] >= renewed_then + 3)
        with pytest.raises(LeaseLost, match=r"not renewed for 0\.2s"):
            failing.check()
        healthy.check()
    assert lost


def test_a_silent_child_is_looked_at_when_its_stall_falls_due_not_at_the_next_poll() -> None:
    class Waited(EndlessChild):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout_s: float) -> int | None:
            self.waits.append(timeout_s)
            return super().wait(timeout_s)

    child = Waited()
    store = RenewingStore(None)
    with Lease(store, CLAIM, ttl_s=30, heartbeat_s=5) as lease:  # type: ignore[arg-type]
        code, outcome = lease.supervise(child, timeout_s=600, grace_s=0, stall_s=0.05)
    assert (code, outcome) == (-9, RunOutcome.STALLED)
    assert lease.poll_s == 1.0
    assert max(child.waits) <= 0.05  # never a whole poll interval past the stall


def test_a_heartbeat_stuck_in_a_renewal_does_not_keep_any_lease_alive() -> None:
    """One renewal that never returns holds up the one heartbeat thread: every lease it serves
    is still lost once a whole TTL passed without a renewal."""

    class Hanging(ManyJobsStore):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def renew(self, claim: Claim, ttl_s: float) -> bool:
            if claim.job_id == 1:
                self.release.wait(30)
            return super().renew(claim, ttl_s)

    store, beats = Hanging(), Heartbeats()
    try:
        with (
            Lease(store, job(1), ttl_s=0.3, heartbeat_s=0.01, beats=beats) as stuck,  # type: ignore[arg-type]
            Lease(store, job(2), ttl_s=0.3, heartbeat_s=0.01, beats=beats) as behind,  # type: ignore[arg-type]
        ):
            assert eventually(lambda: _lost(behind))
            assert _lost(stuck)
            store.release.set()
    finally:
        store.release.set()


def _lost(lease: Lease) -> bool:
    try:
        lease.check()
    except LeaseLost:
        return True
    return False
