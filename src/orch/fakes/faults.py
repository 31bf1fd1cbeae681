"""Faults a fake server can inject, as the real providers show them: an error status (5xx, or
429 with Retry-After), an answer slower than the client waits, and a request that is carried out
but whose answer is never sent (the connection drops after the commit)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass


@dataclass
class Fault:
    method: str = "*"  # the HTTP method it applies to, or any
    path: str = ""  # a regular expression searched for in the request's path
    status: int = 0  # answer with this status instead of doing anything
    retry_after: float | None = None  # with a 429 or 503: the Retry-After header
    delay_s: float = 0.0  # wait this long before doing anything
    drop: bool = False  # do what was asked, then close the connection without an answer
    times: int = 1  # how many requests it applies to

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and re.search(self.path, path) is not None


class Faults:
    """The faults armed on one fake, taken by the requests they match, first armed first."""

    def __init__(self) -> None:
        self._armed: list[Fault] = []
        self._lock = threading.Lock()
        self.injected: list[tuple[str, str, Fault]] = []  # what was injected, in order

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._armed.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._armed:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._armed.remove(fault)
                    self.injected.append((method, path, fault))
                    return fault
        return None
