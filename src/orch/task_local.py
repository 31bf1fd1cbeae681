"""The task commands on the store itself, when no ORCH_TOKEN says to go through a running
`orch serve`. A command that only reads opens the store as it is, and refuses one that needs
`orch migrate`; one that writes builds the app, which migrates, as `orch serve` does. Answers
have the API's shapes (orch.services.views), so `--json` prints the same either way."""

from __future__ import annotations

from typing import Any

from orch.bootstrap import App, budgets_per_period, build, open_migrated_store
from orch.config import Settings
from orch.domain.ledger import Budget
from orch.domain.states import TaskStatus
from orch.ports import Store
from orch.services.intake import find_task
from orch.services.over_time import over_time
from orch.services.views import task_detail, task_summary
from orch.services.waits import Waits

ACTOR = "cli"


class LocalTasks:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: Store | None = None
        self._app: App | None = None

    def _reader(self) -> Store:
        if self._app is not None:
            return self._app.store
        if self._store is None:
            self._store = open_migrated_store(self._settings)
        return self._store

    def _writer(self) -> App:
        if self._app is None:
            self._app = build(self._settings)
        return self._app

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._app is not None:
            self._app.close()

    def add(self, repo: str, title: str, body: str) -> dict[str, Any]:
        app = self._writer()
        return task_detail(app.store, app.intake.file(repo, title, body, actor=ACTOR))

    def tasks(self, limit: int, status: str | None) -> dict[str, Any]:
        store = self._reader()
        listed = store.list_tasks(limit, TaskStatus(status) if status else None)
        waits = Waits(store, self._limit)
        return {"tasks": [task_summary(t, waits) for t in listed]}

    def task(self, key: str) -> dict[str, Any]:
        store = self._reader()
        task = find_task(store, key)
        repo = next((r for r in self._settings.repos if r.name == task.repo), None)
        own = budgets_per_period(repo.budgets) if repo is not None else {}
        over = over_time(store, task.repo, own, budgets_per_period(self._settings.budgets))
        return task_detail(store, task, Waits(store, self._limit), over)

    def _limit(self, repo: str) -> int:
        found = next((r for r in self._settings.repos if r.name == repo), None)
        return found.max_active if found is not None else 0

    def decide(self, key: str, approve: bool, comment: str) -> dict[str, Any]:
        app = self._writer()
        task = find_task(app.store, key)
        recorded = app.intake.decide(task.key, approve, ACTOR, comment)
        return {"key": task.key, "checkpoint": task.waiting_for, "recorded": recorded}

    def stop(self, key: str, reason: str) -> dict[str, Any]:
        app = self._writer()
        task, recorded = app.intake.stop(key, ACTOR, reason)
        return {"key": task.key, "status": task.status.value, "recorded": recorded}

    def retry(
        self, key: str, from_stage: str | None, usd: float | None, tokens: int | None
    ) -> dict[str, Any]:
        app = self._writer()
        task = find_task(app.store, key)
        recorded = app.intake.retry(task.key, from_stage, ACTOR, Budget(usd, tokens))
        return {"key": task.key, "recorded": recorded}

    def start(self, key: str) -> dict[str, Any]:
        app = self._writer()
        return task_detail(app.store, app.intake.start(key, actor=ACTOR))
