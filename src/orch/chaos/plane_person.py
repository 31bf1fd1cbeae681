"""The person of a chaos run in the Plane and Gitea world: they start work by moving a Plane work
item to the start state, and answer and STOP through Plane's states too, never through orch's
API, which they only read (as they would read orch's dashboard) to know what is asked of them.

Some of what they do is meant to trip orch up: an answer moved before its question is asked,
with its delivery held back until the question exists; an item STOPped just after it was started,
the two deliveries swapped; an item's old start sent again after its STOP. Every move is
recorded, with the moment in the store's clock, for the checks (orch.chaos.outside_checks)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from orch.chaos.deliveries import Conductor
from orch.chaos.person import Api
from orch.chaos.run import T_RECOVER_S
from orch.fakes.plane import PlaneFake

ANSWER_AGAIN_S = T_RECOVER_S  # a person answers or STOPs again when nothing came of it by then
EARLY_HOLD_S = 8.0  # the longest an early answer's delivery is held back
AFTER_EARLY_S = 1.5  # time given to a late early answer to be (wrongly) applied
# where a task is when an answer to each checkpoint comes before its question
EARLY_STAGES = {
    "approve-plan": ("analysis",),
    "confirm-deploy": ("development", "review", "testing", "deploy-staging"),
}
LIVE = ("active", "waiting", "needs_operator")
# the reorders a run makes sure of: a start and its STOP swapped; an answer delivered only
# once its question is asked; a start delivered again after the STOP
EPISODES = ("quick stop", "early", "stale start")


@dataclass(frozen=True)
class States:
    """The Plane state names the run's projects use."""

    start: str = "To Analyse"
    approve: str = "Approved"
    reject: str = "Rejected"
    confirm: str = "Confirm Deploy"
    stop: str = "STOP"
    review: str = "Needs Review"  # where orch puts a waiting item; a person moves away to it

    def answer(self, checkpoint: str) -> str:
        return self.confirm if checkpoint == "confirm-deploy" else self.approve


@dataclass(frozen=True)
class Item:
    key: str  # the task key orch gives it: the project identifier and the sequence number
    project: str
    ref: str  # the work item's id
    repo: str


@dataclass(frozen=True)
class Move:
    at: float  # in the store's clock
    key: str
    state: str
    why: str  # start, stop, quick stop, stop again, answer, answer again, early, away
    version: int = 0  # for an answer: the version of the task's wait it answers
    checkpoint: str = ""


@dataclass
class Plan:
    item: Item
    started: float  # monotonic
    stop_after: float | None = None
    quick_stop: bool = False
    early: str = ""  # the checkpoint answered before its question, if one is
    early_done: bool = False
    early_at: float = 0.0
    early_held: bool = False
    released_at: float = 0.0
    stopped_at: float | None = None
    stale: bool = False  # its old start is sent again after its STOP
    stale_at: float | None = None  # when
    answered: dict[int, float] = field(default_factory=dict)  # wait version -> when


@dataclass
class Tally:
    starts: int = 0
    answers: int = 0
    answers_again: int = 0
    early: int = 0
    early_held: int = 0
    stops: int = 0
    quick_stops: int = 0
    quick_stops_reversed: int = 0
    stops_again: int = 0
    stale_starts: int = 0
    starts_dropped: int = 0


