"""What the harness watches while the run goes on: the store (jobs, leases, task statuses), the
process table (every child of every orch process it started), and the jobs a killed or paused
process held, until someone else runs them. Once the run is over: which of its processes are still
alive, and ending them."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from orch.adapters.proctable import ENV as INCARNATION_ENV
from orch.adapters.proctable import LinuxProcessTable, Orphan, parse_incarnation, start_time
from orch.chaos import checks
from orch.chaos.processes import Life
from orch.chaos.run import T_RECLAIM_S, T_RECOVER_S
from orch.domain import machine
from orch.domain.errors import OrchError, StoreUnavailable
from orch.domain.states import JobState
from orch.ports import Store

_PROC = Path("/proc")


@dataclass(frozen=True)
class HeldJob:
    job_id: int
    task_id: int
    token: int


class Probe:
    """Small reads of the store while orch runs, through the Store port, as any observer
    reads it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def close(self) -> None:
        self.store.close()

    def has_tasks(self) -> bool:
        """Whether the store already holds tasks. One that cannot be read yet is migrated
        first, as orch serve would; one that holds tasks is left as it is."""
        try:
            return bool(self.store.list_tasks(limit=1))
        except StoreUnavailable:
            self.store.migrate()  # says clearly why, if the store cannot be reached at all
        return bool(self.store.list_tasks(limit=1))

    def statuses(self) -> Counter[str]:
        return Counter(self.store.summary(recent=0).by_status)

    def held_by(self, owner_matches: Callable[[str], bool]) -> list[HeldJob]:
        return [
            HeldJob(j.id, j.task_id, j.token)
            for j in self.store.live_jobs()
            if j.state == JobState.RUNNING and j.owner and owner_matches(j.owner)
        ]

    def job_states(self, jobs: Iterable[HeldJob]) -> dict[int, tuple[str, int]]:
        """job id -> (state, lease token) of the given jobs, read with their tasks' jobs."""
        out: dict[int, tuple[str, int]] = {}
        for task_id in {j.task_id for j in jobs}:
            for job in self.store.jobs(task_id):
                out[job.id] = (job.state.value, job.token)
        return out

    def claimable_jobs(
        self, limits: dict[str, int], owner_alive: Callable[[str], bool]
    ) -> list[HeldJob]:
        """Jobs a healthy dispatcher could claim right now: due and queued, needing no
        repository slot, holding one, or able to take a free one; or still `running` under an
        orch process that is dead."""
        now = self.store.now()
        # the jobs before their tasks: a job claimed between the two reads is seen queued and
        # moves at once, where the other order would miss the slot it took and count jobs
        # behind it as claimable
        jobs = self.store.live_jobs()
        tasks = {task.id: task for task in self.store.list_tasks(limit=10_000_000)}
        used = Counter(task.repo for task in tasks.values() if task.slot is not None)
        out: list[HeldJob] = []
        for job in jobs:
            held = HeldJob(job.id, job.task_id, job.token)
            if job.state == JobState.RUNNING:
                if job.owner and not owner_alive(job.owner):
                    out.append(held)
                continue
            task = tasks.get(job.task_id)
            if job.run_after > now or task is None:
                continue
            # the store's own rule: a STOP or an inbox read needs no repository slot
            needs_slot = machine.needs_slot(task.status, task.cancel_requested_at is not None)
            if (
                not needs_slot
                or task.slot is not None
                or used[task.repo] < limits.get(task.repo, 0)
            ):
                out.append(held)
        return out


@dataclass
class Watch:
    """A job followed until a process claims it (a new lease token) or it ends: one a killed or
    paused process held, or one that was claimable when a process restarted."""

    cause: str  # "kill", "pause" or "restart"
    life: str
    job: HeldJob
    since: float
    resolved_at: float | None = None
    how: str = ""  # "reclaimed", or "finished" (by its holder, after it resumed)
    # a paused holder's: when it was sent SIGCONT, and whether the store showed the job under
    # a new token just before (its holder's next try under it must then meet the fence)
    resumed_at: float | None = None
    taken_while_stopped: bool = False


@dataclass
class Seen:
    """A child of an orch process, as the process table showed it."""

    pid: int
    start: str
    owner: Life
    first: float
    last: float


