"""The dispatcher: one claimer hands runnable jobs to worker slots.

The claimer wakes when the store commits in this process (the store calls `wake`) and when it
hears another process's commit (the store's `hearing`: PostgreSQL's NOTIFY, or SQLite's change
count), so there is no poll delay between stages nor across processes; each wake-up also tells
the jobs running here about STOPs. A look that finds nothing writes nothing, and the poll
interval is only a safety net for a change nobody heard.

Recovery runs at start and then periodically, and is the same function both times: end the
children that dead incarnations on this host left behind, void those incarnations' leases (they
are provably dead, so their jobs need not wait out the TTL), then sweep expired leases.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from orch import crashpoints
from orch.domain.errors import Interrupted, OrchError, StoreUnavailable
from orch.domain.model import Claim
from orch.domain.naming import cancel_overdue_key, store_down_key
from orch.domain.states import EventKind
from orch.ports import ProcessTable, Store, SweepResult, WarmLaunchers
from orch.services.engine import Engine

log = logging.getLogger("orch.dispatcher")


def incarnation() -> str:
    """This process's identity where no process table can name it: host, pid, no start time
    ("-": nothing can prove it dead by its pid) and a fresh uuid, so a reused pid is a new
    owner."""
    return f"{socket.gethostname()}:{os.getpid()}:-:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Recovery:
    orphans_killed: int = 0
    leases_voided: int = 0
    requeued: int = 0
    dead: int = 0
    runs_accounted: int = 0


@dataclass(frozen=True)
class DispatcherSettings:
    slots: int = 4
    lease_ttl_s: float = 30.0
    sweep_interval_s: float = 10.0
    poll_interval_s: float = 1.0
    max_attempts: int = 3
    # a STOP deferred behind an effect in flight longer than this raises an alert, and parks
    # the task if no worker holds it: the default deploy timeout plus a minute
    cancel_bound_s: float = 1860.0
    # worktrees per repository made ahead for new tasks, and how often the default branch is
    # looked at to replace those of an older head
    spare_worktrees: int = 0
    spares_refresh_s: float = 30.0
    # launchers started ahead of the commands they will start
    warm_launchers: int = 0


class Dispatcher:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        repo_limit: Callable[[str], int],
        settings: DispatcherSettings,
        owner: str | None = None,
        alert: Callable[[str, str], None] | None = None,
        processes: ProcessTable | None = None,
        launchers: WarmLaunchers | None = None,
    ) -> None:
        self.store = store
        self.launchers = launchers
        self.engine = engine
        self.repo_limit = repo_limit
        self.settings = settings
        self.processes = processes
        self.owner = owner or (processes.incarnation() if processes else incarnation())
        self.alert = alert or (lambda key, text: log.error("alert %s: %s", key, text))
        self._cond = threading.Condition()
        self._generation = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._handed: queue.SimpleQueue[Claim | None] = queue.SimpleQueue()
        self._free = 0  # slots without a job, while started
        self._unhear: list[Callable[[], None]] = []
        self._outage: str | None = None  # why the store refused the last claim, while it does
        # another process committed since the jobs here were last told of STOPs: those asked
        # in this process reach them at once (Engine.stop_asked)
        self._stops_heard = True
        store.add_listener(self.wake)

    def wake(self) -> None:
        """The store changed here: the claimer looks."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def heard(self) -> None:
        """Another process changed the store: the claimer looks, and tells the jobs here
        about the STOPs asked for their tasks."""
        with self._cond:
            self._stops_heard = True
            self._generation += 1
            self._cond.notify_all()

    # -- stepping, for tests and the demo ----------------------------------------------------

    def run_once(self) -> bool:
        claim = self.store.claim(self.owner, self.settings.lease_ttl_s, self.repo_limit)
        if claim is None:
            return False
        crashpoints.hit("claim.committed")
        try:
            self.engine.run_job(claim, self.owner)
        except (OrchError, Interrupted) as exc:  # pragma: no cover - run_job records its own
            log.error("job %s failed outside the engine: %s", claim.job_id, exc)
        return True

    def sweep(self) -> SweepResult:
        result = self.store.sweep(self.settings.max_attempts)
        self._watch_deferred_cancels()
        return result

    def recover(self) -> Recovery:
        """Orphans first, so no task is driven again while an agent of its last attempt lives;
        then the dead incarnations' leases, and what their runs spent; then the sweep."""
        killed = voided = accounted = 0
        if self.processes is not None:
            killed = len(self.processes.reap_orphans(self.owner, self.engine.settings.kill_grace_s))
            for owner in self.store.lease_owners():
                if owner != self.owner and self.processes.is_dead(owner):
                    voided += self.store.void_leases(owner)
            accounted = self.engine.account_dead_runs(self.processes.is_dead)
        swept = self.sweep()
        settled = self.engine.settle_merges()
        if settled:
            log.warning("recovery: %s merge(s) left unresolved were settled by the forge", settled)
        if killed or voided:
            log.warning(
                "recovery: %s orphaned child(ren) killed, %s lease(s) of dead workers voided",
                killed,
                voided,
            )
        return Recovery(killed, voided, swept.requeued, swept.dead, accounted)

    def _watch_deferred_cancels(self) -> None:
        bound = self.settings.cancel_bound_s
        for overdue in self.store.overdue_cancels(bound):
            task_id, key, version = overdue.task_id, overdue.key, overdue.version
            text = f"{key}: a STOP has waited more than {bound:g}s"
            # the inbox's dedup key sends the alert once per task; appending it also gives a
            # waiting or parked task a job that applies the STOP
            if self.store.append_event(
                task_id, cancel_overdue_key(task_id), EventKind.ALERT, "sweeper", {"text": text}
            ):
                try:
                    self.alert(key, text)
                except Exception:
                    log.exception("alert for %s failed", key)
            if overdue.in_flight and not overdue.held and not overdue.parked:
                self.store.park(
                    task_id,
                    version,
                    f"a STOP outlived its bound of {bound:g}s behind an effect in flight",
                    "sweeper",
                )

    def run_until_idle(self, max_jobs: int = 100_000) -> int:
        """Run jobs in this thread until none is runnable now. Returns how many ran."""
        self.recover()
        ran = 0
        while ran < max_jobs and self.run_once():
            ran += 1
        return ran

    # -- threads, for `orch serve` -----------------------------------------------------------

    def start(self) -> None:
        # launchers are started ahead while recovery runs, for the jobs it gives back
        if self.settings.warm_launchers and self.launchers is not None:
            self._spawn(self._launchers, "orch-launchers")
        self.recover()
        self._free = self.settings.slots
        self._unhear = [
            self.store.hearing.hold(),
            self.store.changes.listen(self.heard, heard_only=True),
        ]
        for i in range(self.settings.slots):
            self._spawn(self._slot, f"orch-slot-{i}")
        self._spawn(self._claimer, "orch-claimer")
        self._spawn(self._sweeper, "orch-sweeper")
        if self.settings.spare_worktrees:
            self._spawn(self._spares, "orch-spares")

    def _spares(self) -> None:
        forge, s = self.engine.tools.forge, self.settings
        forge.keep_spares(s.spare_worktrees, self._stopping, s.spares_refresh_s)

    def _launchers(self) -> None:
        assert self.launchers is not None
        self.launchers.keep(self.settings.warm_launchers, self.owner, self._stopping)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        th = threading.Thread(target=target, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop claiming; jobs in flight kill their children and give their leases back."""
        self._stopping.set()
        self.engine.shutdown.set()
        if self.launchers is not None:
            self.launchers.wake()
        for release in self._unhear:
            release()
        self._unhear.clear()
        with self._cond:
            self._cond.notify_all()
        for _ in range(self.settings.slots):
            self._handed.put(None)
        wait = self.engine.settings.kill_grace_s + 5.0 if timeout_s is None else timeout_s
        for th in self._threads:
            th.join(wait)
        self._threads.clear()

    def _claimer(self) -> None:
        """The one claimer of this process: it claims while a slot is free and work is there,
        then sleeps until a commit here or elsewhere wakes it (or the next backoff is due, or
        the poll interval, a safety net for a change nobody heard). A change heard from another
        process also tells the jobs here about STOPs asked for their tasks."""
        while not self._stopping.is_set():
            with self._cond:
                seen, free, stops = self._generation, self._free, self._stops_heard
                self._stops_heard = False
            try:
                if stops:
                    self._tell_stops()
                claim = (
                    self.store.claim(self.owner, self.settings.lease_ttl_s, self.repo_limit)
                    if free
                    else None
                )
            except StoreUnavailable as exc:
                # a full disk, a read-only file, a database that went away: claim nothing, say
                # so once, and try again; no effect can start without its INITIATED row anyway
                self._store_down(str(exc))
                self._stopping.wait(self.settings.poll_interval_s)
                continue
            except Exception:
                log.exception("claimer error")
                self._stopping.wait(self.settings.poll_interval_s)  # no hot loop on a fault
                continue
            self._store_up()
            if claim is None:
                self._idle(seen, free)
                continue
            crashpoints.hit("claim.committed")
            with self._cond:
                self._free -= 1
            self._handed.put(claim)

    def _tell_stops(self) -> None:
        try:
            self.engine.stops_heard()
        except BaseException:  # told at the next look instead
            with self._cond:
                self._stops_heard = True
            raise

    def _slot(self) -> None:
        while True:
            claim = self._handed.get()
            if claim is None:
                return
            try:
                self.engine.run_job(claim, self.owner)
            except (OrchError, Interrupted) as exc:  # run_job records its own
                log.error("job %s failed outside the engine: %s", claim.job_id, exc)
            except Exception:  # a bug: the slot outlives it, and the lease expires
                log.exception("job %s failed outside the engine", claim.job_id)
            finally:
                with self._cond:
                    self._free += 1
                    self._generation += 1
                    self._cond.notify_all()

    def _store_down(self, error: str) -> None:
        with self._cond:
            first = self._outage is None
            if first:
                self._outage = error
        if first:
            log.error("claiming paused: %s", error)
            try:
                self.alert(store_down_key(self.owner), f"orch stopped claiming work: {error}")
            except Exception:
                log.exception("alert for the store outage failed")

    def _store_up(self) -> None:
        if self._outage is None:
            return
        with self._cond:
            was, self._outage = self._outage, None
        if was is not None:
            log.warning("claiming resumed: the store answers again")

    def _idle(self, seen: int, free: int) -> None:
        timeout = self.settings.poll_interval_s
        try:
            due = self.store.next_run_after() if free else None
            if due is not None:
                ahead = due - self.store.now()
                # a job due already but not claimed is held back by a repository limit: the
                # commit that frees the slot wakes us, so only future backoffs shorten the wait
                if ahead > 0:
                    timeout = min(timeout, ahead)
        except OrchError:
            pass
        with self._cond:
            if self._generation == seen and not self._stopping.is_set():
                self._cond.wait(timeout)

    def _sweeper(self) -> None:
        while not self._stopping.wait(self.settings.sweep_interval_s):
            try:
                result = self.recover()
                if result.requeued or result.dead:
                    log.info("sweep: %s requeued, %s dead", result.requeued, result.dead)
            except OrchError as exc:
                log.error("sweep failed: %s", exc)
