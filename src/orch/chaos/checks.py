"""The invariants I1-I10 (DESIGN.md §4), checked after a chaos run.

Each check reads what the run left behind: the store's history (tasks, transitions, jobs, runs,
effects, events), the forge's log (the bare remotes' default branches and the deploy logs) and the
process table. Each returns a `Finding`: the violations it saw, in words a person can follow up,
and the figures it measured. A check never trusts the store alone where the world can be asked:
a merge is counted on the remote, a deploy in the deploy log.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch import invariants
from orch.adapters.proctable import LinuxProcessTable, Orphan, parse_incarnation
from orch.domain.states import (
    EffectKind,
    EffectState,
    EventKind,
    TaskStatus,
)

SETTLED = frozenset({TaskStatus.DONE, TaskStatus.CANCELLED, TaskStatus.NEEDS_OPERATOR})


@dataclass
class Finding:
    """One invariant's outcome."""

    name: str  # "I1"
    title: str
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "ok": self.ok,
            "violations": self.violations,
            "figures": self.figures,
        }


# -- what the run left behind --------------------------------------------------------------------


# what the run left behind in the store, read through its port (orch.invariants)
History = invariants.Record
load_history = invariants.read


@dataclass(frozen=True)
class Remote:
    """A repository's bare remote: where merges land, the authoritative log for I1."""

    repo: str
    path: Path
    default_branch: str
    initial_sha: str  # the default branch's first commit: it must stay an ancestor forever


