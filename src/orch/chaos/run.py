"""What a chaos run is given and what it gives back: its options, the bounds it holds orch to,
the faults it records, and its result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.chaos import checks
from orch.chaos.lab import WorkerTuning

T_RECOVER_S = 30.0  # RELIABILITY.md: a restart re-drives work within this bound
T_RECLAIM_S = 60.0  # F6: a paused worker's job is reclaimed within this bound
T_CANCEL_S = 60.0  # I6: a STOP is applied within this bound


@dataclass(frozen=True)
class ChaosOptions:
    directory: Path | None = None
    store_url: str | None = None
    tickets: int = 12
    repos: int = 2
    max_active: int = 2
    kills: int = 50
    seed: int | None = None
    lease_ttl_s: float = 4.0
    heartbeat_s: float = 1.0
    sweep_s: float = 1.0
    stop_share: float = 0.1
    pause_share: float = 0.1
    crashpoint_share: float = 0.6
    settle_s: float = 120.0
    crash_wait_s: float = 6.0  # how long an armed process may take to reach its crash point
    # "local": tickets filed through the API, plain git remotes. "plane-gitea": tickets are
    # work items of a fake Plane, the code lands through a fake Gitea (orch.chaos.outside)
    world: str = "local"
    fault_rate: float = 0.1  # plane-gitea: share of the fakes' requests answered with a fault
    webhook_share: float = 0.3  # plane-gitea: share of deliveries duplicated, of items reordered

    def tuning(self) -> WorkerTuning:
        return WorkerTuning(
            lease_ttl_s=self.lease_ttl_s,
            heartbeat_s=self.heartbeat_s,
            sweep_interval_s=self.sweep_s,
        )


@dataclass
class Kill:
    life: str
    at: float
    how: str  # "crashpoint" or "random"
    point: str = ""  # the crash point reached, or the one armed but not reached


@dataclass
class Pause:
    life: str
    at: float
    held: int  # jobs its process held when it was stopped


@dataclass
class ChaosResult:
    ok: bool
    reasons: list[str]
    figures: dict[str, Any]
    findings: list[checks.Finding]
    root: Path
    seed: int
    asked_kills: int

    # what the world outside orch went through (plane-gitea): faults, webhook deliveries
    outside: dict[str, Any] | None = None

    def summary_line(self) -> str:
        f = self.figures
        return f"duplicates={f['duplicates']} lost={f['lost']} zombies={f['zombies']}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reasons": self.reasons,
            "seed": self.seed,
            "dir": str(self.root),
            "figures": self.figures,
            "invariants": [f.as_dict() for f in self.findings],
            **({"outside": self.outside} if self.outside is not None else {}),
        }


Say = Callable[[str], None]
