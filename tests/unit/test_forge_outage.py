"""A forge that does not answer pauses the work that needs it and costs no task an attempt; a
merge whose outcome it could not tell is settled by the sweeper once it answers again."""

from __future__ import annotations

from orch.domain.errors import ForgeError, ForgeUnavailable
from orch.domain.news import NewsKind
from orch.domain.states import EffectState, TaskStatus
from orch.services.breaker import Breakers
from orch.testing import InstantAgent, SimClock, memory_store, rig


def test_a_forge_that_does_not_answer_holds_tasks_back_without_parking_them() -> None:
    clock = SimClock()
    r = rig(
        {"default": InstantAgent()},
        store=memory_store(clock),
        clock=clock,
        breakers=Breakers(threshold=4, cooldown_s=60.0, clock=clock),  # > attempts
    )
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        assert r.intake.decide(task.key, True, "ann")
        r.forge.fail_merge = ForgeUnavailable("Gitea POST /merge failed: 503 Service Unavailable")
        for _ in range(6):
            r.run_until_idle()
            clock.advance(61.0)  # each failed request may still be carried out for a while
        held = r.store.get_task(task.id)
        assert held.status == TaskStatus.ACTIVE, held.status_reason
        assert "forge is unavailable" in r.store.jobs(task.id)[-1].last_error
        # its cooldown is over: the next attempt that needs the forge probes it
        assert r.engine.breakers.state("forge")["circuit"] == "half_open"
        circuits = [n for _, n in r.notifier.news if n.kind == NewsKind.CIRCUIT]
        assert circuits and "503" in circuits[0].text

        r.forge.fail_merge = None  # it answers again
        clock.advance(120.0)  # the circuit's cooldown, doubled by its failed probe
        r.run_until_idle()
        assert r.store.get_task(task.id).waiting_for == "confirm-deploy"
        assert len(r.forge.merges) == 1
        assert r.engine.breakers.state("forge")["circuit"] == "closed"
    finally:
        r.close()


def test_a_forge_another_process_found_down_holds_back_this_ones_work_too() -> None:
    clock = SimClock()
    r = rig({"default": InstantAgent()}, clock=clock)
    try:
        r.store.open_circuit("forge", r.store.now() + 60, 60, "Gitea 503")
        r.store.open_circuit("retired", r.store.now() + 60, 60, "HTTP 529")  # in no settings
        task = r.intake.file("app", "Add a greeting")

        r.run_until_idle()

        assert r.store.get_task(task.id).status == TaskStatus.ACTIVE
        assert r.store.jobs(task.id)[-1].last_error == "the forge is unavailable: Gitea 503"
        assert r.engine.breakers.state("forge")["circuit"] == "open"
        assert "retired" not in r.engine.breakers.states()
    finally:
        r.close()


def test_a_merge_the_forge_could_not_settle_is_settled_by_a_sweep_once_it_answers() -> None:
    clock = SimClock()
    r = rig({"default": InstantAgent()}, store=memory_store(clock), clock=clock)
    try:
        first = r.intake.file("app", "First")
        r.run_until_idle()
        assert r.intake.decide(first.key, True, "ann")
        # the push fails, and so does asking whether it landed: the merge's outcome is unknown
        r.forge.fail_merge = ForgeError("push failed: connection reset")
        r.forge.fail_find = ForgeError("fetch failed: could not resolve host")
        r.run_until_idle()
        parked = r.store.get_task(first.id)
        assert parked.status == TaskStatus.NEEDS_OPERATOR
        [merge] = [e for e in r.store.effects(first.id) if e.kind == "merge"]
        assert merge.state in (EffectState.INITIATED, EffectState.UNKNOWN)

        r.forge.fail_merge = r.forge.fail_find = None  # the remote is back
        second = r.intake.file("app", "Second")
        r.run_until_idle()
        [merge] = [e for e in r.store.effects(first.id) if e.kind == "merge"]
        # a request its worker sent may still land: not settled before its time is up
        assert merge.state in (EffectState.INITIATED, EffectState.UNKNOWN)
        clock.advance(61.0)
        r.run_until_idle()  # its sweep asks the forge first: the slot is free again
        [merge] = [e for e in r.store.effects(first.id) if e.kind == "merge"]
        assert (merge.state, merge.result.get("settled_by")) == (EffectState.FAILED, "sweeper")
        assert r.intake.decide(second.key, True, "ann")
        r.run_until_idle()
        assert r.store.get_task(second.id).waiting_for == "confirm-deploy"
    finally:
        r.close()


def test_a_merge_whose_answer_was_lost_is_not_sent_again_until_it_can_no_longer_land() -> None:
    clock = SimClock()
    r = rig({"default": InstantAgent()}, store=memory_store(clock), clock=clock)
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        assert r.intake.decide(task.key, True, "ann")
        # the request times out: the forge may carry it out later
        r.forge.fail_merge = ForgeUnavailable("Gitea POST /merge timed out")
        r.run_until_idle()
        r.forge.fail_merge = None
        clock.advance(5.0)
        r.run_until_idle()
        assert r.forge.merges == []  # it answers again, but nothing is sent yet
        [merge] = [e for e in r.store.effects(task.id) if e.kind == "merge"]
        assert merge.state == EffectState.UNKNOWN
        # ... and the forge carries the request out, late
        head = r.forge.branch_head("app", task.branch)
        assert head is not None
        late = r.forge.land("app", r.forge.merge_candidate("app", task.branch, head, "late"))
        clock.advance(60.0)
        r.run_until_idle()
        [merge] = [e for e in r.store.effects(task.id) if e.kind == "merge"]
        assert (merge.state, merge.result["merge_sha"]) == (EffectState.SUCCEEDED, late)
        assert len(r.forge.merges) == 1
        assert r.store.get_task(task.id).waiting_for == "confirm-deploy"
    finally:
        r.close()
