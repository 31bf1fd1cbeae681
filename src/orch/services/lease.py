"""A held lease, renewed by the supervisor while children run."""

from __future__ import annotations

import time
from collections.abc import Callable

from orch.domain.errors import LeaseLost
from orch.domain.model import Claim
from orch.ports import AgentProcess, Store


class Lease:
    def __init__(
        self,
        store: Store,
        claim: Claim,
        ttl_s: float,
        heartbeat_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.claim = claim
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self._monotonic = monotonic
        self._last = monotonic()

    def renew(self) -> None:
        self.store.renew(self.claim, self.ttl_s)
        self._last = self._monotonic()

    def renew_if_due(self) -> None:
        if self._monotonic() - self._last >= self.heartbeat_s:
            self.renew()

    def supervise(
        self, proc: AgentProcess, timeout_s: float, grace_s: float
    ) -> tuple[int | None, bool]:
        """Wait for a child while heartbeating. Returns (exit code, timed out).

        A failed renewal means another worker may own the job now: the child is killed before
        the LeaseLost propagates, so no two agents ever work one worktree.
        """
        deadline = self._monotonic() + timeout_s
        while True:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return proc.kill(grace_s), True
            code = proc.wait(min(self.heartbeat_s, remaining))
            if code is not None:
                return code, False
            try:
                self.renew()
            except LeaseLost:
                proc.kill(grace_s)
                raise
