"""The invariants I1-I10 (DESIGN.md §4), checked after a chaos run.

Each check reads what the run left behind: the store's history (tasks, transitions, jobs, runs,
effects, events), the forge's log (the bare remotes' default branches and the deploy logs) and the
process table. Each returns a `Finding`: the violations it saw, in words a person can follow up,
and the figures it measured. A check never trusts the store alone where the world can be asked:
a merge is counted on the remote, a deploy in the deploy log.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch import invariants
from orch.adapters.proctable import LinuxProcessTable, Orphan, parse_incarnation
from orch.domain.model import Effect, Job, Task, Transition
from orch.domain.states import (
    DECISIONS,
    EffectKind,
    EffectState,
    EventKind,
    JobState,
    Stage,
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


def check_irreversible(
    remotes: Sequence[Remote], deploy_logs: Mapping[str, Path], history: History
) -> Finding:
    """Counted in the world (the remote, the deploy log), then matched against the effects the
    store says SUCCEEDED: a recorded merge or deploy that the world does not show is a lie."""
    f = Finding("I1", "one merge per head, one deploy per release")
    repo_of = {t.id: t.repo for t in history.tasks}
    succeeded = [e for e in history.effects if e.state == EffectState.SUCCEEDED]
    merges = dup_merges = deploys = dup_deploys = 0
    for remote in remotes:
        heads = merged_heads(remote)
        merges += sum(heads.values())
        dup_merges += sum(n - 1 for n in heads.values())
        mine = [
            e
            for e in succeeded
            if e.kind == EffectKind.MERGE and repo_of.get(e.task_id) == remote.repo
        ]
        f.violations.extend(_merge_violations(remote, heads, mine))
    for repo, path in sorted(deploy_logs.items()):
        counts = read_deploy_log(path)
        deploys += sum(counts.values())
        dup_deploys += sum(n - 1 for n in counts.values())
        mine = [
            e for e in succeeded if EffectKind.DEPLOY.of(e.kind) and repo_of.get(e.task_id) == repo
        ]
        f.violations.extend(_deploy_violations(repo, counts, mine))
    f.figures.update(
        merges=merges,
        deploys=deploys,
        duplicate_merges=dup_merges,
        duplicate_deploys=dup_deploys,
        duplicates=dup_merges + dup_deploys,
    )
    return f


def _merge_violations(
    remote: Remote, heads: Counter[str], succeeded: Sequence[Effect]
) -> list[str]:
    out = [
        f"{remote.repo}: head {head[:12]} merged {n} times"
        for head, n in sorted(heads.items())
        if n > 1
    ]
    on_branch = set(git(remote.path, "rev-list", remote.default_branch).split())
    if remote.initial_sha not in on_branch:
        out.append(f"{remote.repo}: {remote.default_branch} was rewritten")
    for effect in succeeded:
        sha = str(effect.result.get("merge_sha", ""))
        if sha not in on_branch:
            out.append(f"{effect.key}: SUCCEEDED, but {sha[:12] or 'no commit'} is not merged")
    return out


def _deploy_violations(
    repo: str, counts: Counter[tuple[str, str]], succeeded: Sequence[Effect]
) -> list[str]:
    out = [
        f"{repo}: release {release[:12]} deployed to {target} {n} times"
        for (target, release), n in sorted(counts.items())
        if n > 1
    ]
    for effect in succeeded:
        target = effect.kind.split(":", 1)[1]
        if not counts[(target, effect.precondition)]:
            out.append(f"{effect.key}: SUCCEEDED, but the deploy log has no such line")
    return out


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
    """After the settle every task must be terminal or parked (needs_operator). Anything else is
    lost: the run gave it time to converge and it did not."""
    f = Finding("I2/I8", "every task ends terminal or parked")
    live_jobs: dict[tuple[int, int], list[Job]] = defaultdict(list)
    for job in history.jobs:
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            live_jobs[(job.task_id, job.version)].append(job)
    by_status: Counter[str] = Counter()
    for task in history.tasks:
        by_status[task.status.value] += 1
        if task.status in SETTLED:
            continue
        f.violations.append(f"{task.key} at {task.stage}: {_why_lost(task, history, live_jobs)}")
    parked = Counter(
        _reason_kind(t.status_reason)
        for t in history.tasks
        if t.status == TaskStatus.NEEDS_OPERATOR
    )
    f.figures.update(
        tasks=len(history.tasks),
        by_status=dict(by_status),
        lost=len(f.violations),
        parked_reasons=dict(parked),
    )
    return f


def _why_lost(task: Task, history: History, live_jobs: Mapping[tuple[int, int], list[Job]]) -> str:
    jobs = live_jobs.get((task.id, task.version), [])
    if task.status == TaskStatus.ACTIVE and not jobs:
        return "active with no runnable job (stranded)"
    if task.status != TaskStatus.WAITING:
        return f"{task.status} with job(s) {', '.join(j.state.value for j in jobs)}"
    # a decision for this very wait that was read, yet the task never moved: it was consumed
    # and its stage write never happened
    consumed = [
        e
        for e in history.events
        if e.task_id == task.id
        and e.kind in DECISIONS
        and e.payload.get("checkpoint") in ("", None, task.waiting_for)
        and f":v{task.version}:" in e.key
        and e.processed_at is not None
    ]
    if consumed:
        return (
            f"still waiting for {task.waiting_for}, though its {consumed[0].kind} event"
            f" {consumed[0].key} was marked handled"
        )
    return f"still waiting for {task.waiting_for}"


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
    """From the runs' intervals: at no instant more agent runs in flight per repository than its
    `max_active`, and never two runs of one task at once.

    A run whose supervisor was killed has no `ended_at`. `open_run_ends` gives the end the
    harness observed for some of them (the last moment their agent was seen alive); the others
    are skipped and counted."""
    f = Finding("I5", "repository limits hold at every instant")
    repo_of = {t.id: t.repo for t in history.tasks}
    key_of = {t.id: t.key for t in history.tasks}
    intervals: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    skipped = 0
    for run in history.runs:
        end = run.ended_at if run.ended_at is not None else open_run_ends.get(run.id)
        if end is None:
            skipped += 1
            continue
        intervals[repo_of.get(run.task_id, "?")].append((run.started_at, end, run.task_id))
    peak: dict[str, int] = {}
    for repo, spans in sorted(intervals.items()):
        peak[repo], worst_at = _peak(spans)
        limit = limits.get(repo, 0)
        if peak[repo] > limit:
            f.violations.append(
                f"{repo}: {peak[repo]} runs in flight at {worst_at:.3f}, limit {limit}"
            )
        for task_id, at in _same_task_overlaps(spans):
            f.violations.append(f"{key_of.get(task_id, task_id)}: two runs at once at {at:.3f}")
    f.figures.update(peak=peak, runs=len(history.runs), runs_without_end_skipped=skipped)
    return f


def _peak(spans: Sequence[tuple[float, float, int]]) -> tuple[int, float]:
    # ends sort before starts at the same instant: a run that ends as another starts is not
    # concurrent with it
    points = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    current = best = 0
    best_at = 0.0
    for at, delta in points:
        current += delta
        if current > best:
            best, best_at = current, at
    return best, best_at


def _same_task_overlaps(spans: Sequence[tuple[float, float, int]]) -> list[tuple[int, float]]:
    by_task: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s, e, task_id in spans:
        by_task[task_id].append((s, e))
    out = []
    for task_id, own in by_task.items():
        own.sort()
        for (_, e1), (s2, _) in itertools.pairwise(own):
            if s2 < e1:
                out.append((task_id, s2))
    return out


# -- I6: after STOP the task is cancelled, and nothing of it runs again -------------------------


def check_stops(history: History, bound_s: float) -> Finding:
    """Every task whose STOP was recorded ends cancelled within `bound_s`; one that finished, or
    was parked because a deploy's outcome was unknown, before the STOP could apply is counted
    apart. No run starts after the task was cancelled."""
    f = Finding("I6", "a STOP ends the task cancelled")
    stops = {
        e.task_id: e for e in sorted(history.events, key=lambda e: e.id) if e.kind == EventKind.STOP
    }
    outcome: Counter[str] = Counter()
    longest = 0.0
    for task in history.tasks:
        stop = stops.get(task.id)
        cancelled_at = _cancelled_at(history.transitions.get(task.id, []))
        if cancelled_at is not None:
            late = [r for r in history.runs if r.task_id == task.id and r.started_at > cancelled_at]
            for run in late:
                f.violations.append(f"{task.key}: a {run.stage} run started after it was cancelled")
        if stop is None:
            continue
        if task.status == TaskStatus.CANCELLED and cancelled_at is not None:
            outcome["cancelled"] += 1
            took = cancelled_at - stop.created_at
            longest = max(longest, took)
            if took > bound_s:
                f.violations.append(f"{task.key}: cancelled {took:.1f}s after its STOP")
        elif task.status == TaskStatus.DONE:
            outcome["done first"] += 1
        elif task.status == TaskStatus.NEEDS_OPERATOR:
            outcome["parked"] += 1
        else:
            outcome["not applied"] += 1
            f.violations.append(f"{task.key}: STOPped, but still {task.status} at {task.stage}")
    f.figures.update(stopped=len(stops), outcomes=dict(outcome), longest_cancel_s=round(longest, 2))
    return f


def _cancelled_at(trs: Sequence[Transition]) -> float | None:
    for tr in trs:
        if tr.to_status == TaskStatus.CANCELLED or tr.to_stage == Stage.CANCELLED:
            return tr.at
    return None


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
    """The effects table holds a key once (a unique index), so a key cannot be SUCCEEDED twice
    there; this checks that anyway, then counts notifications per key in the log notifier's
    lines. A log cannot be asked whether a line was written, so a sender killed (or paused and
    fenced) between notifying and recording SUCCEEDED makes the next attempt notify again: that
    is the at-least-once delivery such a notifier allows, counted as a figure, not failed."""
    f = Finding("I7", "every key succeeds at most once")
    keys = Counter(e.key for e in history.effects)
    for key, n in sorted(keys.items()):
        if n > 1:
            f.violations.append(f"effect key {key} recorded {n} times")
    f.figures.update(
        duplicate_keys=sum(n - 1 for n in keys.values()),
        effects=len(history.effects),
        succeeded=sum(1 for e in history.effects if e.state == EffectState.SUCCEEDED),
        notifications=sum(len(s) for s in sent.values()),
        notifications_repeated=sum(len(s) - 1 for s in sent.values() if len(s) > 1),
    )
    return f
