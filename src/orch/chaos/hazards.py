"""Faults the fake Plane and Gitea inject at random while a chaos run's faults last: a 5xx,
a 429 with Retry-After, an answer slower than orch waits (the request is still carried out after
orch gave up on it), and a request carried out whose answer is dropped. Each applies to the
requests of a few named targets (a merge, a push, a state PATCH...) at a fixed rate."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from orch.fakes.faults import Fault, Faults

KINDS = ("5xx", "429", "slow", "drop")
RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Target:
    """Requests a fault may hit: `method` and a regular expression searched in the path."""

    name: str
    method: str
    path: str

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.search(self.path, path) is not None


# what orch asks of Gitea that the faults aim at; reads are left alone, so every fault
# lands on a step that changes something
FORGE_TARGETS = (
    Target("create PR", "POST", r"^/api/v1/repos/[^/]+/[^/]+/pulls$"),
    Target("push", "POST", r"/git-receive-pack$"),
    Target("status", "POST", r"^/api/v1/repos/[^/]+/[^/]+/statuses/"),
    Target("merge", "POST", r"/pulls/\d+/merge$"),
    Target("branch delete", "DELETE", r"/branches/"),
)
TRACKER_TARGETS = (
    Target("read", "GET", r"^/api/v1/"),
    Target("state PATCH", "PATCH", r"/work-items/[^/]+/$"),
    Target("comment", "POST", r"/comments/$"),
)


class RandomFaults(Faults):
    """A fake's faults: those armed by hand first, as `Faults` takes them; then, while
    `enabled`, a fault of a random kind on a share `rate` of the requests a target matches.
    `slow_s` is longer than orch's timeout for the fake."""

    def __init__(
        self,
        targets: tuple[Target, ...],
        rate: float,
        rng: random.Random,
        slow_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.targets = targets
        self.rate = rate
        self.rng = rng
        self.slow_s = slow_s
        self.enabled = False
        self.requests: Counter[str] = Counter()  # target -> requests it matched
        self.counts: Counter[tuple[str, str]] = Counter()  # (target, kind) -> faults injected
        # (when, method, path) of each slow answer: what it asked is done `slow_s` later, after
        # orch gave up on it and maybe after someone changed the same thing since
        self.slow: list[tuple[float, str, str]] = []
        self._clock = clock
        self._pick = threading.Lock()

    def take(self, method: str, path: str) -> Fault | None:
        armed = super().take(method, path)
        if armed is not None:
            return armed
        target = next((t for t in self.targets if t.matches(method, path)), None)
        if target is None:
            return None
        with self._pick:
            self.requests[target.name] += 1
            if not self.enabled or self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(KINDS)
            status = self.rng.choice((500, 502, 503))
            self.counts[(target.name, kind)] += 1
            if kind == "slow":
                self.slow.append((self._clock(), method, path))
        fault = self._fault(kind, status)
        self.injected.append((method, path, fault))
        return fault

    def _fault(self, kind: str, status: int) -> Fault:
        if kind == "5xx":
            return Fault(status=status)
        if kind == "429":
            return Fault(status=429, retry_after=RETRY_AFTER_S)
        if kind == "slow":
            return Fault(delay_s=self.slow_s)
        return Fault(drop=True)

    def total(self) -> int:
        return sum(self.counts.values())

    def by_target(self) -> dict[str, dict[str, int]]:
        """target -> fault kind -> how many, for the report."""
        out: dict[str, dict[str, int]] = {}
        for (target, kind), n in sorted(self.counts.items()):
            out.setdefault(target, {})[kind] = n
        return out

    def by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, kind), n in self.counts.items():
            out[kind] += n
        return dict(sorted(out.items()))
