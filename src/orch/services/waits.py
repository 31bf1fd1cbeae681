"""Why an active task is not moving: what its job waits for, for the task list, `task show`, the
API and the dashboard. Read from the store (the job's due time and attempt, the repository's
slots and who holds them, the queue) and from this process's circuit breakers and running
agents where it has them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from orch.domain import pipeline as pl
from orch.domain.model import Job, Task
from orch.domain.periods import WAITS_FOR_BUDGET
from orch.domain.states import JobState, TaskStatus
from orch.ports import Store


@dataclass(frozen=True)
class Waiting:
    """What a task waits for: its kind, in words, and until when where that is known."""

    kind: str  # repo_slot, circuit, budget, backoff, queue, provider_retries
    text: str
    until: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "until": self.until}


class Waits:
    """Reads what is needed once, then answers for each task of a list."""

    def __init__(
        self,
        store: Store,
        repo_limit: Callable[[str], int] | None = None,
        circuits: Mapping[str, Mapping[str, object]] | None = None,
        retrying: Callable[[int], str | None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.now = store.now()
        self.jobs = store.live_jobs()
        self.holders = store.slot_holders()
        self.repo_limit = repo_limit
        self.circuits = circuits or {}
        self.retrying = retrying
        self._store = store
        # the breakers count on this process's clock: an end is shown on the wall clock
        self.wall = wall

    def why(self, task: Task) -> Waiting | None:
        if task.status != TaskStatus.ACTIVE:
            return None
        job = next((j for j in reversed(self.jobs) if j.task_id == task.id), None)
        if job is None:
            return None
        if job.state == JobState.RUNNING:
            said = self.retrying(task.id) if self.retrying is not None else None
            if said is None:  # it runs elsewhere: what its process last noted
                said = self._noted.get(task.id)
            if said:
                return Waiting("provider_retries", f"its agent is in provider retries: {said}")
            return None
        if job.run_after > self.now:
            if job.last_error.startswith(WAITS_FOR_BUDGET):
                return Waiting("budget", job.last_error, self.wall() + job.run_after - self.now)
            return self._backoff(task, job)
        if task.slot is None:
            held = self.holders.get(task.repo, [])
            limit = self.repo_limit(task.repo) if self.repo_limit is not None else None
            if held and (limit is None or len(held) >= limit):
                by = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
                return Waiting(
                    "repo_slot",
                    f"waiting for a slot of repository {task.repo}, held by {by}",
                )
        agent = _agent(task)
        circuit = self.circuits.get(agent) if agent else None
        if circuit is not None and circuit.get("circuit") != "closed":
            retry_in = float(circuit.get("retry_in_s") or 0.0)  # type: ignore[arg-type]
            until = self.wall() + retry_in
            reason = f" ({circuit['reason']})" if circuit.get("reason") else ""
            return Waiting(
                "circuit",
                f"the circuit of agent {agent} is open until {_clock(until)}{reason}",
                until,
            )
        ahead = sum(
            1
            for j in self.jobs
            if j.state == JobState.QUEUED
            and j.run_after <= self.now
            and (j.run_after, j.id) < (job.run_after, job.id)
        )
        running = sum(1 for j in self.jobs if j.state == JobState.RUNNING)
        return Waiting("queue", f"queued behind {ahead} job(s); {running} running")

    @cached_property
    def _noted(self) -> dict[int, str]:
        """What runs in flight in any process last noted they retry: read once, if needed."""
        return self._store.retrying_runs()

    def _backoff(self, task: Task, job: Job) -> Waiting:
        try:
            attempts = pl.from_dict(task.pipeline).max_attempts
        except (KeyError, TypeError, ValueError):
            attempts = None
        until = self.wall() + (job.run_after - self.now)
        of = f" of {attempts}" if attempts else ""
        last = f": {job.last_error}" if job.last_error else ""
        return Waiting(
            "backoff",
            f"backing off until {_clock(until)} before attempt {job.attempt + 1}{of}{last}",
            until,
        )


def _agent(task: Task) -> str | None:
    for s in task.pipeline.get("stages") or ():
        if s.get("stage") == task.stage.value:
            agent = s.get("agent")
            return str(agent) if agent else None
    return None


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
