"""How late serve's event loop runs what falls due: every request, webhook and live page waits
on it, so a handler that blocks the loop, or more requests than it keeps up with, show here
first. A probe sleeps a short interval again and again and records how much longer than asked
each sleep took.

It is the one figure of /metrics this process counts in its own memory: it is about this
process's loop, which no other process shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from bisect import bisect_left
from collections.abc import AsyncIterator

from orch.domain.metrics import Histogram

LAG_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLag:
    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()  # /metrics reads it from a worker thread
        self._counts = [0] * (len(LAG_BOUNDS) + 1)  # per bucket, the last one past every bound
        self._total = 0.0

    def observe(self, lag_s: float) -> None:
        lag_s = max(lag_s, 0.0)
        with self._lock:
            self._counts[bisect_left(LAG_BOUNDS, lag_s)] += 1
            self._total += lag_s

    def histogram(self) -> Histogram:
        with self._lock:
            counts, total = list(self._counts), self._total
        cumulative, running = [], 0
        for n in counts[:-1]:
            running += n
            cumulative.append(running)
        return Histogram(LAG_BOUNDS, tuple(cumulative), sum(counts), total)

    async def probe(self) -> None:
        """Until cancelled: sleep, and record how late the loop woke."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe(loop.time() - asked)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The probe, for as long as the block lasts (an app's lifespan)."""
        task = asyncio.create_task(self.probe(), name="orch-loop-lag")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
