"""A circuit breaker per agent provider: an outage stops new agent work, not running tasks.

After `threshold` provider failures in a row (rate limits, network errors) the circuit opens:
no new attempt of that agent is launched for `cooldown_s`. Then it is half-open: one attempt may
go, after a cheap preflight check of the agent passes. Its success closes the circuit; a failure
opens it again for twice as long, up to `max_cooldown_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger("orch.engine")


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class _State:
    circuit: Circuit = Circuit.CLOSED
    failures: int = 0  # provider failures in a row
    opened_at: float = 0.0
    cooldown_s: float = 0.0
    probing: bool = False  # the half-open attempt is out
    last_reason: str = ""


class Breakers:
    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        max_cooldown_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}
        # told (agent, reason, cooldown) each time a circuit opens, outside the lock
        self.on_open: Callable[[str, str, float], None] | None = None

    def admit(self, agent: str, preflight: Callable[[], str | None]) -> float:
        """0 if an attempt of `agent` may start now, else the seconds until it may ask again.
        A refused attempt is not this task's failure: it waits."""
        with self._lock:
            st = self._states.setdefault(agent, _State())
            if st.circuit == Circuit.CLOSED:
                return 0.0
            now = self._clock()
            if st.circuit == Circuit.OPEN:
                remaining = st.opened_at + st.cooldown_s - now
                if remaining > 0:
                    return remaining
                st.circuit = Circuit.HALF_OPEN
                st.probing = False
            if st.probing:
                return max(1.0, st.cooldown_s / 4)
            st.probing = True
        problem = preflight()
        if problem:
            return self._open(agent, f"preflight: {problem}", longer=True)
        return 0.0

    def record(
        self,
        agent: str,
        *,
        ok: bool,
        provider_failure: bool = False,
        reason: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        """The outcome of an attempt that was admitted; `retry_after_s`, how long a provider
        that failed asked to be left alone (a circuit it opens stays open at least that long)."""
        if provider_failure:
            self._failure(agent, reason, retry_after_s)
            return
        with self._lock:
            st = self._states.setdefault(agent, _State())
            if ok or st.circuit == Circuit.HALF_OPEN:
                # the provider answered: whatever the agent made of it, the provider is up
                self._states[agent] = _State()
            else:
                st.failures = 0

    def release(self, agent: str) -> None:
        """An admitted attempt ended without telling how the provider did (the job crashed,
        lost its lease, failed before the agent ran): let another attempt probe."""
        with self._lock:
            st = self._states.get(agent)
            if st is not None and st.circuit == Circuit.HALF_OPEN:
                st.probing = False

    def _failure(self, agent: str, reason: str, retry_after_s: float | None = None) -> None:
        with self._lock:
            st = self._states.setdefault(agent, _State())
            st.failures += 1
            st.last_reason = reason
            reopen = st.circuit == Circuit.HALF_OPEN
            trip = st.circuit == Circuit.CLOSED and st.failures >= self.threshold
        if reopen:
            self._open(agent, reason, longer=True, at_least_s=retry_after_s)
        elif trip:
            self._open(agent, reason, longer=False, at_least_s=retry_after_s)

    def _open(
        self, agent: str, reason: str, *, longer: bool, at_least_s: float | None = None
    ) -> float:
        """Open the circuit; return its cooldown."""
        with self._lock:
            st = self._states.setdefault(agent, _State())
            base = st.cooldown_s * 2 if longer and st.cooldown_s else self.cooldown_s
            st.cooldown_s = min(base, self.max_cooldown_s)
            if at_least_s is not None:
                # the provider said when to come back: not sooner, within the longest cooldown
                st.cooldown_s = max(st.cooldown_s, min(at_least_s, self.max_cooldown_s))
            st.circuit = Circuit.OPEN
            st.opened_at = self._clock()
            st.probing = False
            st.last_reason = reason
            cooldown = st.cooldown_s
        if self.on_open is not None:
            try:
                self.on_open(agent, reason, cooldown)
            except Exception:  # telling people must never break the breaker
                log.exception("could not tell that the circuit of %s opened", agent)
        return cooldown

    def state(self, agent: str) -> dict[str, object]:
        with self._lock:
            st = self._states.get(agent, _State())
            retry_in = 0.0
            if st.circuit == Circuit.OPEN:
                retry_in = max(0.0, st.opened_at + st.cooldown_s - self._clock())
            return {
                "circuit": st.circuit.value,
                "failures_in_a_row": st.failures,
                "retry_in_s": round(retry_in, 3),
                "reason": st.last_reason,
            }

    def states(self) -> dict[str, dict[str, object]]:
        with self._lock:
            names = list(self._states)
        return {name: self.state(name) for name in names}