class Monitor:
    """Samples the process table and follows watched jobs, on its own thread."""

    def __init__(
        self,
        probe: Probe,
        lives: Callable[[], list[Life]],
        interval_s: float = 0.25,
        zombie_after_s: float = 30.0,
    ) -> None:
        self.probe = probe
        self.lives = lives
        self.interval_s = interval_s
        self.zombie_after_s = zombie_after_s
        self.seen: dict[tuple[int, str], Seen] = {}
        # processes found to be nobody's child of ours: a process's parent and environment do
        # not change, so they are not read again
        self._foreign: set[tuple[int, str]] = set()
        self.watches: list[Watch] = []
        self.zombies_during_run: list[str] = []
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def watch(self, cause: str, life: Life, jobs: Iterable[HeldJob], since: float) -> list[Watch]:
        added = [Watch(cause, life.name, j, since) for j in jobs]
        with self._lock:
            self.watches.extend(added)
        return added

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            for step in (self.sample_processes, self.follow_watches):
                try:
                    step()
                except (OrchError, OSError) as exc:
                    self.errors[f"{step.__name__}: {type(exc).__name__}"] += 1

    # -- the process table -------------------------------------------------------------------

    def sample_processes(self) -> None:
        now = time.time()
        lives = self.lives()
        by_pid = {life.pid: life for life in lives if life.alive}
        by_identity = {(life.pid, life.start): life for life in lives}
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            stat = _stat(entry)
            if stat is None:
                continue
            pid, ppid, start = int(entry.name), stat[0], stat[1]
            key = (pid, start)
            known = self.seen.get(key)
            if known is not None:
                known.last = now
                self._zombie(known, now)
                continue
            if key in self._foreign:
                continue
            owner = by_pid.get(ppid) or _owner_by_env(entry, by_identity)
            if owner is not None and key != (owner.pid, owner.start):
                self.seen[key] = Seen(pid, start, owner, now, now)
            else:
                self._foreign.add(key)

    def _zombie(self, seen: Seen, now: float) -> None:
        owner = seen.owner
        if owner.ended_at is None or now - owner.ended_at < self.zombie_after_s:
            return
        text = (
            f"pid {seen.pid} alive {now - owner.ended_at:.0f}s after {owner.name}, which started"
            " it, died"
        )
        if not any(z.startswith(f"pid {seen.pid} ") for z in self.zombies_during_run):
            self.zombies_during_run.append(text)

    def longest_orphan_s(self) -> float:
        spans = [
            s.last - s.owner.ended_at
            for s in self.seen.values()
            if s.owner.ended_at is not None and s.last > s.owner.ended_at
        ]
        return max(spans, default=0.0)

    def children_seen(self) -> int:
        return len(self.seen)

    def open_run_ends(self, runs: Iterable[tuple[int, int | None, float]]) -> dict[int, float]:
        """run id -> the last moment its agent was seen alive, for runs with no recorded end.
        `runs` gives (run id, agent pid, started_at). The agent surely lived until then (it may
        have lived up to one sample longer), so an overlap found with this end is real."""
        return match_open_runs(self.seen.values(), runs)

    # -- watched jobs ------------------------------------------------------------------------

    def follow_watches(self) -> None:
        with self._lock:
            pending = [w for w in self.watches if w.resolved_at is None]
        if not pending:
            return
        states = self.probe.job_states(w.job for w in pending)
        now = time.time()
        for w in pending:
            state, token = states.get(w.job.job_id, ("gone", w.job.token))
            if token > w.job.token:
                w.resolved_at, w.how = now, "reclaimed"
            elif state not in (JobState.RUNNING.value, JobState.QUEUED.value):
                w.resolved_at, w.how = now, "finished"

    def longest(self, cause: str, how: str = "reclaimed") -> float | None:
        spans = [
            w.resolved_at - w.since
            for w in self.watches
            if w.cause == cause and w.how == how and w.resolved_at is not None
        ]
        return max(spans, default=None)

    def first_per_life(self, cause: str) -> dict[str, Watch]:
        """Per life with watches of `cause`: the one of its jobs that moved on first, or one
        still waiting if none did."""
        firsts: dict[str, Watch] = {}
        for w in self.watches:
            if w.cause != cause:
                continue
            best = firsts.get(w.life)
            if best is None or (
                w.resolved_at is not None
                and (
                    best.resolved_at is None
                    or w.resolved_at - w.since < best.resolved_at - best.since
                )
            ):
                firsts[w.life] = w
        return firsts

    def count(self, cause: str, how: str | None = None) -> int:
        return sum(1 for w in self.watches if w.cause == cause and (how is None or w.how == how))

    def unresolved(self, cause: str) -> list[Watch]:
        return [w for w in self.watches if w.cause == cause and w.resolved_at is None]


def _stat(entry: Path) -> tuple[int, str] | None:
    """(ppid, start time) of a live process, or None (gone, or a zombie waiting to be reaped)."""
    try:
        raw = (entry / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), fields[19]


def _owner_by_env(entry: Path, by_identity: dict[tuple[int, str], Life]) -> Life | None:
    """The orch process named by a process's ORCH_INCARNATION, if it is one of ours."""
    environ = b""
    with contextlib.suppress(OSError):
        environ = (entry / "environ").read_bytes()
    needle = INCARNATION_ENV.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(needle):
            parsed = parse_incarnation(item[len(needle) :].decode(errors="replace"))
            if parsed is not None:
                return by_identity.get((parsed[1], parsed[2]))
    return None


def match_open_runs(
    seen: Iterable[Seen], runs: Iterable[tuple[int, int | None, float]], window_s: float = 2.0
) -> dict[int, float]:
    """The agent of a run is the process with its pid first seen within `window_s` of the run's
    start, or seen alive both before and after it (a launcher started ahead, told its command
    as the run started): pids wrap (a long run spawns tens of thousands of processes), so a
    process with the same pid seen only later, or only earlier, is someone else, and must not
    stretch the run."""
    out: dict[int, float] = {}
    by_pid: dict[int, list[Seen]] = {}
    for s in seen:
        by_pid.setdefault(s.pid, []).append(s)
    for run_id, pid, started_at in runs:
        for s in by_pid.get(pid or -1, []):
            if abs(s.first - started_at) <= window_s or s.first <= started_at <= s.last:
                out[run_id] = s.last
                break
    return out


