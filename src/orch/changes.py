"""A count of the store's committed writes, which a reader can wait on: how the dashboard's live
updates learn that something changed without asking the database again and again."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Changes:
    def __init__(self) -> None:
        self._seen = threading.Condition()
        self._count = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def count(self) -> int:
        return self._count

    def bump(self) -> None:
        with self._seen:
            self._count += 1
            self._seen.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after each change, on the thread that made it (so it must be quick);
        returns what stops it."""
        with self._seen:
            self._listeners.append(listener)

        def stop() -> None:
            with self._seen:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def wait(self, after: int, timeout_s: float) -> int:
        """The count once it has moved past `after`, or as it stands after `timeout_s`."""
        with self._seen:
            self._seen.wait_for(lambda: self._count != after, timeout_s)
            return self._count
