"""News to several channels at once: each is tried, whichever others fail."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from orch.domain.errors import OrchError
from orch.domain.news import News
from orch.ports import Notifier

log = logging.getLogger("orch.notify")


class ChannelsFailed(OrchError):
    """Some channels did not deliver; `failed` names them, the message says why."""

    def __init__(self, failed: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in failed))
        self.failed = [name for name, _ in failed]


class FanOut:
    def __init__(self, channels: Sequence[tuple[str, Notifier]]) -> None:
        self.channels = list(channels)

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        failed: list[tuple[str, str]] = []
        for name, channel in self.channels:
            try:
                channel.notify(key, text, news)
            except Exception as exc:
                log.warning("notifier %s failed on %s: %s", name, key, exc)
                failed.append((name, str(exc) or type(exc).__name__))
        if failed:
            raise ChannelsFailed(failed)