class PlanePerson(threading.Thread):
    def __init__(
        self,
        api: Api,
        plane: PlaneFake,
        conductor: Conductor,
        rng: random.Random,
        *,
        states: States,
        stop_share: float,
        webhook_share: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(name="chaos-plane-person", daemon=True)
        self.api = api
        self.plane = plane
        self.conductor = conductor
        self.rng = rng
        self.states = states
        self.stop_share = stop_share
        self.share = webhook_share
        self.clock = clock
        self.plans: dict[str, Plan] = {}
        self.moves: list[Move] = []
        self.tally = Tally()
        self._lock = threading.Lock()
        self._halt = threading.Event()

    # -- what the filer asks -----------------------------------------------------------------

    def start_item(self, item: Item, rng: random.Random, episode: str = "") -> None:
        """Move a new item to the start state, as the run plans it (`rng`: the filer's).
        `episode` gives it one of EPISODES for sure; otherwise it may get one by chance."""
        plan = Plan(item, time.monotonic())
        roll = rng.random()
        if episode == "quick stop" or (not episode and roll < self.share / 4):
            plan.quick_stop = True
        elif episode == "stale start" or (not episode and roll < self.share / 4 + self.stop_share):
            plan.stop_after = rng.uniform(0.0, 20.0)
            plan.stale = episode == "stale start" or rng.random() < self.share
        if episode == "early" or (not plan.quick_stop and rng.random() < self.share):
            plan.early = rng.choice(tuple(EARLY_STAGES))
        with self._lock:
            self.plans[item.key] = plan
        self.tally.starts += 1
        if plan.quick_stop:
            self._quick_stop(plan)
            return
        if rng.random() < self.share / 3:
            self.conductor.drop_next()  # the reconciler must find the start by itself
            self.tally.starts_dropped += 1
        self._move(item, self.states.start, "start")

    def _quick_stop(self, plan: Plan) -> None:
        """Start and STOP at once, the STOP's delivery sent before the start's if no other
        episode holds deliveries back."""
        held = self.conductor.hold()
        try:
            self._move(plan.item, self.states.start, "start")
            time.sleep(0.05)
            self._move(plan.item, self.states.stop, "quick stop")
        finally:
            if held:
                self.conductor.release("reversed")
                self.tally.quick_stops_reversed += 1
        plan.stopped_at = time.monotonic()
        self.tally.quick_stops += 1

    # -- the person's rounds -----------------------------------------------------------------

    def halt(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)
        self._release_early_holds()

    def run(self) -> None:
        while not self._halt.wait(0.3):
            tasks = self.api.tasks()
            newest: dict[str, dict[str, Any]] = {}
            for task in tasks or []:
                if task["key"] not in newest or task["id"] > newest[task["key"]]["id"]:
                    newest[task["key"]] = task
            with self._lock:
                plans = list(self.plans.values())
            for plan in plans:
                if self._halt.is_set():
                    return
                self._consider(plan, newest.get(plan.item.key), tasks is not None)

    def _consider(self, plan: Plan, task: dict[str, Any] | None, seen: bool) -> None:
        now = time.monotonic()
        status = task["status"] if task is not None else ""
        if plan.early_held and (
            status == "waiting" or now - plan.early_at > EARLY_HOLD_S or plan.stopped_at
        ):
            self.conductor.release("sent", late=status == "waiting")
            plan.early_held, plan.released_at = False, now
        if plan.stale_at is not None and now >= plan.stale_at:
            plan.stale_at = None
            if self.conductor.replay_start(plan.item.ref, self.states.start):
                self.tally.stale_starts += 1
        if not seen:
            return  # serve is away: what the tasks are now is unknown
        if plan.stopped_at is not None:
            if status in LIVE and now - plan.stopped_at >= ANSWER_AGAIN_S:
                self._move(plan.item, self.states.stop, "stop again")
                plan.stopped_at = now
                self.tally.stops_again += 1
            return
        if plan.stop_after is not None and now >= plan.started + plan.stop_after:
            if status in ("done", "cancelled"):
                plan.stop_after = None  # it ended before its STOP was due
            else:
                self._press_stop(plan, now)
            return
        if task is None:
            return
        early = EARLY_STAGES.get(plan.early, ())
        if not plan.early_done and status == "active" and task["stage"] in early:
            self._answer_early(plan, now)
        if status == "waiting" and task.get("waiting_for"):
            self._answer(plan, task, now)

    def _press_stop(self, plan: Plan, now: float) -> None:
        self._move(plan.item, self.states.stop, "stop")
        plan.stopped_at = now
        self.tally.stops += 1
        if plan.stale:
            plan.stale_at = now + self.rng.uniform(0.5, 3.0)

    def _answer_early(self, plan: Plan, now: float) -> None:
        """Answer the checkpoint before it is asked; its delivery held back until it is, when
        no other episode holds deliveries."""
        held = self.conductor.hold()
        self._move(plan.item, self.states.answer(plan.early), "early", checkpoint=plan.early)
        plan.early_done, plan.early_at, plan.early_held = True, now, held
        self.tally.early += 1
        self.tally.early_held += held

    def _answer(self, plan: Plan, task: dict[str, Any], now: float) -> None:
        if plan.early_held or (plan.released_at and now - plan.released_at < AFTER_EARLY_S):
            return
        version, checkpoint = int(task["version"]), str(task["waiting_for"])
        last = plan.answered.get(version)
        if last is not None and now - last < ANSWER_AGAIN_S:
            return
        target = self.states.answer(checkpoint)
        item = plan.item
        if self.plane.state_of(item.project, item.ref) == target:
            self._move(item, self.states.review, "away")  # to move it to the answer again
        why = "answer" if last is None else "answer again"
        self._move(item, target, why, version=version, checkpoint=checkpoint)
        plan.answered[version] = now
        self.tally.answers += last is None
        self.tally.answers_again += last is not None

    def _move(
        self, item: Item, state: str, why: str, *, version: int = 0, checkpoint: str = ""
    ) -> None:
        with self._lock:
            self.moves.append(Move(self.clock(), item.key, state, why, version, checkpoint))
        via = "ui" if self.rng.random() < 0.5 else "api"
        self.plane.person_moves(item.project, item.ref, state, via=via)

    def _release_early_holds(self) -> None:
        with self._lock:
            plans = list(self.plans.values())
        for plan in plans:
            if plan.early_held:
                self.conductor.release("sent")
                plan.early_held = False

    def figures(self) -> dict[str, Any]:
        return {"person": asdict(self.tally)}

    def unstarted(self, with_task: set[str]) -> list[str]:
        """The items moved to the start state, never STOPped, that have no task yet."""
        with self._lock:
            plans = list(self.plans.values())
        return [p.item.key for p in plans if p.stopped_at is None and p.item.key not in with_task]

    def moves_of(self, key: str) -> list[Move]:
        with self._lock:
            return [m for m in self.moves if m.key == key]
