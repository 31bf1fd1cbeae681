"""I1-I8 (DESIGN.md §4) over a rig: the checks of `orch.invariants`, as `orch chaos` runs them,
observing the rig's store through its port and the world beside it (`MemoryForge.merges`, the
`MemoryNotifier`, the deploys that ran, the agent processes).

Each `check_iN` raises `Violation` (an AssertionError naming the invariant and what broke it).
Reading the store's records, not asking the engine, keeps the checks independent of the code
they check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from orch import invariants
from orch.invariants import Observation
from orch.testing import Rig

from .harness import DeployLog, StartedAgent


class Violation(AssertionError):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant} violated: {detail}")
        self.invariant = invariant


def observe(
    rig: Rig, *, deploys: DeployLog | None = None, agents: Sequence[StartedAgent] = ()
) -> Observation:
    record = invariants.read(rig.store)
    landed: dict[str, set[str]] = {}
    for repo, _head, sha in rig.forge.merges:
        landed.setdefault(repo, set()).add(sha)
    world = invariants.World(
        limits={t.repo: rig.repos.limit(t.repo) for t in record.tasks},
        merged=Counter((repo, head) for repo, head, _sha in rig.forge.merges),
        landed={repo: frozenset(shas) for repo, shas in landed.items()},
        deploys=(
            Counter((deploys.repo, target, release) for target, release in deploys.entries())
            if deploys is not None
            else None
        ),
        sent=Counter(key for key, _text in rig.notifier.sent),
        agents=tuple(invariants.Agent(a.task_key, a.stage) for a in agents if a.alive),
    )
    return Observation(record, world)


def _raise(invariant: str, violations: Sequence[str]) -> None:
    if violations:
        raise Violation(invariant, "; ".join(violations[:5]))


def check_i1(o: Observation) -> None:
    _raise("I1", invariants.irreversible(o))


def check_i2(o: Observation) -> None:
    _raise("I2", invariants.stranded(o.record))


def check_i3(o: Observation, *, swept_at: float | None) -> None:
    """No job runs under a lease that had expired when the sweeper last ran (`swept_at`); no
    agent lives for a task no job is running."""
    _raise("I3", invariants.past_leases(o.record, swept_at) + invariants.agents(o))


def check_i4(o: Observation) -> None:
    _raise("I4", invariants.history(o.record))


def check_i5(o: Observation) -> None:
    _raise("I5", invariants.limits(o))


def check_i6(o: Observation, *, settled: bool) -> None:
    _raise("I6", invariants.stops(o, settled=settled))


def check_i7(o: Observation) -> None:
    _raise("I7", invariants.keys(o))


def check_i8(o: Observation) -> None:
    _raise("I8", invariants.converged(o, every_wait_answered=False, idle=True))


def check_all(o: Observation, *, swept_at: float | None, settled: bool = False) -> None:
    check_i1(o)
    check_i2(o)
    check_i3(o, swept_at=swept_at)
    check_i4(o)
    check_i5(o)
    check_i6(o, settled=settled)
    check_i7(o)
    if settled:
        check_i8(o)
