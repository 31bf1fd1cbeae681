"""Named crash points: `ORCH_CRASHPOINT=name[:nth]` makes the process SIGKILL itself the nth time
(default the first) it passes the point called `name`.

They sit at every step of a transition where a crash could leave something half done, so a chaos
harness can kill orch exactly there and check that nothing is lost and nothing happens twice.
Tests in one process arm them with an action of their own (raise, to abandon a job mid-step)
instead of a kill. Unarmed, a point costs one attribute read.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orch.domain.errors import ConfigError

POINTS: tuple[str, ...] = (
    "claim.committed",  # a job's lease was committed; nothing of the job has run
    "slot.acquired",  # inside the claim's transaction, after a task took a repository slot
    "effect.initiated",  # an effect's intent row is committed; the act has not started
    "forge.request.sent",  # the forge has done what was asked; its answer is not back yet
    "forge.response.received",  # the answer is back; the effect is not yet marked done
    "effect.succeeded",  # the effect is recorded as done; the stage has not moved
    "stage.cas",  # inside the stage write's transaction, after the compare-and-set
    "next_job.enqueued",  # the stage write and its next job are committed
    "slot.released",  # a task that stopped being active gave its slot back (committed)
    "cancel.flag",  # a STOP's event and cancel flag are committed
    "agent.sigterm",  # an agent's process group was sent SIGTERM
    "worktree.removed",  # a task's worktree was removed
    "inbox.event",  # an event (approve, reject, retry, stop) reached a task's inbox
)

ENV = "ORCH_CRASHPOINT"


@dataclass
class _Trigger:
    name: str
    nth: int
    action: Callable[[str], None]
    seen: int = 0
    fired: bool = False


_armed: _Trigger | None = None
_lock = threading.Lock()


def parse(spec: str) -> tuple[str, int]:
    """`name` or `name:nth`, with a known name and nth >= 1."""
    name, _, nth = spec.strip().partition(":")
    if name not in POINTS:
        raise ConfigError(f"{ENV}: unknown crash point {name!r} (known: {', '.join(POINTS)})")
    try:
        count = int(nth) if nth else 1
    except ValueError:
        raise ConfigError(f"{ENV}: {spec!r}: the count after ':' must be a number") from None
    if count < 1:
        raise ConfigError(f"{ENV}: {spec!r}: the count must be 1 or more")
    return name, count


def _sigkill(name: str) -> None:
    sys.stderr.write(f"orch: crash point {name} reached: SIGKILL pid {os.getpid()}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(spec: str, action: Callable[[str], None] | None = None) -> None:
    """Arm one point. Without `action` the process kills itself there."""
    global _armed
    name, nth = parse(spec)
    with _lock:
        _armed = _Trigger(name, nth, action or _sigkill)


def arm_from_env(environ: Mapping[str, str]) -> str | None:
    spec = environ.get(ENV, "").strip()
    if spec:
        arm(spec)
        return spec
    return None


def disarm() -> None:
    global _armed
    with _lock:
        _armed = None


def fired() -> bool:
    """Whether the armed point was reached (for tests that walk every occurrence)."""
    trigger = _armed
    return trigger is not None and trigger.fired


def hit(name: str) -> None:
    trigger = _armed
    if trigger is None or trigger.name != name:
        return
    with _lock:
        if trigger.fired:
            return
        trigger.seen += 1
        if trigger.seen != trigger.nth:
            return
        trigger.fired = True
    trigger.action(name)
