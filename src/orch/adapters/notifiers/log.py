"""Notifiers that need no network: a log line, or a list kept in memory for tests."""

from __future__ import annotations

import logging

from orch.domain.news import News

log = logging.getLogger("orch.notify")


class LogNotifier:
    def notify(self, key: str, text: str, news: News | None = None) -> None:
        log.info("notify %s: %s", key, text)


class MemoryNotifier:
    """Keeps what it was told: `sent` as (key, text), and `news` as (key, News) for the
    notifications that came with News. Set `fail_with` to make every delivery raise it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.news: list[tuple[str, News]] = []
        self.fail_with: Exception | None = None

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((key, text))
        if news is not None:
            self.news.append((key, news))
