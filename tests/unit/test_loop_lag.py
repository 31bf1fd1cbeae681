"""The API's event-loop lag: a handler that blocks the loop shows up as lag, counted in buckets
as /metrics reports them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from orch.web.looplag import LAG_BOUNDS, LoopLag

T = TypeVar("T")


def in_a_loop_of_its_own(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `scenario` in a new event loop, on a thread of its own: the test's thread may have
    a loop running already (another test's)."""
    out: list[T] = []
    runner = threading.Thread(target=lambda: out.append(asyncio.run(scenario())))
    runner.start()
    runner.join(30)
    assert out, "the scenario did not finish"
    return out[0]


def test_a_loop_blocked_for_a_while_is_seen_late_by_at_least_that_much() -> None:
    lag = LoopLag(interval_s=0.01)

    async def scenario() -> None:
        async with lag.running():
            await asyncio.sleep(0.1)  # the probe wakes on time while nothing blocks
            time.sleep(0.3)  # a handler that blocks the loop
            await asyncio.sleep(0.1)

    in_a_loop_of_its_own(scenario)
    h = lag.histogram()
    assert h.count >= 3
    at_most = dict(zip(h.bounds, h.cumulative, strict=True))
    # one wake-up at least came a quarter of a second late or more: past the 0.25 s bound
    assert at_most[0.25] < h.count
    assert h.total >= 0.25
    assert h.bounds == LAG_BOUNDS


def test_the_probe_ends_with_its_block() -> None:
    lag = LoopLag(interval_s=0.01)

    async def scenario() -> set[str]:
        async with lag.running():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)
        return {t.get_name() for t in asyncio.all_tasks()}

    assert "orch-loop-lag" not in in_a_loop_of_its_own(scenario)
