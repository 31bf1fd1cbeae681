"""A circuit breaker per agent provider: an outage stops new agent work, not running tasks.

After `threshold` provider failures in a row (rate limits, network errors) the circuit opens:
no new attempt of that agent is launched for `cooldown_s`. Then it is half-open: one attempt may
go, after a cheap preflight check of the agent passes. Its success closes the circuit; a failure
opens it again for twice as long, up to `max_cooldown_s`.

With `shared` (the store), a circuit that opens is noted there, and every process's breakers
take it as their own: each holds back that agent's attempts until the cooldown ends, then lets
one probe go. A probe that succeeds, in any process, closes it everywhere; one that fails opens
it again, everywhere, for longer. Each process counts its own failures in a row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from orch.domain.errors import OrchError

log = logging.getLogger("orch.engine")

T = TypeVar("T")

SHARED_READ_EVERY_S = 1.0  # how stale this process's view of the others' circuits may be


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
    shared: bool = False  # its opening is noted in the store


class SharedCircuits(Protocol):
    """Where the circuits opened in any process are noted (the store)."""

    def now(self) -> float: ...
    def open_circuit(self, name: str, until: float, cooldown_s: float, reason: str) -> None: ...
    def close_circuit(self, name: str) -> None: ...
    def circuits(self) -> dict[str, tuple[float, float, str]]: ...


class Breakers:
    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        max_cooldown_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedCircuits | None = None,
        circuits: Collection[str] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}
        self.shared = shared
        # the circuits this process keeps (None: any): one another process noted for an agent
        # not among them (one since taken out of the settings, say) is not taken in, so it is
        # not shown here as waiting for a probe that will never come
        self._circuits = None if circuits is None else frozenset(circuits)
        self._read_at: float | None = None  # when the store's circuits were read last
        # per circuit, the latest end noted in the store (the store's clock) that this process
        # has taken in: a row is taken again only once it says something newer
        self._seen_until: dict[str, float] = {}
        self._changes = 0  # this process's changes to shared circuits: a read older is stale
        self._away = False  # the store could not be read last time
        # told (agent, reason, cooldown) each time a circuit opens, outside the lock
        self.on_open: Callable[[str, str, float], None] | None = None

    def admit(self, agent: str, preflight: Callable[[], str | None]) -> float:
        """0 if an attempt of `agent` may start now, else the seconds until it may ask again.
        A refused attempt is not this task's failure: it waits."""
        self._follow_others()
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
            probed = st.circuit == Circuit.HALF_OPEN
            if st.circuit == Circuit.OPEN and st.shared:
                # an attempt let go before the circuit opened tells of the provider as it was
                # then: the circuit stays open for every process
                st.failures = 0
            elif ok or probed:
                # the provider answered: whatever the agent made of it, the provider is up
                self._states[agent] = _State()
            else:
                st.failures = 0
            if probed:
                self._changes += 1
        if probed:
            self._share(lambda s: s.close_circuit(agent))

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
            self._changes += 1

        def note(s: SharedCircuits) -> float:
            until = s.now() + cooldown
            s.open_circuit(agent, until, cooldown, reason)
            return until

        until = self._share(note)
        if until is not None:
            with self._lock:
                st.shared = True
                self._seen_until[agent] = max(self._seen_until.get(agent, 0.0), until)
        if self.on_open is not None:
            try:
                self.on_open(agent, reason, cooldown)
            except Exception:  # telling people must never break the breaker
                log.exception("could not tell that the circuit of %s opened", agent)
        return cooldown

    def state(self, agent: str) -> dict[str, object]:
        self._follow_others()
        with self._lock:
            st = self._states.get(agent, _State())
            retry_in, circuit = 0.0, st.circuit
            if st.circuit == Circuit.OPEN:
                retry_in = max(0.0, st.opened_at + st.cooldown_s - self._clock())
                if retry_in == 0.0:
                    circuit = Circuit.HALF_OPEN  # the next attempt probes
            return {
                "circuit": circuit.value,
                "failures_in_a_row": st.failures,
                "retry_in_s": round(retry_in, 3),
                "reason": st.last_reason,
            }

    def states(self) -> dict[str, dict[str, object]]:
        self._follow_others()
        with self._lock:
            names = list(self._states)
        return {name: self.state(name) for name in names}

    # -- the circuits of every process, in the store -----------------------------------------

    def _follow_others(self) -> None:
        """Take the store's circuits as this process's own, when the last look is stale: one
        opened elsewhere, or open again there for longer (a probe failed), opens here until the
        same end (one whose end has passed lets a probe go); one this process took in that is
        gone from the store was closed by a probe that got through."""
        if self.shared is None:
            return
        now = self._clock()
        with self._lock:
            if self._read_at is not None and now - self._read_at < SHARED_READ_EVERY_S:
                return
            self._read_at = now  # another thread does not read it again meanwhile
            changes = self._changes
        try:
            noted = self.shared.circuits()
            store_now = self.shared.now()
        except OrchError as exc:  # the store is away: go on with what this process knows
            if not self._away:
                log.warning("could not read the circuits of other processes: %s", exc)
            self._away = True
            return
        self._away = False
        now = self._clock()
        with self._lock:
            if self._changes != changes:  # read before this process changed one: read again
                self._read_at = None
                return
            for name, (until, cooldown_s, reason) in noted.items():
                if self._circuits is not None and name not in self._circuits:
                    continue
                if until <= self._seen_until.get(name, float("-inf")):
                    continue
                self._seen_until[name] = until
                st = self._states.setdefault(name, _State())
                st.circuit, st.probing, st.shared = Circuit.OPEN, False, True
                st.cooldown_s = max(cooldown_s, 0.0)
                st.opened_at = now + (until - store_now) - st.cooldown_s  # on this clock
                st.last_reason = reason
            closed = [
                name
                for name, st in self._states.items()
                if st.shared and name not in noted and st.circuit != Circuit.CLOSED
            ]
            for name in closed:
                self._states[name] = _State()

    def _share(self, write: Callable[[SharedCircuits], T]) -> T | None:
        """Note a change of a circuit in the store: what `write` returned, None if it could
        not be noted."""
        if self.shared is None:
            return None
        try:
            written = write(self.shared)
        except OrchError as exc:  # the others will learn of it from their own failures
            log.warning("could not share a circuit with other processes: %s", exc)
            return None
        with self._lock:
            self._read_at = None  # read again next time
        return written
