"""The people around orch during a chaos run: one who approves and STOPs through the API, and the
API client they (and the ticket filer) use, which shrugs off a serve that is down or paused."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Api:
    """orch's HTTP API at serve's current address. While serve is down, restarting or paused,
    a call answers None instead of raising, as it does for a 5xx."""

    def __init__(self, url: Callable[[], str], timeout_s: float = 2.0) -> None:
        self._url = url
        self._client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Reply | None:
        base = self._url()
        if not base:
            return None
        try:
            response = self._client.request(method, base + path, json=body)
            answer = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return None if response.status_code >= 500 else Reply(response.status_code, answer)

    def tasks(self) -> list[dict[str, Any]] | None:
        reply = self.call("GET", "/api/v1/tasks?limit=500")
        return reply.body.get("tasks") if reply is not None and reply.ok else None


class Actor(Protocol):
    """Whoever plays the people of a run: started with it, halted before its checks."""

    def start(self) -> None: ...

    def halt(self) -> None: ...

    def figures(self) -> dict[str, Any]: ...


class Person(threading.Thread):
    """Approves every checkpoint (now and then twice) and STOPs a share of the tasks once (now
    and then twice) at a random moment of their life."""

    def __init__(self, api: Api, rng: random.Random, stop_share: float) -> None:
        super().__init__(name="chaos-person", daemon=True)
        self.api = api
        self.rng = rng
        self.stop_share = stop_share
        self.first_seen: dict[str, float] = {}
        self.stop_at: dict[str, float] = {}
        self.stopped: set[str] = set()
        self.approved: set[tuple[str, int]] = set()
        self.approvals = self.duplicate_approvals = self.stops = self.duplicate_stops = 0
        self._halt = threading.Event()

    def halt(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        while not self._halt.wait(0.3):
            tasks = self.api.tasks()
            for task in tasks or []:
                self._consider(task)

    def figures(self) -> dict[str, Any]:
        return {
            "approvals": self.approvals,
            "duplicate_approvals": self.duplicate_approvals,
            "duplicate_stops": self.duplicate_stops,
        }

    def _consider(self, task: dict[str, Any]) -> None:
        key, status = task["key"], task["status"]
        now = time.monotonic()
        if key not in self.first_seen:
            self.first_seen[key] = now
            if self.rng.random() < self.stop_share:
                self.stop_at[key] = now + self.rng.uniform(0.0, 20.0)
        if status == "waiting" and (key, task["version"]) not in self.approved:
            self._approve(key, task["version"])
        if key in self.stop_at and key not in self.stopped and now >= self.stop_at[key]:
            self._press_stop(key, status)

    def _approve(self, key: str, version: int) -> None:
        body = {"actor": "chaos-person", "comment": "approved by the chaos harness"}
        reply = self.api.call("POST", f"/api/v1/tasks/{key}/approve", body)
        if reply is None:
            return  # serve is away: try again on the next round
        self.approved.add((key, version))
        self.approvals += reply.ok
        if self.rng.random() < 0.2:
            self.api.call("POST", f"/api/v1/tasks/{key}/approve", body)
            self.duplicate_approvals += 1

    def _press_stop(self, key: str, status: str) -> None:
        if status in ("done", "cancelled"):
            self.stopped.add(key)  # it finished before its STOP was due
            return
        body = {"actor": "chaos-person", "reason": "stopped by the chaos harness"}
        reply = self.api.call("POST", f"/api/v1/tasks/{key}/stop", body)
        if reply is None:
            return
        self.stopped.add(key)
        self.stops += reply.ok
        if self.rng.random() < 0.3:
            self.api.call("POST", f"/api/v1/tasks/{key}/stop", body)
            self.duplicate_stops += 1
