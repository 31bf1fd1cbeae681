"""The store in plain Python structures: no SQL, nothing on disk, one process.

It keeps the same promises as the SQL store (the store contract suite runs on both): writes
under a lease are fenced by the claim's token, a stage write is a compare-and-set, uniqueness
holds where the schema has a unique index, and a write is all or nothing. Each write runs under
one lock on shallow copies of the tables it may change, so a failure (or a simulated crash)
part-way leaves everything as it was. The rules are the domain's (orch.domain.machine), as in
the SQL store: this one only keeps records.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orch.changes import Changes, Hearing
from orch.domain import machine
from orch.domain.access import ApiToken
from orch.domain.errors import Conflict, LeaseLost
from orch.domain.metrics import FENCED_WRITES
from orch.domain.model import (
    BoardComment,
    BoardItem,
    Claim,
    Delivery,
    Effect,
    Event,
    GateRecord,
    ItemLink,
    Job,
    Run,
    Task,
    Ticket,
    Transition,
)
from orch.domain.states import (
    JobState,
    RunOutcome,
    Stage,
)

log = logging.getLogger("orch.store")


@dataclass
class _Tables:
    """Every record, by id (or key). Records are frozen: a write replaces them."""

    tickets: dict[str, Ticket] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    transitions: dict[int, Transition] = field(default_factory=dict)
    effects: dict[str, Effect] = field(default_factory=dict)
    effect_ids: dict[str, int] = field(default_factory=dict)
    events: dict[int, Event] = field(default_factory=dict)
    event_keys: dict[str, int] = field(default_factory=dict)
    gates: dict[tuple[int, int, str, str], GateRecord] = field(default_factory=dict)
    runs: dict[int, Run] = field(default_factory=dict)
    tokens: dict[str, ApiToken] = field(default_factory=dict)
    token_hashes: dict[str, str] = field(default_factory=dict)  # name -> the secret's digest
    ids: dict[str, int] = field(default_factory=dict)  # the last id given, per table
    counters: dict[str, int] = field(default_factory=dict)
    deliveries: dict[int, Delivery] = field(default_factory=dict)
    links: dict[str, ItemLink] = field(default_factory=dict)  # by ticket key
    board: dict[str, BoardItem] = field(default_factory=dict)  # by ticket key
    board_comments: dict[int, BoardComment] = field(default_factory=dict)
    # until when, for how long, why
    circuits: dict[str, tuple[float, float, str]] = field(default_factory=dict)

    def copy(self) -> _Tables:
        return _Tables(**{name: dict(value) for name, value in vars(self).items()})

    def next_id(self, table: str) -> int:
        self.ids[table] = self.ids.get(table, 0) + 1
        return self.ids[table]


class MemoryBase:
    """The store, in this process's memory. `clock` replaces the wall clock (a simulated one,
    for tests that move time past leases and timers without waiting)."""

    url = "memory://"
    display_url = "memory://"

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._t = _Tables()
        self._listeners: list[Callable[[], None]] = []
        self.changes = Changes()
        self.hearing = Hearing(self.watch_changes)

    # -- plumbing ----------------------------------------------------------------------------

    def now(self) -> float:
        return float(self._clock())

    def migrate(self) -> None:
        """Nothing to migrate: the structures are the schema."""

    def close(self) -> None:
        """Nothing to release."""

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def watch_changes(self, stop: threading.Event) -> None:
        """Nothing to hear: no other process writes this store."""

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    @contextlib.contextmanager
    def _write(self, *, wakes: bool = False, shown: bool = True) -> Iterator[_Tables]:
        """One write, all or nothing: it works on copies that replace the tables only if it
        returns."""
        with self._lock:
            work = self._t.copy()
            try:
                yield work
            except LeaseLost:
                self._t.counters[FENCED_WRITES] = self._t.counters.get(FENCED_WRITES, 0) + 1
                raise
            self._t = work
        if shown:
            self.changes.bump()
        if wakes:
            self._notify()

    def _guard(self, t: _Tables, claim: Claim, **values: Any) -> None:
        """The fencing check: touch the job only while this claim still holds it."""
        job = t.jobs.get(claim.job_id)
        if job is None or job.state != JobState.RUNNING or job.token != claim.token:
            log.warning(
                "write fenced: job %s token %s of %s", claim.job_id, claim.token, claim.owner
            )
            raise LeaseLost(f"job {claim.job_id} is no longer held with token {claim.token}")
        if values:
            t.jobs[job.id] = replace(job, **values)

    def _history(
        self, t: _Tables, task_id: int, version: int, write: machine.StageWrite, now: float
    ) -> None:
        if any(x.task_id == task_id and x.version == version for x in t.transitions.values()):
            raise Conflict(f"task {task_id} already has version {version}")
        t.transitions[t.next_id("transitions")] = Transition(
            task_id,
            version,
            write.from_stage,
            write.stage,
            write.from_status,
            write.status,
            write.actor,
            write.reason,
            now,
        )

    def _enqueue(
        self, t: _Tables, task: Task, version: int, stage: Stage, run_after: float, now: float
    ) -> None:
        # one job per task and version, as the SQL store's unique constraint says
        if any(j.task_id == task.id and j.version == version for j in t.jobs.values()):
            return
        job_id = t.next_id("jobs")
        t.jobs[job_id] = Job(
            job_id,
            task.id,
            task.repo,
            version,
            stage,
            JobState.QUEUED,
            attempt=0,
            token=0,
            owner=None,
            expires_at=None,
            run_after=run_after,
        )

    def _free_slot(self, t: _Tables, task: Task, now: float) -> None:
        """The task gives its repository slot back: the time it held it is work."""
        if task.slot is None and task.slot_since is None:
            return
        t.tasks[task.id] = replace(task, slot=None, slot_since=None, worked_s=task.worked(now))

    def _close_runs(self, t: _Tables, job_id: int, outcome: RunOutcome, why: str) -> None:
        now = self.now()
        for run in list(t.runs.values()):
            if run.job_id == job_id and run.ended_at is None:
                t.runs[run.id] = replace(
                    run, ended_at=now, outcome=outcome.value, detail=f"closed for its worker: {why}"
                )

    def _mark(self, t: _Tables, event_ids: Sequence[int], now: float) -> None:
        for event_id in event_ids:
            event = t.events.get(event_id)
            if event is not None and event.processed_at is None:
                t.events[event_id] = replace(event, processed_at=now)
