"""A count of the store's committed writes, which a reader can wait on: how the dashboard's live
updates learn that something changed without asking the database again and again."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Changes:
    def __init__(self) -> None:
        self._seen = threading.Condition()
        self._count = 0
        self._listeners: list[tuple[Callable[[], None], bool]] = []

    @property
    def count(self) -> int:
        return self._count

    def bump(self, *, heard: bool = False) -> None:
        """One more change: made in this process, or `heard` from another."""
        with self._seen:
            self._count += 1
            self._seen.notify_all()
            listeners = [f for f, heard_only in self._listeners if heard or not heard_only]
        for listener in listeners:
            listener()

    def listen(
        self, listener: Callable[[], None], *, heard_only: bool = False
    ) -> Callable[[], None]:
        """Call `listener` after each change (with `heard_only`, each heard from another
        process), on the thread that made or heard it (so it must be quick); returns what stops
        it."""
        entry = (listener, heard_only)
        with self._seen:
            self._listeners.append(entry)

        def stop() -> None:
            with self._seen:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return stop

    def wait(self, after: int, timeout_s: float) -> int:
        """The count once it has moved past `after`, or as it stands after `timeout_s`."""
        with self._seen:
            self._seen.wait_for(lambda: self._count != after, timeout_s)
            return self._count


class Hearing:
    """One thread that hears the changes other processes commit (`watch`, the store's
    `watch_changes`), shared by all in this process who need them and run only while one does:
    the dispatcher, to claim work and apply STOPs as they are written, and the dashboard's live
    pages."""

    def __init__(self, watch: Callable[[threading.Event], None]) -> None:
        self._watch = watch
        self._lock = threading.Lock()
        self._holders = 0
        self._stop: threading.Event | None = None

    def hold(self) -> Callable[[], None]:
        """Hear from now on; returns what lets go (the last to let go stops the thread)."""
        with self._lock:
            self._holders += 1
            if self._stop is None:
                self._stop = stop = threading.Event()
                threading.Thread(
                    target=self._run, args=(stop,), name="orch-hearing", daemon=True
                ).start()
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._holders -= 1
                if self._holders == 0 and self._stop is not None:
                    self._stop.set()
                    self._stop = None

        return release

    def watch(self, stop: threading.Event) -> None:
        """Hear until `stop` is set (the shape of `watch_changes`, for who runs a thread)."""
        release = self.hold()
        try:
            stop.wait()
        finally:
            release()

    def _run(self, stop: threading.Event) -> None:
        try:
            self._watch(stop)
        finally:
            with self._lock:  # ended on its own: the next holder starts another
                if self._stop is stop:
                    self._stop = None