def leftover_children(monitor: Monitor, already: list[Orphan]) -> list[Orphan]:
    """Children seen by their parent pid (not by ORCH_INCARNATION) that are still alive once
    every orch process has ended."""
    known = {z.pid for z in already}
    out = []
    for seen in monitor.seen.values():
        if seen.pid not in known and start_time(seen.pid) == seen.start:
            out.append(
                Orphan(seen.pid, seen.start, f"(a child of {seen.owner.name}, by parent pid)")
            )
    return out


def end_leftovers(table: LinuxProcessTable, lives: list[Life], monitor: Monitor | None) -> None:
    """SIGKILL every process of this run still alive: the orch processes and their children,
    each by pid and start time only."""
    doomed = {(life.pid, life.start) for life in lives if life.alive}
    doomed |= {(z.pid, z.start) for z in checks.find_zombies(table, [x.identity for x in lives])}
    if monitor is not None:
        doomed |= set(monitor.seen)
    for pid, start in doomed:
        if start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def bounds(monitor: Monitor, lives: list[Life], fence_wait_s: float) -> checks.Finding:
    """I8 and F6 as figures with bounds: re-drive after a restart, reclaim after a pause, and
    the fence that stops a paused worker's later writes."""
    f = checks.Finding("I8/F6", "re-drive, reclaim and fencing in bounds")
    # a restarted process killed again before its work moved had no chance to move it: the
    # next restart is measured instead
    ended = {life.name: life.ended_at for life in lives}
    measured: list[Watch] = []
    cut_short = 0
    for name, w in monitor.first_per_life("restart").items():
        end = ended.get(name)
        moved = w.resolved_at
        if end is not None and (moved is None or moved > end) and end - w.since < T_RECOVER_S:
            cut_short += 1
        else:
            measured.append(w)
    never = [w for w in measured if w.resolved_at is None]
    slowest = max(
        (w for w in measured if w.resolved_at is not None),
        key=lambda w: (w.resolved_at or 0.0) - w.since,
        default=None,
    )
    longest_redrive = None if slowest is None else (slowest.resolved_at or 0.0) - slowest.since
    if never:
        f.violations.append(f"{len(never)} restart(s) after which runnable work never moved")
    if slowest is not None and longest_redrive is not None and longest_redrive > T_RECOVER_S:
        f.violations.append(
            f"work re-driven {longest_redrive:.1f}s after {slowest.life} restarted (job"
            f" {slowest.job.job_id} of task {slowest.job.task_id}, {slowest.how})"
        )
    reclaim = monitor.longest("pause")
    if reclaim is not None and reclaim > T_RECLAIM_S:
        f.violations.append(f"a paused worker's job reclaimed only after {reclaim:.1f}s")
    for w in monitor.unresolved("pause"):
        f.violations.append(f"job {w.job.job_id} held by paused {w.life} never moved on")
    fenced = sum(life.fenced_writes() for life in lives)
    given_up = sum(life.leases_given_up() for life in lives)
    f.violations.extend(_unfenced(monitor, lives, fence_wait_s))
    f.figures.update(
        restarts_measured=len(measured),
        restarts_cut_short=cut_short,
        longest_redrive_s=longest_redrive,
        longest_reclaim_s=reclaim,
        longest_kill_recovery_s=monitor.longest("kill"),
        fenced_writes=fenced,
        leases_given_up=given_up,
        jobs_taken_while_stopped=sum(w.taken_while_stopped for w in monitor.watches),
    )
    return f


def _unfenced(monitor: Monitor, lives: list[Life], fence_wait_s: float) -> list[str]:
    """Paused processes that lost a job while stopped, lived on one heartbeat past SIGCONT, and
    whose log shows neither a write under that job's old token fenced nor its lease given up.

    A job taken over only after SIGCONT is not asked about: its holder renewed first (a renewal
    that gets through holds off a takeover for a TTL) and lost it later, killed or letting it go.
    Nor is a process that died (at its crash point, say) before its first try: there was
    nothing to fence."""
    by_name = {life.name: life for life in lives}
    asked: dict[str, list[Watch]] = {}
    for w in monitor.watches:
        life = by_name.get(w.life)
        if w.cause != "pause" or not w.taken_while_stopped or w.resumed_at is None or not life:
            continue
        if life.ended_at is None or life.ended_at - w.resumed_at >= fence_wait_s:
            asked.setdefault(w.life, []).append(w)
    return [
        f"paused {name} lost job(s) {', '.join(str(w.job.job_id) for w in ws)} while stopped"
        " and lived on, but no write under them was fenced and no lease of theirs given up"
        for name, ws in asked.items()
        if not any(by_name[name].fence_lines(w.job.job_id, w.job.token) for w in ws)
    ]
