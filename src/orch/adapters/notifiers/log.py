"""Notifiers that need no network: a log line, or a list kept in memory for tests."""

from __future__ import annotations

import logging

log = logging.getLogger("orch.notify")


class LogNotifier:
    def notify(self, key: str, text: str) -> None:
        log.info("notify %s: %s", key, text)


class MemoryNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def notify(self, key: str, text: str) -> None:
        self.sent.append((key, text))
