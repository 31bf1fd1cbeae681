"""Tickets and tasks in the memory store."""

from __future__ import annotations

from typing import Any

from orch.adapters.store.memory.base import MemoryBase, _Tables
from orch.domain import machine
from orch.domain.errors import Conflict, NotFound
from orch.domain.ledger import Usage
from orch.domain.model import (
    Effect,
    Event,
    GateRecord,
    Job,
    Run,
    Task,
    Ticket,
    Transition,
)
from orch.domain.naming import branch_for
from orch.domain.pipeline import Decision
from orch.domain.states import (
    JobState,
    TaskStatus,
)
from orch.ports import StateSummary


class TaskRecords(MemoryBase):
    """Tickets and tasks: filing, creating, and the reads of a task's records."""

    # -- tickets -----------------------------------------------------------------------------

    def _new_ticket(self, t: _Tables, repo: str, prefix: str, title: str, body: str) -> Ticket:
        t.sequences[prefix] = t.sequences.get(prefix, 0) + 1
        ticket = Ticket(key=f"{prefix}-{t.sequences[prefix]}", repo=repo, title=title, body=body)
        t.tickets[ticket.key] = ticket
        return ticket

    def file_ticket(self, repo: str, prefix: str, title: str, body: str) -> Ticket:
        with self._write() as t:
            return self._new_ticket(t, repo, prefix, title, body)

    def file_and_create(
        self,
        repo: str,
        prefix: str,
        title: str,
        body: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> Task:
        with self._write(wakes=first.status == TaskStatus.ACTIVE) as t:
            ticket = self._new_ticket(t, repo, prefix, title, body)
            task_id = self._create(t, ticket, branch_for(ticket.key), pipeline, first, actor)
        return self.get_task(task_id)

    def get_ticket(self, key: str) -> Ticket | None:
        return self._t.tickets.get(key)

    # -- tasks -------------------------------------------------------------------------------

    def create_task(
        self, ticket: Ticket, branch: str, pipeline: dict[str, Any], first: Decision, actor: str
    ) -> Task:
        with self._write(wakes=first.status == TaskStatus.ACTIVE) as t:
            task_id = self._create(t, ticket, branch, pipeline, first, actor)
        return self.get_task(task_id)

    def _create(
        self,
        t: _Tables,
        ticket: Ticket,
        branch: str,
        pipeline: dict[str, Any],
        first: Decision,
        actor: str,
    ) -> int:
        if any(x.key == ticket.key and x.status != TaskStatus.CANCELLED for x in t.tasks.values()):
            raise Conflict(f"ticket {ticket.key} already has a task that is not cancelled")
        now = self.now()
        write = machine.create(first, actor)
        task = Task(
            id=t.next_id("tasks"),
            key=ticket.key,
            repo=ticket.repo,
            title=ticket.title,
            body=ticket.body,
            stage=write.stage,
            status=write.status,
            version=1,
            branch=branch,
            pipeline=pipeline,
            waiting_for=write.waiting_for,
            created_at=now,
            updated_at=now,
        )
        t.tasks[task.id] = task
        self._history(t, task.id, 1, write, now)
        due = machine.first_job_in_s(first)
        if due is not None:
            self._enqueue(t, task, 1, write.stage, now + due, now)
        return task.id

    def get_task(self, task_id: int) -> Task:
        task = self._t.tasks.get(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id}")
        return task

    def find_task(self, key: str) -> Task | None:
        found = [x for x in self._t.tasks.values() if x.key == key]
        return max(found, key=lambda x: x.id) if found else None

    def list_tasks(self, limit: int = 100, status: TaskStatus | None = None) -> list[Task]:
        tasks = sorted(self._t.tasks.values(), key=lambda x: -x.id)
        return [x for x in tasks if status is None or x.status == status][:limit]

    def slot_holders(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        held = [x for x in self._t.tasks.values() if x.slot is not None]
        for x in sorted(held, key=lambda x: (x.slot_since or 0.0, x.id)):
            out.setdefault(x.repo, []).append(x.key)
        return out

    def transitions(self, task_id: int) -> list[Transition]:
        found = [x for x in self._t.transitions.values() if x.task_id == task_id]
        return sorted(found, key=lambda x: x.version)

    def gate_records(self, task_id: int) -> list[GateRecord]:
        return [g for g in self._t.gates.values() if g.task_id == task_id]

    def effects(self, task_id: int) -> list[Effect]:
        t = self._t
        found = [e for e in t.effects.values() if e.task_id == task_id]
        return sorted(found, key=lambda e: t.effect_ids[e.key])

    def runs(self, task_id: int) -> list[Run]:
        return [r for r in self._t.runs.values() if r.task_id == task_id]

    def events(self, task_id: int) -> list[Event]:
        return [e for e in self._t.events.values() if e.task_id == task_id]

    def jobs(self, task_id: int) -> list[Job]:
        return [j for j in self._t.jobs.values() if j.task_id == task_id]

    def summary(self, recent: int = 20) -> StateSummary:
        t = self._t
        by_stage: dict[str, int] = {}
        by_status: dict[str, int] = {}
        by_repo: dict[str, Usage] = {}
        for task in t.tasks.values():
            by_stage[task.stage.value] = by_stage.get(task.stage.value, 0) + 1
            by_status[task.status.value] = by_status.get(task.status.value, 0) + 1
            by_repo[task.repo] = by_repo.get(task.repo, Usage()) + task.spent
        running = [
            {
                "task": t.tasks[j.task_id].key,
                "stage": j.stage.value,
                "attempt": j.attempt,
                "owner": j.owner,
                "expires_at": j.expires_at,
            }
            for j in t.jobs.values()
            if j.state == JobState.RUNNING
        ][:200]
        latest = sorted(t.transitions.items(), key=lambda kv: -kv[0])[:recent]
        rows = [
            {
                "task": t.tasks[tr.task_id].key,
                "version": tr.version,
                "from": f"{tr.from_stage}/{tr.from_status}",
                "to": f"{tr.to_stage}/{tr.to_status}",
                "actor": tr.actor,
                "reason": tr.reason,
                "at": tr.at,
            }
            for _, tr in latest
        ]
        return StateSummary(
            by_stage=by_stage,
            by_status=by_status,
            running=running,
            recent=rows,
            spent=sum(by_repo.values(), Usage()),
            spent_by_repo=by_repo,
        )
