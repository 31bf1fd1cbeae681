"""The checks of F11 and F12 after a chaos run in the Plane and Gitea world, beside I1-I10.

They read what the fakes hold (Gitea's pull requests and the merge calls it answered, Plane's
comments and every change it sent a delivery for), the person's recorded moves, and the store's
history, and each returns a `Finding`:

- F11 pulls: no pull request merged twice, one per task branch, one merge effect per landing.
- F12 starts: one task per start, one comment per key, no task relaunched after a cancel, and no
  start lost.
- F12 answers: every approval orch applied was given after its question was asked; every answer
  and STOP the person gave was recorded within T_RECOVER_S.
- fakes: every request orch made is one the provider's specification allows.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orch.chaos.checks import Finding, History
from orch.chaos.plane_person import Item, Move, States
from orch.chaos.run import T_RECOVER_S
from orch.domain.model import Task
from orch.domain.states import DECISIONS, EffectKind, EffectState, EventKind, TaskStatus

MERGE_CALL = re.compile(r"/repos/[^/]+/([^/]+)/pulls/(\d+)/merge$")
STOPS = ("stop", "quick stop", "stop again")


@dataclass(frozen=True)
class Overwrite:
    """orch moved an item out of a state a person had put it in to ask for something."""

    at: float  # in the store's clock
    key: str
    was: str
    now: str
    late: bool = False  # a write orch had given up on (a slow answer), done by Plane only now


@dataclass
class Evidence:
    history: History
    items: Mapping[str, Item]
    moves: Sequence[Move]
    states: States
    pulls: Mapping[str, list[dict[str, Any]]]  # repository -> Gitea's pull requests
    merge_calls: Sequence[tuple[str, int, int]]  # (repository, PR number, status answered)
    comments: Mapping[str, list[dict[str, Any]]]  # task key -> the item's comments
    overwrites: Sequence[Overwrite] = ()
    violations: Mapping[str, Sequence[str]] = field(default_factory=dict)  # fake -> its own

    def moves_of(self, key: str) -> list[Move]:
        return [m for m in self.moves if m.key == key]


def check_pulls(e: Evidence) -> Finding:
    f = Finding("F11 pulls", "no PR merged twice, one PR per branch, one merge recorded")
    prs = merged = merged_twice = opened_twice = 0
    for repo, pulls in sorted(e.pulls.items()):
        by_branch: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for pull in pulls:
            by_branch[str(pull["head"]["ref"])].append(pull)
        for branch, own in sorted(by_branch.items()):
            prs += len(own)
            done = [p for p in own if p["merged"]]
            merged += len(done)
            if len(done) > 1:
                merged_twice += 1
                numbers = ", ".join(f"#{p['number']}" for p in done)
                f.violations.append(f"{repo}: {branch} was merged by {len(done)} PRs ({numbers})")
            if len(own) > 1:
                opened_twice += 1
                shown = ", ".join(f"#{p['number']} {_pull_state(p)}" for p in own)
                f.violations.append(f"{repo}: {len(own)} pull requests for {branch}: {shown}")
    answered = Counter((repo, number) for repo, number, status in e.merge_calls if status == 200)
    for (repo, n), times in sorted(answered.items()):
        if times > 1:
            merged_twice += 1
            f.violations.append(f"{repo}: pull request #{n} answered a merge {times} times")
    recorded_twice = _merges_recorded_twice(e.history)
    f.violations += recorded_twice
    f.figures.update(
        pulls=prs,
        merged=merged,
        merged_twice=merged_twice,
        opened_twice=opened_twice,
        merges_recorded_twice=len(recorded_twice),
        merge_calls=len(e.merge_calls),
        merge_calls_refused_as_merged=sum(1 for *_, s in e.merge_calls if s == 405),
        merge_answers_lost=sum(1 for *_, s in e.merge_calls if s == 0),
    )
    return f


def _merges_recorded_twice(history: History) -> list[str]:
    """One landing, one merge effect: a task whose store records the same merge commit under
    two merge keys claims two merges, and told people twice."""
    keys: dict[tuple[int, str], list[str]] = defaultdict(list)
    for effect in history.effects:
        if effect.kind == EffectKind.MERGE and effect.state == EffectState.SUCCEEDED:
            keys[(effect.task_id, str(effect.result.get("merge_sha", "")))].append(effect.key)
    key_of = {t.id: t.key for t in history.tasks}
    return [
        f"{key_of.get(task_id, task_id)}: merge {sha[:12]} recorded {len(own)} times, under"
        f" {', '.join(own)}"
        for (task_id, sha), own in sorted(keys.items())
        if len(own) > 1
    ]


def _pull_state(pull: Mapping[str, Any]) -> str:
    state = "merged" if pull["merged"] else str(pull["state"])
    return f"{state} (opened {pull.get('created_at') or '?'})"


def check_starts(e: Evidence) -> Finding:
    f = Finding("F12 starts", "one task per start, one comment per key, no relaunch, none lost")
    tasks: dict[str, list[Task]] = defaultdict(list)
    for task in e.history.tasks:
        tasks[task.key].append(task)
    f.violations += [
        f"{key}: a task for no work item the person started" for key in tasks if key not in e.items
    ]
    twice = relaunched = lost = 0
    for key in sorted(e.items):
        moves = e.moves_of(key)
        starts = [m for m in moves if m.state == e.states.start]
        stopped = any(m.why in STOPS for m in moves)
        own = sorted(tasks.get(key, []), key=lambda t: t.id)
        if len(own) > len(starts):
            twice += 1
            shown = ", ".join(f"task {t.id} {t.status}" for t in own)
            f.violations.append(
                f"{key}: {len(own)} tasks ({shown}) for {len(starts)} move(s) to {e.states.start}"
            )
        for before, after in itertools.pairwise(own):
            if before.status == TaskStatus.CANCELLED:
                relaunched += 1
                f.violations.append(
                    f"{key}: task {after.id} started at {after.created_at:.3f}, after task"
                    f" {before.id} was cancelled, with no new move to {e.states.start}"
                )
        if starts and not own and not stopped:
            lost += 1
            f.violations.append(
                f"{key}: moved to {e.states.start} at {starts[0].at:.3f}, never STOPped, and no"
                " task was ever started for it"
            )
    repeated = 0
    for key, comments in sorted(e.comments.items()):
        ids = Counter(str(c.get("external_id")) for c in comments if c.get("external_id"))
        for ext, n in sorted(ids.items()):
            if n > 1:
                repeated += 1
                f.violations.append(f"{key}: comment {ext} posted {n} times")
    f.figures.update(
        items=len(e.items),
        tasks=len(e.history.tasks),
        started_twice=twice,
        relaunched=relaunched,
        lost_starts=lost,
        comments=sum(len(c) for c in e.comments.values()),
        comment_keys_twice=repeated,
    )
    return f


def check_answers(e: Evidence) -> Finding:
    f = Finding("F12 answers", "only answers given after their question apply; none is lost")
    applied = early_applied = unheard = late = 0
    for task in e.history.tasks:
        if task.key not in e.items:
            continue
        waits = {
            tr.version: tr.at
            for tr in e.history.transitions.get(task.id, [])
            if tr.to_status == TaskStatus.WAITING
        }
        for event in e.history.events_of(task.id):
            if event.kind not in DECISIONS:
                continue
            applied += 1
            problem = _answer_problem(e, task, event.key, event.created_at, event.actor, waits)
            if problem is None:
                continue
            early_applied += 1
            f.violations.append(problem)
    for move in e.moves:
        live = _task_for(e, move)
        if live is None:
            continue
        found = _unheard(e, move, live)
        if found is None:
            continue
        problem, undone = found
        if undone and all(o.late for o in undone):
            # only writes Plane did after orch had timed out on them undid the move: a tracker
            # without conditional writes allows that, and no client can stop it
            late += 1
            f.figures.setdefault("lost_to_late_writes", []).append(problem)
            continue
        unheard += 1
        f.violations.append(problem)
    f.figures.update(
        decisions_applied=applied,
        answered_before_asked_applied=early_applied,
        not_heard=unheard,
        not_heard_late_writes=late,
        overwritten_by_orch=len(e.overwrites),
        overwritten_by_late_writes=sum(1 for o in e.overwrites if o.late),
    )
    return f


def _answer_problem(
    e: Evidence,
    task: Task,
    event_key: str,
    at: float,
    actor: str,
    waits: Mapping[int, float],
) -> str | None:
    """Why an answer orch recorded was not the person's answer to that question, if it was
    not: the question was never asked, or the only move that could have given it came before
    the question."""
    version = _version(event_key)
    asked = waits.get(version) if version is not None else None
    if asked is None:
        return f"{task.key}: {event_key} recorded by {actor}, for a version it never waited at"
    answers = (e.states.approve, e.states.confirm, e.states.reject)
    given = [m for m in e.moves_of(task.key) if m.state in answers and asked <= m.at <= at]
    if given:
        return None
    before = [m for m in e.moves_of(task.key) if m.state in answers and m.at < asked]
    if not before:
        return f"{task.key}: {event_key} recorded by {actor} with no move of the person's for it"
    early = before[-1]
    return (
        f"{task.key}: the answer to its v{version} wait ({event_key}, by {actor}) was recorded"
        f" at {at:.3f}; the wait began at {asked:.3f}, and the person's only answer was their"
        f" move to {early.state} at {early.at:.3f} ({early.why}), {asked - early.at:.1f}s"
        " before the question was asked"
    )


def _version(event_key: str) -> int | None:
    found = re.match(r"^\d+:v(\d+):", event_key)
    return int(found.group(1)) if found else None


def _task_for(e: Evidence, move: Move) -> Task | None:
    """The task a move speaks to: the one of its item live when it was made (started by then,
    not yet terminal); for a STOP, also one orch started after it (from a read of the item made
    before it), which the STOP must then end."""
    for task in sorted((t for t in e.history.tasks if t.key == move.key), key=lambda t: t.id):
        trs = e.history.transitions.get(task.id, [])
        if not trs:
            continue
        if trs[0].at > move.at:
            return task if move.why in STOPS else None
        ended = [tr.at for tr in trs if tr.to_status in (TaskStatus.DONE, TaskStatus.CANCELLED)]
        if not ended or ended[0] > move.at:
            return task
    return None


def _started(history: History, task: Task) -> float:
    trs = history.transitions.get(task.id, [])
    return trs[0].at if trs else task.created_at


def _unheard(e: Evidence, move: Move, task: Task) -> tuple[str, list[Overwrite]] | None:
    """A STOP, or an answer to a wait, that orch did not record within T_RECOVER_S (of the
    move, or of the start of a task it started after a STOP): what went wrong, and orch's
    writes that undid the move."""
    deadline = max(move.at, _started(e.history, task)) + T_RECOVER_S
    if move.why in STOPS:
        stops = e.history.events_of(task.id, EventKind.STOP)
        if any(s.created_at <= deadline for s in stops):
            return None
        if task.status == TaskStatus.DONE and _done_first(e.history, task, move.at):
            return None
        what = "STOP"
    elif move.why in ("answer", "answer again"):
        prefix = f"{task.id}:v{move.version}:"
        answered = [
            ev
            for ev in e.history.events_of(task.id)
            if ev.kind in DECISIONS and ev.key.startswith(prefix)
        ]
        if any(ev.created_at <= deadline for ev in answered):
            return None
        if any(s.created_at <= deadline for s in e.history.events_of(task.id, EventKind.STOP)):
            return None  # it was being stopped
        what = f"answer to {move.checkpoint} (v{move.version})"
    else:
        return None
    later = [o for o in e.overwrites if o.key == move.key and move.at <= o.at <= deadline]
    after = _started(e.history, task) > move.at
    started = f"; orch started task {task.id} {_started(e.history, task) - move.at:.2f}s after it"
    why = "; ".join(
        f"orch moved it from {o.was} to {o.now} at {o.at:.3f}"
        + (" (a write Plane did after orch had timed out on it)" if o.late else "")
        for o in later
    )
    problem = (
        f"{move.key}: the person's {what}, a move to {move.state} at {move.at:.3f}, was not"
        f" recorded within {T_RECOVER_S:g}s (the task ended {task.status} at {task.stage})"
        + (started if after else "")
        + (f"; {why}" if why else "")
    )
    return problem, later


def _done_first(history: History, task: Task, at: float) -> bool:
    """Whether the task was past its last question when the STOP came: it may finish first."""
    return any(
        ev.kind == EventKind.APPROVE
        and ev.payload.get("checkpoint") == "confirm-deploy"
        and ev.created_at <= at
        for ev in history.events_of(task.id)
    )


def check_fakes(violations: Mapping[str, Sequence[str]]) -> Finding:
    f = Finding("fakes", "every request orch made is one the provider's API allows")
    for fake, found in sorted(violations.items()):
        f.violations += [f"{fake}: {v}" for v in found]
    f.figures["violations"] = len(f.violations)
    return f


def stamp(raw: str) -> float | None:
    """A Plane timestamp as seconds since the epoch."""
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