def git(path: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=path, capture_output=True, text=True, check=False, timeout=60
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {path} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def merged_heads(remote: Remote) -> Counter[str]:
    """How many merge commits on the default branch brought in each head (second parent)."""
    out = git(remote.path, "rev-list", "--merges", "--parents", remote.default_branch)
    heads: Counter[str] = Counter()
    for line in out.splitlines():
        _, _, *merged = line.split()
        heads.update(merged)
    return heads


def read_deploy_log(path: Path) -> Counter[tuple[str, str]]:
    """(target, release) -> how many times the deploy command ran it to the end."""
    counts: Counter[tuple[str, str]] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            counts[(parts[1], parts[2])] += 1
    return counts


# -- I1: at most one merge per head and one deploy per release, ever -----------------------------


def world(remotes: Sequence[Remote], deploy_logs: Mapping[str, Path]) -> invariants.World:
    """What the remotes and the deploy logs show: the evidence I1 trusts over the store."""
    merged: Counter[tuple[str, str]] = Counter()
    landed, rewritten = {}, []
    for remote in remotes:
        for head, n in merged_heads(remote).items():
            merged[(remote.repo, head)] += n
        on_branch = frozenset(git(remote.path, "rev-list", remote.default_branch).split())
        landed[remote.repo] = on_branch
        if remote.initial_sha not in on_branch:
            rewritten.append(remote.repo)
    deploys: Counter[tuple[str, str, str]] = Counter()
    for repo, path in deploy_logs.items():
        for (target, release), n in read_deploy_log(path).items():
            deploys[(repo, target, release)] += n
    return invariants.World(
        limits={}, merged=merged, landed=landed, rewritten=tuple(rewritten), deploys=deploys
    )


def check_irreversible(
    remotes: Sequence[Remote], deploy_logs: Mapping[str, Path], history: History
) -> Finding:
    """Counted in the world (the remote, the deploy log), then matched against the effects the
    store says SUCCEEDED (orch.invariants.irreversible)."""
    f = Finding("I1", "one merge per head, one deploy per release")
    seen = world(remotes, deploy_logs)
    f.violations.extend(invariants.irreversible(invariants.Observation(history, seen)))
    deploys = seen.deploys or Counter()
    dup_merges = sum(n - 1 for n in seen.merged.values())
    dup_deploys = sum(n - 1 for n in deploys.values())
    f.figures.update(
        merges=sum(seen.merged.values()),
        deploys=sum(deploys.values()),
        duplicate_merges=dup_merges,
        duplicate_deploys=dup_deploys,
        duplicates=dup_merges + dup_deploys,
    )
    return f


# -- I9: what lands is what was tested -----------------------------------------------------------


def check_landed(remotes: Sequence[Remote], history: History) -> Finding:
    """Every merge on a default branch is a commit whose own tree passed the merge-candidate
    test: the tested candidate is what was pushed, not a branch that passed alone."""
    f = Finding("I9", "every merge that landed is a tree that passed its tests")
    tested = {g.head_sha for g in history.gates if g.gate == "merge-candidate" and g.passed}
    landed = 0
    for remote in remotes:
        out = git(remote.path, "rev-list", "--merges", "--first-parent", remote.default_branch)
        for sha in out.split():
            landed += 1
            if sha not in tested:
                f.violations.append(
                    f"{remote.repo}: {sha[:12]} is on {remote.default_branch} without a passing"
                    " merge-candidate test of that commit"
                )
    f.figures.update(landed=landed, tested=len(tested))
    return f


# -- I10: deploys move forward -------------------------------------------------------------------


def check_forward(
    remotes: Sequence[Remote], deploy_logs: Mapping[str, Path], history: History
) -> Finding:
    """Each target's releases, in the order the deploy log has them, each descend from the one
    before, but for a rollback orch recorded."""
    f = Finding("I10", "a target only moves forward, or back by a recorded rollback")
    path_of = {r.repo: r.path for r in remotes}
    rollbacks = {
        (e.kind.split(":", 1)[1], str(e.result.get("rolled_back", "")), e.precondition)
        for e in history.effects
        if EffectKind.ROLLBACK.of(e.kind) and e.state == EffectState.SUCCEEDED
    }
    moves = 0
    for repo, log in sorted(deploy_logs.items()):
        if repo not in path_of or not log.exists():
            continue
        last: dict[str, str] = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            target, release = parts[1], parts[2]
            before = last.get(target)
            last[target] = release
            if before is None or before == release:
                continue
            moves += 1
            forward = (
                subprocess.run(
                    ["git", "merge-base", "--is-ancestor", before, release],
                    cwd=path_of[repo],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )
            if not forward and (target, before, release) not in rollbacks:
                f.violations.append(
                    f"{repo}: {target} went from {before[:12]} to {release[:12]}, not a"
                    " descendant, with no rollback recorded"
                )
    f.figures.update(moves=moves, rollbacks=len(rollbacks))
    return f


# -- I2 and I8: no lost task; every task converged ----------------------------------------------


def check_lost(history: History) -> Finding:
    """After the settle every task must be terminal or parked (needs_operator): the people of a
    chaos run answer every wait, and the run gave each task time to converge."""
    f = Finding("I2/I8", "every task ends terminal or parked")
    f.violations.extend(
        invariants.converged(
            invariants.Observation(history, invariants.World(limits={})),
            every_wait_answered=True,
            idle=False,
        )
    )
    parked = Counter(
        _reason_kind(t.status_reason)
        for t in history.tasks
        if t.status == TaskStatus.NEEDS_OPERATOR
    )
    f.figures.update(
        tasks=len(history.tasks),
        by_status=dict(Counter(t.status.value for t in history.tasks)),
        lost=len(f.violations),
        parked_reasons=dict(parked),
    )
    return f


def _reason_kind(reason: str) -> str:
    """A parked task's reason without its task-specific details, to group them."""
    text = re.sub(r"[0-9a-f]{12,40}", "<sha>", reason)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:80]


# -- I3: no zombie -------------------------------------------------------------------------------


def check_leases(history: History, grace_s: float) -> Finding:
    """No job still `running` past its lease plus one sweep (`grace_s`)."""
    f = Finding("I3 leases", "no job running past its lease")
    f.violations.extend(invariants.past_leases(history, history.now - grace_s))
    return f


@dataclass(frozen=True)
class ProcessIdentity:
    """An orch process as the process table names it: pid plus start time, never a pid alone."""

    pid: int
    start: str


def find_zombies(
    table: LinuxProcessTable, dead: Iterable[ProcessIdentity], host: str | None = None
) -> list[Orphan]:
    """Live processes whose ORCH_INCARNATION names one of the `dead` orch processes.

    An incarnation is `host:pid:start:uuid`; matching on (host, pid, start) finds the children of
    a process even when it died before it could say its full incarnation."""
    wanted = {(p.pid, p.start) for p in dead}
    out = []
    for child in table.children_of(None):
        parsed = parse_incarnation(child.incarnation)
        if parsed is None:
            continue
        child_host, pid, start = parsed
        if (host is None or child_host == host) and (pid, start) in wanted:
            out.append(child)
    return out


def check_zombies(zombies: Sequence[Orphan], during_run: Sequence[str] = ()) -> Finding:
    f = Finding("I3 zombies", "no child outlives its orch process")
    for z in zombies:
        f.violations.append(f"pid {z.pid} still alive, started by dead incarnation {z.incarnation}")
    f.violations.extend(during_run)
    f.figures["zombies"] = len(f.violations)
    return f


# -- I4: history is gap-free and every transition is an edge of the pipeline ---------------------


def check_history(history: History) -> Finding:
    f = Finding("I4", "history gap-free, every step an edge")
    f.violations.extend(invariants.history(history))
    f.figures["transitions"] = sum(len(trs) for trs in history.transitions.values())
    return f


# -- I5: per-repository limits hold at every instant --------------------------------------------


def check_repo_limits(
    history: History,
    limits: Mapping[str, int],
    open_run_ends: Mapping[int, float],
) -> Finding:
    """orch.invariants.limits: from the runs' intervals, at no instant more agent runs in flight
    per repository than its `max_active`, and never two runs of one task at once; and the slots
    as the store holds them at the end. `open_run_ends` gives the end the harness observed for
    some runs with no recorded end (the last moment their agent was seen alive)."""
    f = Finding("I5", "repository limits hold at every instant")
    o = invariants.Observation(history, invariants.World(limits=limits, run_ends=open_run_ends))
    f.violations.extend(invariants.limits(o))
    peaks = invariants.run_peaks(history, open_run_ends)
    f.figures.update(
        peak={repo: peak for repo, (peak, _at) in peaks.in_flight.items()},
        runs=len(history.runs),
        runs_without_end_skipped=peaks.skipped,
    )
    return f


# -- I6: after STOP the task is cancelled, and nothing of it runs again -------------------------


def check_stops(history: History, bound_s: float) -> Finding:
    """orch.invariants.stops, once settled: every task whose STOP was recorded ends cancelled
    within `bound_s`, or finished first, or is parked because the STOP waits on an effect whose
    outcome is unknown; no run starts after its task was cancelled."""
    f = Finding("I6", "a STOP ends the task cancelled")
    o = invariants.Observation(history, invariants.World(limits={}))
    f.violations.extend(invariants.stops(o, settled=True, bound_s=bound_s))
    outcome: Counter[str] = Counter()
    longest = 0.0
    stopped = 0
    for task in history.tasks:
        asked = history.events_of(task.id, EventKind.STOP)
        if not asked:
            continue
        stopped += 1
        cancelled_at = invariants.cancelled(history.transitions.get(task.id, []))
        if task.status == TaskStatus.CANCELLED and cancelled_at is not None:
            outcome["cancelled"] += 1
            longest = max(longest, cancelled_at - asked[0].created_at)
        elif task.status == TaskStatus.DONE:
            outcome["done first"] += 1
        elif task.status == TaskStatus.NEEDS_OPERATOR:
            outcome["parked"] += 1
        else:
            outcome["not applied"] += 1
    f.figures.update(stopped=stopped, outcomes=dict(outcome), longest_cancel_s=round(longest, 2))
    return f


# -- I7: every idempotency key succeeds at most once -------------------------------------------

NOTIFY_LINE = re.compile(r"\bnotify (\S+?): ")


def notifications(lines_by_process: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Notification key -> the processes (in order) whose log notifier sent it."""
    sent: dict[str, list[str]] = defaultdict(list)
    for process, lines in lines_by_process.items():
        for line in lines:
            m = NOTIFY_LINE.search(line)
            if m:
                sent[m.group(1)].append(process)
    return sent


def check_keys(history: History, sent: Mapping[str, Sequence[str]]) -> Finding:
    """orch.invariants.keys over the log notifier's lines. A log cannot be asked whether a line
    was written, so a sender killed (or paused and fenced) between notifying and recording
    SUCCEEDED makes the next attempt notify again: that is the at-least-once delivery such a
    notifier allows, counted as a figure, not failed."""
    f = Finding("I7", "every key succeeds at most once")
    seen = invariants.World(
        limits={},
        sent=Counter({key: len(senders) for key, senders in sent.items()}),
        notifies_at_least_once=True,
    )
    f.violations.extend(invariants.keys(invariants.Observation(history, seen)))
    keys = Counter(e.key for e in history.effects)
    f.figures.update(
        duplicate_keys=sum(n - 1 for n in keys.values()),
        effects=len(history.effects),
        succeeded=sum(1 for e in history.effects if e.state == EffectState.SUCCEEDED),
        notifications=sum(len(s) for s in sent.values()),
        notifications_repeated=sum(len(s) - 1 for s in sent.values() if len(s) > 1),
    )
    return f
