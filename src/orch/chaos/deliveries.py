"""What a chaos run does to Plane's webhook deliveries: some are sent five times over (the
same delivery id, and now and then a new one, as a retry of Plane's would), some are held back and
released in reverse order, some are dropped, and at the end every one is sent again, much later.
It counts each, so the report can say what orch was put through."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from orch.fakes.plane import Delivery, PlaneFake

DUPLICATES = 4  # sent again this many times: five deliveries in all
REPLAYS = 1000  # the most deliveries replayed at the end of a run


class ChaosPlane(PlaneFake):
    """The fake Plane, able to say how many deliveries it holds back."""

    def held(self) -> int:
        with self._sending:
            return len(self._held or [])

    def state_names_by_id(self) -> dict[str, str]:
        """Every project's states: id -> name."""
        with self._data:
            return {s["id"]: s["name"] for p in self._projects.values() for s in p.states}


def _digest(delivery: Delivery) -> str:
    # one body per change Plane made (its item snapshot and activity), so a body seen before
    # is a copy, whatever its delivery id
    return hashlib.sha256(delivery.body).hexdigest()


@dataclass
class Counts:
    originals: int = 0  # deliveries of changes, as Plane first sent them
    duplicates: int = 0  # sent again with the same delivery id
    renamed: int = 0  # sent again with a new delivery id
    reversed: int = 0  # held back, then released in reverse order
    late: int = 0  # an answer held back until its question was asked
    reorder_episodes: int = 0
    dropped: int = 0  # never sent
    stale_starts: int = 0  # an item's start sent again after it was STOPped
    replayed: int = 0  # sent again at the end, with the same id
    replayed_renamed: int = 0  # sent again at the end, with a new id
    not_received: int = 0  # sent while orch's serve was down or paused past Plane's timeout
    answered: Counter[int] = field(default_factory=Counter)  # HTTP status -> deliveries


class Conductor(threading.Thread):
    """Watches the deliveries Plane sends and duplicates a share of them; holds and releases
    them for the person's reorder episodes (one at a time); replays them at the end."""

    def __init__(self, plane: ChaosPlane, rng: random.Random, share: float) -> None:
        super().__init__(name="chaos-webhooks", daemon=True)
        self.plane = plane
        self.rng = rng
        self.share = share
        self.counts = Counts()
        self.active = False  # duplicates are made while the faults last
        self._seen: set[str] = set()
        self._originals: list[int] = []  # indexes into plane.deliveries
        self._scanned = 0
        self._episode = threading.Lock()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def halt(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self.scan()

    def scan(self) -> None:
        """Note the deliveries sent since the last scan; duplicate a share of the originals."""
        with self._lock:
            sent = list(self.plane.deliveries[self._scanned :])
            first = self._scanned
            self._scanned += len(sent)
            fresh = []
            for i, d in enumerate(sent, start=first):
                digest = _digest(d)
                if digest not in self._seen:
                    self._seen.add(digest)
                    self._originals.append(i)
                    self.counts.originals += 1
                    fresh.append(i)
        for i in fresh:
            if self.active and self.rng.random() < self.share:
                self._duplicate(i)

    def _duplicate(self, index: int) -> None:
        for _ in range(DUPLICATES):
            self.plane.redeliver(index)
        self.counts.duplicates += DUPLICATES
        if self.rng.random() < 0.5:
            self.plane.redeliver(index, new_id=True)
            self.counts.renamed += 1

    def drop_next(self) -> None:
        """The next change's delivery is never sent."""
        self.plane.drop_webhooks(1)

    # -- reorder episodes -----------------------------------------------------------------

    def hold(self) -> bool:
        """Hold new deliveries back, if no other episode does; False if one does."""
        if not self._episode.acquire(blocking=False):
            return False
        self.plane.hold_webhooks()
        return True

    def release(self, order: Literal["sent", "reversed"], *, late: bool = False) -> int:
        """Release what an episode held, in `order`; how many deliveries that was. `late`:
        they are released after what they answer was asked."""
        held = self.plane.held()
        self.plane.release_webhooks(order)
        if held > 1 and order == "reversed":
            self.counts.reversed += held
        if late:
            self.counts.late += held
        self.counts.reorder_episodes += 1
        self._episode.release()
        return held

    def holding(self) -> bool:
        return self._episode.locked()

    # -- stale deliveries -----------------------------------------------------------------

    def replay_start(self, item_id: str, start_state: str) -> bool:
        """Send again, as a new delivery and as the same one, the change that moved the item
        to `start_state`: a stale start arriving after a STOP."""
        index = self._find(item_id, start_state)
        if index is None:
            return False
        self.plane.redeliver(index)
        self.plane.redeliver(index, new_id=True)
        self.counts.stale_starts += 1
        return True

    def _find(self, item_id: str, state_name: str) -> int | None:
        with self._lock:
            originals = list(self._originals)
        for i in originals:
            payload = _payload(self.plane.deliveries[i])
            data = payload.get("data") or {}
            activity = payload.get("activity") or {}
            state = data.get("state") if isinstance(data, dict) else None
            if (
                isinstance(data, dict)
                and data.get("id") == item_id
                and activity.get("field") in ("state", "state_id")
                and isinstance(state, dict)
                and state.get("name") == state_name
            ):
                return i
        return None

    def replay_all(
        self, renamed_share: float = 1.0, same_share: float = 0.5, most: int = REPLAYS
    ) -> None:
        """Much later: original deliveries (`most` of them, picked at random, in the order
        they were first sent) sent again as new ones (a share), and as the same ones (another
        share)."""
        self.scan()
        with self._lock:
            originals = list(self._originals)
        if len(originals) > most:
            originals = sorted(self.rng.sample(originals, most))
        for i in originals:
            if self.rng.random() < renamed_share:
                self.plane.redeliver(i, new_id=True)
                self.counts.replayed_renamed += 1
            if self.rng.random() < same_share:
                self.plane.redeliver(i)
                self.counts.replayed += 1

    def tally(self) -> Counts:
        """The counts, with what Plane answered and dropped up to now."""
        self.scan()
        self.counts.dropped = len(self.plane.dropped)
        self.counts.answered = Counter(d.status for d in self.plane.deliveries)
        self.counts.not_received = sum(
            n for status, n in self.counts.answered.items() if not 200 <= status < 300
        )
        return self.counts


def _payload(delivery: Delivery) -> dict[str, Any]:
    try:
        value = json.loads(delivery.body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
