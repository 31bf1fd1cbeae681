"""The dashboard's server-sent events: a change stream fed by the store's own count of
committed writes (orch.changes), and the tail of a running agent's log.

Nothing here asks the database whether something changed. This process's writes move the count
as they commit; another process's are heard, while someone is watching, through the store's
`watch_changes` (orch.adapters.store.sql.hearing). A stream looks again at who watches it each
time the store changes, and at least every KEEPALIVE_S: a revoked token or an ended session
ends it. Every stream ends when the server stops, so a browser left open never holds up a
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from orch.changes import Changes

KEEPALIVE_S = 15.0  # a comment line this often: proxies keep the connection, the server sees it go
SETTLE_S = 0.1  # a burst of writes (one transition is several) becomes one update
LOG_LOOK_S = 0.5  # an agent's log grows without a store write: looked at this often
LOG_FIRST_BYTES = 16 * 1024  # what a new viewer is shown of a log already written
LOG_STEP_BYTES = 64 * 1024

Watch = Callable[[threading.Event], None]  # runs until the event is set (Store.watch_changes)
Allowed = Callable[[], bool]  # whether the one who opened a stream may still see it


def event(name: str, data: str = "") -> str:
    lines = data.splitlines() or [""]
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


class Streams:
    def __init__(self, changes: Changes, watch: Watch | None = None) -> None:
        self.changes = changes
        self._watch = watch
        self._lock = threading.Lock()
        self._wakes: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._closing = False
        self._watching: threading.Event | None = None  # set to stop the watch that runs
        self._unlisten = changes.listen(self._wake_all)

    def close(self) -> None:
        """End every stream, now and from now on: the server is stopping."""
        self._closing = True
        self._unlisten()
        with self._lock:
            if self._watching is not None:
                self._watching.set()
                self._watching = None
        self._wake_all()

    def _wake_all(self) -> None:
        with self._lock:
            wakes = list(self._wakes)
        for loop, wake in wakes:
            with contextlib.suppress(RuntimeError):  # a closed loop: that stream is over
                loop.call_soon_threadsafe(wake.set)

    def _join(self) -> asyncio.Event:
        wake = asyncio.Event()
        with self._lock:
            self._wakes.add((asyncio.get_running_loop(), wake))
            if self._watch is not None and self._watching is None and not self._closing:
                # only while someone watches: an unwatched dashboard costs nothing
                self._watching = stop = threading.Event()
                threading.Thread(
                    target=self._run_watch, args=(self._watch, stop), name="orch-watch", daemon=True
                ).start()
        return wake

    def _run_watch(self, watch: Watch, stop: threading.Event) -> None:
        try:
            watch(stop)
        finally:
            with self._lock:  # ended on its own: the next stream starts another
                if self._watching is stop:
                    self._watching = None

    def _leave(self, wake: asyncio.Event) -> None:
        with self._lock:
            self._wakes = {(loop, w) for loop, w in self._wakes if w is not wake}
            if not self._wakes and self._watching is not None:
                self._watching.set()
                self._watching = None

    async def changed(self, allowed: Allowed) -> AsyncIterator[str]:
        """`change` events, each carrying the change count, as the store changes."""
        wake = self._join()
        try:
            yield "retry: 2000\n\n"
            yield event("change", str(self.changes.count))
            while not self._closing:
                try:
                    await asyncio.wait_for(wake.wait(), KEEPALIVE_S)
                except TimeoutError:
                    if not await asyncio.to_thread(allowed):
                        return
                    yield ": keep-alive\n\n"
                    continue
                await asyncio.sleep(SETTLE_S)
                wake.clear()
                if self._closing or not await asyncio.to_thread(allowed):
                    return
                yield event("change", str(self.changes.count))
        finally:
            self._leave(wake)

    async def log(
        self, locate: Callable[[], tuple[Path | None, bool]], allowed: Allowed
    ) -> AsyncIterator[str]:
        """`line` events with what a log file gains, then `end` once `locate` says the run that
        writes it is over and all of it was sent. `locate` (called again after a store change)
        names the file and whether its run has ended."""
        wake = self._join()
        reader = _Tail()
        try:
            yield "retry: 5000\n\n"
            path, over = await asyncio.to_thread(locate)
            seen, looked = self.changes.count, time.monotonic()
            while not self._closing:
                moved = self.changes.count != seen
                if moved or time.monotonic() - looked > KEEPALIVE_S:
                    if not await asyncio.to_thread(allowed):
                        return
                    looked = time.monotonic()
                if moved:
                    seen = self.changes.count
                    path, over = await asyncio.to_thread(locate)
                lines = await asyncio.to_thread(reader.read, path) if path else []
                for line in lines:
                    yield event("line", line)
                if over and not lines:
                    yield event("end")
                    return
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), LOG_LOOK_S)
        finally:
            self._leave(wake)


class _Tail:
    """Reads what a file gained since the last read, in whole lines."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.offset = 0
        self.partial = b""

    def read(self, path: Path) -> list[str]:
        if path != self.path:
            self.path, self.offset, self.partial = path, 0, b""
            try:
                size = path.stat().st_size
            except OSError:
                return []
            if size > LOG_FIRST_BYTES:
                self.offset = size - LOG_FIRST_BYTES
        try:
            with path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read(LOG_STEP_BYTES)
        except OSError:
            return []
        self.offset += len(chunk)
        data = self.partial + chunk
        *whole, self.partial = data.split(b"\n")
        if len(self.partial) > LOG_STEP_BYTES:  # a line with no end in sight: shown as it is
            whole.append(self.partial)
            self.partial = b""
        return [line.decode("utf-8", "replace").rstrip("\r") for line in whole]
