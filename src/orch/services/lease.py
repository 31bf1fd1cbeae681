"""A held lease, kept alive by the supervisor for the whole job (rule 5).

A heartbeat renews it: one thread per process (`Heartbeats`) renews each lease held there as
its renewal falls due, rather than a thread per job. The worker checks it before every step
that writes outside the store (commit, push, merge) and while it waits on children. A lease
that cannot be renewed for a whole TTL is treated as lost even if the store never said so:
another worker may hold the job by then, so the children are killed and nothing more is
written.

A STOP asked for in this process reaches the job at once, through `Held`; one written by another
process, when the dispatcher hears that process's commit (`Engine.stops_heard`). Each renewal
carries the task's cancel flag back too (rule 10), should nothing have been heard.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from orch.domain.errors import CancelRequested, LeaseLost, ShuttingDown
from orch.domain.model import Claim
from orch.domain.states import RunOutcome
from orch.ports import AgentProcess, Store

log = logging.getLogger("orch.lease")


class Lease:
    def __init__(
        self,
        store: Store,
        claim: Claim,
        ttl_s: float,
        heartbeat_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        shutdown: threading.Event | None = None,
        held: Held | None = None,
        wall: Callable[[], float] = time.time,
        beats: Heartbeats | None = None,
    ) -> None:
        self.store = store
        self.held = held
        # a lease on its own (a test's) has a heartbeat thread of its own
        self.beats = beats or Heartbeats()
        self._wall = wall
        # until when (wall clock) the lease surely holds: renewed at t, it expires at the
        # store's t' + ttl >= t + ttl; the margin allows for a database host's clock
        self._margin_s = min(ttl_s / 4, 2.0)
        self._valid_until = 0.0
        self.shutdown = shutdown
        self.claim = claim
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = min(heartbeat_s, 1.0)
        self.cancel_seen = False
        self._monotonic = monotonic
        self._renewed = monotonic()
        self._retry_at: float | None = None  # after a renewal that failed, while it still holds
        self._lost: str | None = None

    def __enter__(self) -> Lease:
        self.beats.add(self)
        if self.held is not None and self.held.add(self):
            # a STOP was asked here between this job's claim and now; the store says whether
            # it stands (a stale one, for a task since retried, does not)
            with contextlib.suppress(Exception):  # else the next renewal brings the flag
                if self.store.cancel_requested(self.claim.task_id):
                    self.cancel_seen = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.held is not None:
            self.held.remove(self)
        self.beats.remove(self)

    def stop_asked(self) -> None:
        """A STOP was recorded for this job's task: the job applies it at its next check."""
        self.cancel_seen = True

    def due_in(self) -> float | None:
        """Seconds until its heartbeat should renew it (a step's own renewal, `renew` or
        `fresh`, puts it off); None once it is lost."""
        if self._lost is not None:
            return None
        due = self._renewed + self.heartbeat_s
        if self._retry_at is not None:
            due = min(due, self._retry_at)
        return due - self._monotonic()

    def beat(self) -> None:
        """The heartbeat's renewal, when `due_in` says it is due."""
        try:
            self._renew()
            self._retry_at = None
        except LeaseLost as exc:
            self._lost = str(exc)
        except Exception as exc:  # the store's trouble, or a bug: the lease decays the same way
            if self._monotonic() - self._renewed >= self.ttl_s:
                self._give_up(f"lease not renewed for {self.ttl_s:g}s: {exc}")
            else:
                self._retry_at = self._monotonic() + self.poll_s  # while the lease still holds

    def check(self) -> None:
        """Raise LeaseLost once the lease is lost: the store said so, or no renewal came back
        for a whole TTL (the heartbeat may itself be stuck in a renewal that never returns)."""
        if self._lost is None and self._monotonic() - self._renewed >= self.ttl_s:
            self._give_up(f"lease not renewed for {self.ttl_s:g}s")
        if self._lost is not None:
            raise LeaseLost(self._lost)

    def _give_up(self, why: str) -> None:
        """Lost by the clock alone: another process may hold the job by now, though the store
        has not said so, so nothing more is tried under it, not even a renewal. A process
        resumed after a long pause often stops here, before its heartbeat meets the fence."""
        self._lost = why
        log.warning(
            "lease given up: job %s token %s of %s: %s",
            self.claim.job_id,
            self.claim.token,
            self.claim.owner,
            why,
        )

    def renew(self) -> None:
        """A fenced renewal now: before a step that must not run under a lost lease. It also
        brings back whether a STOP was asked for."""
        self.check()
        try:
            self._renew()
        except LeaseLost as exc:
            self._lost = str(exc)
            raise

    def _renew(self) -> None:
        sent = self._wall()
        if self.store.renew(self.claim, self.ttl_s):
            self.cancel_seen = True
        self._renewed = self._monotonic()
        # a renewal sent earlier may return later (the heartbeat's, behind a step's): each is a
        # sure bound, so the latest holds
        self._valid_until = max(self._valid_until, sent + self.ttl_s - self._margin_s)

    def valid_until(self) -> float:
        """The instant (seconds since the epoch) until which this lease surely holds, as of its
        last renewal: what must not run twice is not started after it."""
        return self._valid_until

    def fresh(self) -> None:
        """Renew only if the last renewal is older than half a heartbeat: a step that just
        renewed (or a fast stage) writes nothing more."""
        if self._monotonic() - self._renewed >= self.heartbeat_s / 2:
            self.renew()
        else:
            self.check()

    def supervise(
        self,
        proc: AgentProcess,
        timeout_s: float,
        grace_s: float,
        *,
        cancellable: bool = True,
        stall_s: float | None = None,
        deadline_s: float | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> tuple[int | None, RunOutcome]:
        """Wait for a child; return its exit code and how it ended.

        Separate clocks end it: the attempt's `timeout_s`, `stall_s` without new output (output
        while the agent retries its provider does not count), and `deadline_s`, what is left of
        the task's deadline. `on_tick` is called each time the child is looked at. However the
        wait ends early (the lease lost, a STOP, a shutdown, an error, an interrupt) the child's
        group is killed first, so no agent outlives its lease and no two agents share a
        worktree. A child that is not `cancellable` (a deploy) is left to finish when a STOP
        arrives.
        """
        started = self._monotonic()
        limit, limit_outcome = timeout_s, RunOutcome.TIMED_OUT
        if deadline_s is not None and deadline_s < timeout_s:
            limit, limit_outcome = max(deadline_s, 0.0), RunOutcome.DEADLINE
        deadline = started + limit
        printed, progressed = proc.output_bytes(), started
        try:
            while True:
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return proc.kill(grace_s), limit_outcome
                wait = min(self.poll_s, remaining)
                if stall_s is not None:  # woken when the stall would be due, not after
                    wait = min(wait, max(progressed + stall_s - self._monotonic(), 0.0))
                code = proc.wait(wait)
                if code is not None:
                    return code, RunOutcome.EXITED
                self.check()
                if self.shutdown is not None and self.shutdown.is_set():
                    raise ShuttingDown("orch is shutting down")
                if cancellable and self.cancel_seen:
                    raise CancelRequested("stop requested")
                if on_tick is not None:
                    on_tick()
                if stall_s is not None:
                    now, size = self._monotonic(), proc.output_bytes()
                    if size != printed:
                        # what a CLI prints while it retries its provider is no progress
                        printed = size
                        if not proc.retrying():
                            progressed = now
                    if now - progressed >= stall_s:
                        return proc.kill(grace_s), RunOutcome.STALLED
        except BaseException:
            proc.kill(grace_s)
            raise


class Heartbeats:
    """The heartbeat of every lease this process holds: one thread, running while there is a
    lease, renews each as it falls due. A renewal that hangs holds up the others, but they all
    wait on the same store, which would hold them up as much."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._leases: list[Lease] = []
        self._beating: Lease | None = None
        self._running = False

    def add(self, lease: Lease) -> None:
        with self._cond:
            self._leases.append(lease)
            self._cond.notify_all()
            if not self._running:
                self._running = True
                self._add_thread()

    def remove(self, lease: Lease) -> None:
        """No more renewals of `lease`: one under way is waited for."""
        with self._cond:
            if lease in self._leases:
                self._leases.remove(lease)
            self._cond.wait_for(lambda: self._beating is not lease)
            self._cond.notify_all()

    def _add_thread(self) -> None:
        threading.Thread(target=self._run, name="orch-heartbeats", daemon=True).start()

    def _run(self) -> None:
        try:
            self._beat_all()
        except BaseException:  # the leases held still need a heartbeat
            with self._cond:
                self._running = bool(self._leases)
                if self._running:
                    self._add_thread()
            raise

    def _beat_all(self) -> None:
        while True:
            with self._cond:
                due: Lease | None = None
                while due is None:
                    if not self._leases:
                        self._running = False
                        return
                    waits = [(lease.due_in(), lease) for lease in self._leases]
                    soonest = min(
                        ((w, lease) for w, lease in waits if w is not None),
                        key=lambda x: x[0],
                        default=None,
                    )
                    if soonest is not None and soonest[0] <= 0:
                        due = soonest[1]
                    else:
                        # a lease lost waits for its job to leave; a new one wakes this
                        self._cond.wait(soonest[0] if soonest else None)
                self._beating = due
            try:
                due.beat()
            finally:
                with self._cond:
                    self._beating = None
                    self._cond.notify_all()


class Held:
    """The leases this process holds, by task: a STOP recorded here, or heard from another
    process, tells its job at once instead of at the job's next renewal."""

    # STOPs asked for tasks no lease here held: a job that claimed its task just before the
    # STOP holds its lease just after. The newest are kept, a bounded few.
    KEPT = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[int, Lease] = {}
        self._asked: dict[int, bool] = {}

    def add(self, lease: Lease) -> bool:
        """Hold `lease`; whether a STOP was asked for its task while no lease here held it."""
        with self._lock:
            self._by_task[lease.claim.task_id] = lease
            return self._asked.pop(lease.claim.task_id, False)

    def task_ids(self) -> list[int]:
        with self._lock:
            return list(self._by_task)

    def remove(self, lease: Lease) -> None:
        with self._lock:
            if self._by_task.get(lease.claim.task_id) is lease:
                del self._by_task[lease.claim.task_id]

    def stop_asked(self, task_id: int) -> None:
        with self._lock:
            lease = self._by_task.get(task_id)
            if lease is None:
                self._asked[task_id] = True
                while len(self._asked) > self.KEPT:
                    del self._asked[next(iter(self._asked))]
        if lease is not None:
            lease.stop_asked()
