"""Webhook deliveries, worked from the store: each is stored once by its provider's id before
it is answered (rule 15), then worked on a thread of its own, one at a time, oldest first. A
delivery that cannot be worked is recorded as failed and stops no other; what it missed, the
tracker's poll repairs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orch.ports import Store

log = logging.getLogger("orch.deliveries")

RETRY_S = 5.0  # after a round that failed (the store down, say), before the next


class Deliveries:
    def __init__(self, store: Store, source: str, work: Callable[[str], str]) -> None:
        """`work` does what a stored body asks, and says what it did."""
        self.store = store
        self.source = source
        self.work = work
        self.wake = threading.Event()  # set when a delivery is stored
        self.lock = threading.Lock()  # one worker of this source's deliveries at a time

    def receive(self, delivery: str, body: str) -> bool:
        """Store a verified delivery once (False: it was stored before) and wake the worker."""
        stored = self.store.record_delivery(self.source, delivery, body)
        self.wake.set()
        return stored

    def drain(self) -> int:
        """Work every stored delivery not yet worked; how many were."""
        worked = 0
        with self.lock:
            while True:
                batch = self.store.pending_deliveries(self.source)
                if not batch:
                    return worked
                for delivery in batch:
                    try:
                        outcome = self.work(delivery.body)
                    except Exception as exc:
                        outcome = f"failed: {exc}"
                        log.warning("%s delivery %s: %s", self.source, delivery.delivery, exc)
                    self.store.finish_delivery(delivery.id, outcome)
                    worked += 1

    def run(
        self,
        stop: threading.Event,
        every_s: float = 30.0,
        also: Callable[[], None] | None = None,
    ) -> None:
        """Work deliveries as they arrive, and `also` every `every_s`, until `stop` (which
        should set `wake` too, to be seen at once)."""
        clock = time.monotonic
        due = 0.0
        while not stop.is_set():
            pause = 0.0
            try:
                self.drain()
                if also is not None and clock() >= due:
                    also()
                    due = clock() + every_s
            except Exception as exc:
                log.error("%s deliveries failed: %s", self.source, exc)
                pause = RETRY_S
            wait = every_s if also is None else max(0.0, due - clock())
            self.wake.wait(timeout=max(pause, 0.05, min(every_s, wait)))
            self.wake.clear()
