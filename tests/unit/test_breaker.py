"""The provider circuit breaker as a state machine on a simulated clock."""

from __future__ import annotations

import itertools
from typing import Any

from orch.domain.failures import FailureClass, classify
from orch.services.breaker import Breakers
from orch.testing import SimClock, memory_store


def ok() -> str | None:
    return None


def test_the_circuit_opens_after_the_threshold_of_provider_failures_in_a_row() -> None:
    clock = SimClock()
    b = Breakers(threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert b.admit("claude", ok) == 0
        b.record("claude", ok=False, provider_failure=True, reason="429")
    # another kind of failure means the provider answered: the count starts again
    b.record("claude", ok=False)
    b.record("claude", ok=False, provider_failure=True, reason="429")
    assert b.state("claude")["circuit"] == "closed"
    b.record("claude", ok=False, provider_failure=True, reason="429")
    b.record("claude", ok=False, provider_failure=True, reason="429")
    assert b.state("claude")["circuit"] == "open"
    assert b.admit("claude", ok) == 10
    assert b.admit("codex", ok) == 0  # one provider's outage is not another's


def test_a_circuit_opened_by_a_rate_limit_stays_open_as_long_as_the_provider_asked() -> None:
    clock = SimClock()
    b = Breakers(threshold=1, cooldown_s=10, max_cooldown_s=600, clock=clock)
    b.record("claude", ok=False, provider_failure=True, reason="429", retry_after_s=120)
    assert b.admit("claude", ok) == 120
    clock.advance(120)
    assert b.admit("claude", ok) == 0  # half open: the probe goes
    # a retry-after longer than the longest cooldown is held to that
    b.record("codex", ok=False, provider_failure=True, reason="429", retry_after_s=86400)
    assert b.admit("codex", ok) == 600


def test_half_open_lets_one_probe_through_and_its_success_closes_the_circuit() -> None:
    clock = SimClock()
    b = Breakers(threshold=1, cooldown_s=10, clock=clock)
    b.record("claude", ok=False, provider_failure=True, reason="overloaded")
    clock.advance(10)
    assert b.admit("claude", ok) == 0  # the probe
    assert b.admit("claude", ok) > 0  # nobody else while it is out
    b.record("claude", ok=True)
    assert b.state("claude")["circuit"] == "closed"
    assert b.admit("claude", ok) == 0


def test_a_failed_probe_or_preflight_reopens_for_twice_as_long_up_to_the_maximum() -> None:
    clock = SimClock()
    b = Breakers(threshold=1, cooldown_s=10, max_cooldown_s=25, clock=clock)
    b.record("claude", ok=False, provider_failure=True, reason="503")
    clock.advance(10)
    assert b.admit("claude", ok) == 0
    b.record("claude", ok=False, provider_failure=True, reason="503")
    assert b.state("claude")["retry_in_s"] == 20
    clock.advance(20)
    assert b.admit("claude", lambda: "connection refused") == 25  # capped
    assert b.state("claude")["reason"] == "preflight: connection refused"


def test_a_probe_that_ended_without_an_outcome_lets_another_probe_go() -> None:
    clock = SimClock()
    b = Breakers(threshold=1, cooldown_s=10, clock=clock)
    b.record("claude", ok=False, provider_failure=True, reason="429")
    clock.advance(10)
    assert b.admit("claude", ok) == 0
    b.release("claude")  # its job crashed before the agent ran
    assert b.admit("claude", ok) == 0


def test_failures_are_classed_by_exit_code_and_what_the_agent_printed() -> None:
    assert classify(127, "")[0] == FailureClass.PERMANENT
    assert classify(1, "Error: invalid x-api-key")[0] == FailureClass.PERMANENT
    assert classify(1, "API Error: 429 Too Many Requests")[0] == FailureClass.PROVIDER
    assert classify(1, "connect ECONNREFUSED 127.0.0.1:443")[0] == FailureClass.PROVIDER
    assert classify(1, "AssertionError: expected 3")[0] == FailureClass.TRANSIENT
    assert classify(-9, "")[0] == FailureClass.TRANSIENT


def test_a_circuit_opened_in_one_process_holds_back_the_others_and_a_probe_anywhere_decides() -> (
    None
):
    clock = SimClock()
    store = memory_store(clock)  # both processes' store, on one clock
    worker = Breakers(threshold=2, cooldown_s=60, clock=clock, shared=store)
    serve = Breakers(threshold=2, cooldown_s=60, clock=clock, shared=store)
    for _ in range(2):
        worker.record("claude", ok=False, provider_failure=True, reason="HTTP 529 overloaded")

    assert serve.admit("claude", ok) == 60, "serve never saw a failure, but honours the circuit"
    seen = serve.states()["claude"]
    assert seen["circuit"] == "open" and seen["reason"] == "HTTP 529 overloaded"
    assert serve.admit("codex", ok) == 0
    clock.advance(45)
    assert serve.admit("claude", ok) == 15

    # its cooldown is over: one probe goes, and the next attempt waits for it
    clock.advance(15)
    assert serve.admit("claude", ok) == 0
    assert serve.admit("claude", ok) == 15
    # the probe fails: open again, for twice as long, in the worker too
    serve.record("claude", ok=False, provider_failure=True, reason="HTTP 529 overloaded")
    clock.advance(1)
    assert worker.admit("claude", ok) == 119

    # the next probe gets through: closed everywhere
    clock.advance(119)
    assert serve.admit("claude", ok) == 0
    serve.record("claude", ok=True)
    clock.advance(1)  # past what the worker keeps of the store's circuits
    assert worker.admit("claude", ok) == 0
    assert worker.state("claude")["circuit"] == "closed"
    assert store.circuits() == {}


def test_an_attempt_let_go_before_the_circuit_opened_does_not_close_it_for_the_others() -> None:
    clock = SimClock()
    store = memory_store(clock)
    worker = Breakers(threshold=1, cooldown_s=60, clock=clock, shared=store)
    serve = Breakers(threshold=1, cooldown_s=60, clock=clock, shared=store)
    worker.record("claude", ok=False, provider_failure=True, reason="HTTP 500")
    assert serve.admit("claude", ok) == 60

    # a run serve started before the circuit opened comes back: the provider answered it then
    serve.record("claude", ok=True)
    clock.advance(1)

    assert worker.admit("claude", ok) == 59
    assert serve.admit("claude", ok) == 59
    assert list(store.circuits()) == ["claude"]


class Lagging:
    """The store as a process sees it across a network: its clock read a little late, by a
    different amount each time."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.lags = itertools.cycle((0.0005, 0.002, 0.004))

    def now(self) -> float:
        return float(self.store.now()) - next(self.lags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_one_probe_at_a_time_however_late_the_stores_clock_is_read() -> None:
    clock = SimClock()
    store = memory_store(clock)
    worker = Breakers(threshold=1, cooldown_s=30, clock=clock, shared=store)
    serve = Breakers(threshold=1, cooldown_s=30, clock=clock, shared=Lagging(store))
    worker.record("claude", ok=False, provider_failure=True, reason="HTTP 529")
    assert serve.admit("claude", ok) > 29

    clock.advance(31)
    assert serve.admit("claude", ok) == 0, "the probe"
    for _ in range(5):  # it runs for a while; serve reads the store again every second
        clock.advance(1)
        assert serve.admit("claude", ok) > 0, "a second probe went while the first was out"


def test_a_process_started_after_a_circuit_opened_takes_it_and_shows_when_a_probe_may_go() -> None:
    clock = SimClock()
    store = memory_store(clock)
    Breakers(threshold=1, cooldown_s=30, clock=clock, shared=store).record(
        "claude", ok=False, provider_failure=True, reason="HTTP 529"
    )
    clock.advance(1000)  # nobody probed since

    restarted = Breakers(threshold=1, cooldown_s=30, clock=clock, shared=store)

    seen = restarted.states()["claude"]
    assert (seen["circuit"], seen["retry_in_s"], seen["reason"]) == ("half_open", 0.0, "HTTP 529")
    assert restarted.admit("claude", ok) == 0, "its probe"
    restarted.record("claude", ok=True)
    assert store.circuits() == {}


def test_a_circuit_of_an_agent_this_process_does_not_run_is_not_taken_in() -> None:
    clock = SimClock()
    store = memory_store(clock)
    Breakers(threshold=1, cooldown_s=30, clock=clock, shared=store).record(
        "retired", ok=False, provider_failure=True, reason="HTTP 529"
    )
    Breakers(threshold=1, cooldown_s=30, clock=clock, shared=store).record(
        "claude", ok=False, provider_failure=True, reason="HTTP 529"
    )

    restarted = Breakers(threshold=1, cooldown_s=30, clock=clock, shared=store, circuits=["claude"])

    assert list(restarted.states()) == ["claude"]
    assert restarted.admit("claude", ok) == 30
