"""The fault loop of `orch chaos`.

It runs `orch serve` and `orch worker` as subprocesses on one store, files tickets through the
API, and lets a simulated person approve checkpoints and press STOP. Then it hurts the processes:
SIGKILL at a named crash point (`ORCH_CRASHPOINT`), SIGKILL at a random moment, or SIGSTOP for
longer than the lease so the other process must take the job over, then SIGCONT. Every dead
process is started again at once. After the last fault it waits for every task to end terminal
or parked, stops both processes, and checks I1-I10 (see `orch.chaos.checks`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orch import crashpoints
from orch.adapters.proctable import LinuxProcessTable, parse_incarnation
from orch.bootstrap import store_at
from orch.chaos import checks
from orch.chaos.lab import Lab, build_lab
from orch.chaos.observe import (
    HeldJob,
    Monitor,
    Probe,
    bounds,
    end_leftovers,
    leftover_children,
)
from orch.chaos.person import Actor, Api, Person
from orch.chaos.processes import Life, Supervised, orch_argv, orch_env
from orch.chaos.run import (
    T_CANCEL_S,
    T_RECOVER_S,
    ChaosOptions,
    ChaosResult,
    Kill,
    Pause,
    Say,
)
from orch.domain.errors import OrchError
from orch.domain.states import TaskStatus

ROLES = ("serve", "worker")
# crash points passed while answering the API (a person's approve or STOP): serve's alone
API_POINTS = frozenset({"inbox.event", "cancel.flag"})


# -- the run --------------------------------------------------------------------------------------


@dataclass
class _State:
    phase: str = "start"  # start, faults, settle, checks (or teardown, after a failure)
    kills: list[Kill] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # tickets the API refused, then retried
    filed: int = 0
    batches: int = 0
    last_fault_at: float = 0.0
    settled_after_s: float | None = None


class Harness:
    def __init__(self, options: ChaosOptions, say: Say) -> None:
        self.o = options
        self.say = say
        self.seed = options.seed if options.seed is not None else random.randrange(2**32)
        # one generator per actor: the seed fixes each actor's choices, whatever the timing
        self.rng_restart = random.Random(f"{self.seed}:restart")
        self.rng_arm = random.Random(f"{self.seed}:arm")
        self.rng_person = random.Random(f"{self.seed}:person")
        self.state = _State()
        self._lock = threading.Lock()
        self._pausing = threading.Lock()
        self._loop_errors: list[str] = []
        self.lab: Lab | None = None
        self.sup: dict[str, Supervised] = {}
        self.probe: Probe | None = None
        self.monitor: Monitor | None = None
        self.person: Actor | None = None
        self.api: Api | None = None
        self.table = LinuxProcessTable()

    # -- wiring ------------------------------------------------------------------------------

    def lives(self) -> list[Life]:
        return [life for s in self.sup.values() for life in s.lives]

    def _serve_url(self) -> str:
        life = self.sup["serve"].current() if "serve" in self.sup else None
        return life.url if life is not None and life.alive and not life.paused else ""

    def _arm(self, role: str) -> str | None:
        """Decide, as a process starts, whether it carries a crash point for this life: one it
        can reach (only serve takes the API's requests), at its first or second passage."""
        if self.state.phase != "faults" or self.rng_arm.random() >= self.o.crashpoint_share:
            return None
        points = [p for p in crashpoints.POINTS if role == "serve" or p not in API_POINTS]
        return f"{self.rng_arm.choice(points)}:{self.rng_arm.randint(1, 2)}"

    def _owner_alive(self, owner: str) -> bool:
        parsed = parse_incarnation(owner)
        if parsed is None:
            return False
        return any(
            life.alive and (life.pid, life.start) == (parsed[1], parsed[2]) for life in self.lives()
        )

    @staticmethod
    def _owned_by(life: Life) -> Callable[[str], bool]:
        def matches(owner: str) -> bool:
            parsed = parse_incarnation(owner)
            return parsed is not None and (parsed[1], parsed[2]) == (life.pid, life.start)

        return matches

    def _on_ready(self, life: Life) -> None:
        if life.number == 1 or self.probe is None or self.lab is None:
            return
        # re-drive: how soon after this restart work that was claimable is claimed again
        try:
            claimable = self.probe.claimable_jobs(self.lab.limits(), self._owner_alive)
        except (OrchError, OSError):
            return
        if claimable and self.monitor is not None:
            self.monitor.watch("restart", life, claimable, life.ready_at or time.time())

    def _on_death(self, life: Life) -> None:
        if self.state.phase in ("checks", "teardown"):
            # asked to stop: SIGTERM should end it cleanly (a SIGKILL after the grace is
            # reported by the supervisor)
            if life.end not in ("sigterm", "sigkill"):
                self.state.unexpected.append(f"{life.name} ended {life.end} when asked to stop")
            return
        if life.end in ("crashpoint", "sigkill"):
            how = "crashpoint" if life.end == "crashpoint" else "random"
            if life.end == "sigkill" and not life.killed_by_harness:
                self.state.unexpected.append(f"{life.name} was SIGKILLed by someone else")
            point = life.crash_reached or (life.crashpoint or "").split(":")[0]
            with self._lock:
                self.state.kills.append(Kill(life.name, life.ended_at or time.time(), how, point))
                done = len(self.state.kills)
            reached = f" at crash point {life.crash_reached}" if life.crash_reached else ""
            self.say(f"kill {done}/{self.o.kills}: {life.name}{reached or ' (SIGKILL)'}")
            self._watch_held(life, "kill")
        else:
            self.state.unexpected.append(f"{life.name} ended by itself: {life.end}")
            self.say(f"[red]{life.name} ended by itself ({life.end})[/]; see {life.err_path}")

    def _watch_held(self, life: Life, cause: str) -> list[HeldJob]:
        if self.probe is None or self.monitor is None:
            return []
        try:
            held = self.probe.held_by(self._owned_by(life))
        except (OrchError, OSError):
            return []
        self.monitor.watch(cause, life, held, life.ended_at or time.time())
        return held

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        started = time.monotonic()
        try:
            self._set_up()
            self._fault_phase()
            self._settle_phase()
            history_at_settle = self._history()
            shutdown_problems = self._shut_down()
            return self._verdict(history_at_settle, shutdown_problems, time.monotonic() - started)
        except KeyboardInterrupt:
            self.say("interrupted: ending every process this run started")
            raise
        finally:
            self._tear_down()

    # -- what a world other than the default one changes (orch.chaos.outside) ---------------------

    def _build_lab(self) -> Lab:
        return build_lab(
            self.o.directory,
            self.o.store_url,
            self.o.repos,
            self.o.max_active,
            self.o.tuning(),
        )

    def _argv(self, role: str) -> list[str]:
        return orch_argv(role)

    def _env(self, role: str) -> dict[str, str]:
        assert self.lab is not None
        return orch_env(self.lab.configs[role])

    def _make_person(self, api: Api) -> Actor:
        return Person(api, self.rng_person, self.o.stop_share)

    def _settled(self, statuses: Counter[str]) -> bool:
        return settled(statuses)

    def _more_findings(self, history: checks.History) -> list[checks.Finding]:
        return []

    def _more_figures(self, figures: dict[str, Any]) -> None:
        pass

    def _outside_report(self) -> dict[str, Any] | None:
        return None

    def _more_teardown(self) -> list[Callable[[], object]]:
        return []

    # -- the phases --------------------------------------------------------------------------

    def _set_up(self) -> None:
        self.lab = self._build_lab()
        self.say(f"chaos in {self.lab.root} (seed {self.seed}, store {self.lab.store_url})")
        logs = self.lab.root / "processes"
        logs.mkdir()
        for role in ROLES:
            self.sup[role] = Supervised(
                role,
                self._argv(role),
                self._env(role),
                logs,
                arm=self._arm,
                on_ready=self._on_ready,
                on_death=self._on_death,
                restart_delay=lambda: self.rng_restart.uniform(0.0, 0.3),
            )
        self.probe = Probe(store_at(self.lab.store_url))
        if self.probe.has_tasks():
            raise OrchError(f"the store {self.lab.store_url} already holds tasks; use an empty one")
        self._start_role("serve")
        self._start_role("worker")
        self.monitor = Monitor(self.probe, self.lives, zombie_after_s=T_RECOVER_S)
        self.monitor.start()
        self.api = Api(self._serve_url)
        self.person = self._make_person(self.api)
        self.person.start()

    def _start_role(self, role: str) -> None:
        self.sup[role].start()
        life = self.sup[role].wait_ready(60)
        if life is None:
            raise OrchError(f"orch {role} did not start; see {self.lab.root if self.lab else ''}")
        self.say(f"{life.name} ready (pid {life.pid}{', ' + life.url if life.url else ''})")

    def _file_batch(self) -> None:
        assert self.lab is not None and self.api is not None
        self.state.batches += 1
        for i in range(self.o.tickets):
            repo = self.lab.repos[i % len(self.lab.repos)].name
            title = f"chaos ticket {self.state.batches}.{i + 1}"
            self._file(repo, title)
        self.state.filed += self.o.tickets
        self.say(f"filed {self.o.tickets} tickets (batch {self.state.batches})")

    def _file(self, repo: str, title: str) -> None:
        """POST the ticket until it is filed once: after an answer lost to a kill, look for it
        by its title before asking again. A refusal is tried again too: filing reads the
        repository's pipeline file through git, which a crash can leave briefly unable to."""
        assert self.api is not None
        deadline = time.monotonic() + 120
        refusal = ""
        while time.monotonic() < deadline:
            body = {"repo": repo, "title": title, "body": "Filed by orch chaos."}
            reply = self.api.call("POST", "/api/v1/tasks", body)
            if reply is not None and reply.ok:
                return
            if reply is not None:
                refusal = f"; the last refusal: {reply.status} {reply.body}"
                self.state.refusals.append(f"{title}: {reply.status} {reply.body}")
            time.sleep(0.3)
            tasks = self.api.tasks()
            if tasks is not None and any(t["title"] == title for t in tasks):
                return
        raise OrchError(f"could not file {title!r} within 120s{refusal}")

    def _kills(self) -> int:
        with self._lock:
            return len(self.state.kills)

    def _check_supervisors(self) -> None:
        for s in self.sup.values():
            if s.error is not None:
                raise OrchError(f"the {s.role} supervisor failed: {s.error!r}") from s.error
        if self._loop_errors:
            raise OrchError(self._loop_errors[0])
        if len(self.state.unexpected) > 10:
            last = self.state.unexpected[-1]
            raise OrchError(f"orch processes keep ending by themselves; the last: {last}")

    def _fault_phase(self) -> None:
        """One fault loop per process, side by side; this thread files tickets whenever every
        task has settled, until enough kills were inflicted."""
        assert self.probe is not None
        self.state.phase = "faults"
        self._file_batch()
        enough = threading.Event()
        loops = [
            threading.Thread(target=self._fault_loop, args=(role, enough), name=f"chaos-{role}")
            for role in ROLES
        ]
        for th in loops:
            th.start()
        idle_since: float | None = None
        try:
            while self._kills() < self.o.kills:
                self._check_supervisors()
                # more work once none is left: every task settled, or none active for a while
                # (a task lost at a checkpoint must not leave the processes idle for the rest
                # of the faults; the checks report it)
                statuses = self._statuses()
                if statuses is None or statuses.get(TaskStatus.ACTIVE.value, 0):
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                idle = idle_since is not None and time.monotonic() - idle_since > 3.0
                if idle or (statuses is not None and self._settled(statuses)):
                    self._file_batch()
                    idle_since = None
                time.sleep(0.5)
        finally:
            enough.set()
            for th in loops:
                th.join()

    def _fault_loop(self, role: str, enough: threading.Event) -> None:
        rng = random.Random(f"{self.seed}:faults:{role}")
        try:
            while not enough.is_set():
                life = self.sup[role].wait_ready(5)
                if life is None:
                    continue
                if rng.random() < self.o.pause_share and self._pause(life):
                    continue
                self._kill(role, life, rng, enough)
        except Exception as exc:  # surfaced by the filing thread, which ends the run
            self._loop_errors.append(f"the {role} fault loop failed: {exc!r}")

    def _kill(self, role: str, life: Life, rng: random.Random, enough: threading.Event) -> None:
        """An armed process gets time to reach its crash point, and is SIGKILLed where it is if
        it does not; an unarmed one is SIGKILLed after U(0.2, 3) s."""
        wait = self.o.crash_wait_s if life.crashpoint else rng.uniform(0.2, 3.0)
        deadline = time.monotonic() + wait
        while life.alive and time.monotonic() < deadline and not enough.is_set():
            time.sleep(0.05)
        if enough.is_set():
            return
        self._kill_now(role, life)

    def _kill_now(self, role: str, life: Life) -> None:
        self.sup[role].kill(life)
        deadline = time.monotonic() + 15
        while life.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        self.state.last_fault_at = time.time()

    @property
    def _fence_wait_s(self) -> float:
        """How long a resumed process gets for its next heartbeat to meet the fence."""
        return self.o.heartbeat_s + 1.0

    def _pause(self, life: Life) -> bool:
        """SIGSTOP a process that holds a job, for longer than its lease plus two sweeps, so the
        other process must reclaim the job; then SIGCONT it, and give it time to try to write.
        One pause at a time: a second would leave nobody to reclaim."""
        assert self.probe is not None and self.monitor is not None
        if not self._pausing.acquire(blocking=False):
            return False
        try:
            held = self._await_held(life)
            at = time.time()
            if not held or not self.sup[life.role].pause(life):
                return False
            watches = self.monitor.watch("pause", life, held, at)
            self.state.pauses.append(Pause(life.name, at, len(held)))
            self.say(f"pause: SIGSTOP {life.name}, which holds {len(held)} job(s)")
            time.sleep(self.o.lease_ttl_s + 2 * self.o.sweep_s)
            taken = self._taken(held)
            self.sup[life.role].resume(life)
            for w in watches:
                w.resumed_at, w.taken_while_stopped = life.resumed_at, w.job.job_id in taken
            time.sleep(self._fence_wait_s)
            self.state.last_fault_at = time.time()
            return True
        finally:
            self._pausing.release()

    def _taken(self, held: list[HeldJob]) -> set[int]:
        """Which of `held` the store shows under a new token: taken over. None, as far as the
        checks go, when the store cannot say right now."""
        assert self.probe is not None
        try:
            states = self.probe.job_states(held)
        except (OrchError, OSError) as exc:
            self.say(f"could not read who holds the paused jobs now: {exc}")
            return set()
        return {j.job_id for j in held if states.get(j.job_id, ("", j.token))[1] > j.token}

    def _await_held(self, life: Life) -> list[HeldJob]:
        """The jobs `life` holds, waiting up to 3 s for it to hold one."""
        assert self.probe is not None
        deadline = time.monotonic() + 3.0
        while life.alive and time.monotonic() < deadline:
            held = self.probe.held_by(self._owned_by(life))
            if held:
                return held
            time.sleep(0.1)
        return []

    def _settle_phase(self) -> None:
        """No more faults: disarm, wait for every task to end terminal or parked."""
        assert self.probe is not None
        self.state.phase = "settle"
        # a process armed before the last fault would still kill itself: end it now, once
        for _ in range(3):
            for role in ROLES:
                life = self.sup[role].wait_ready(30)
                if life is not None and life.crashpoint:
                    self._kill_now(role, life)
        self.state.last_fault_at = time.time()
        self.say(f"faults over after {self._kills()} kills; settling (≤ {self.o.settle_s:g}s)")
        self._await_settled()

    def _await_settled(self) -> bool:
        """Wait up to --settle seconds for every task to settle, and record how long it took
        after the last fault."""
        deadline = time.monotonic() + self.o.settle_s
        while time.monotonic() < deadline:
            self._check_supervisors()
            statuses = self._statuses()
            if statuses is not None and self._settled(statuses):
                self.state.settled_after_s = time.time() - self.state.last_fault_at
                took = self.state.settled_after_s
                self.say(f"every task settled {took:.1f}s after the last fault")
                return True
            time.sleep(0.5)
        self.state.settled_after_s = None
        self.say(f"[red]tasks did not settle within {self.o.settle_s:g}s[/]")
        return False

    def _statuses(self) -> Counter[str] | None:
        """Tasks per status, or None when the store cannot say right now (a busy moment must
        not end the run)."""
        assert self.probe is not None
        try:
            return self.probe.statuses()
        except OrchError:
            return None

    def _history(self) -> checks.History:
        assert self.probe is not None
        return checks.load_history(self.probe.store)

    def _shut_down(self) -> list[str]:
        """SIGTERM both processes at once and wait for them."""
        self.state.phase = "checks"
        if self.person is not None:
            self.person.halt()
        problems: list[str] = []
        grace = self.o.tuning().kill_grace_s + 20

        def stop(s: Supervised) -> None:
            problems.extend(s.stop(grace))

        threads = [threading.Thread(target=stop, args=(s,)) for s in self.sup.values()]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if self.monitor is not None:
            self.monitor.stop()
        return problems

    def _tear_down(self) -> None:
        """Whatever happened, even an interrupt: no process of this run outlives it. The
        orch processes go first; every step runs even if one before it failed."""
        if self.state.phase != "checks":
            self.state.phase = "teardown"
        steps: list[Callable[[], object]] = [s.request_stop for s in self.sup.values()]
        steps += [lambda s=s: s.stop(5.0) for s in self.sup.values()]  # type: ignore[misc]
        if self.monitor is not None:
            steps.append(self.monitor.stop)  # before its record of children is read
        steps.append(lambda: end_leftovers(self.table, self.lives(), self.monitor))
        steps += self._more_teardown()
        if self.person is not None:
            steps.append(self.person.halt)
        if self.api is not None:
            steps.append(self.api.close)
        if self.probe is not None:
            steps.append(self.probe.close)
        for step in steps:
            try:
                step()
            except BaseException as exc:  # keep going: the next step may end a process
                self.say(f"[red]clean-up step failed:[/] {exc!r}")

    # -- the verdict -------------------------------------------------------------------------

    def _verdict(
        self, at_settle: checks.History, shutdown_problems: list[str], elapsed_s: float
    ) -> ChaosResult:
        assert self.lab is not None and self.probe is not None and self.monitor is not None
        time.sleep(0.5)  # let the last children of the stopped processes finish exiting
        zombies = checks.find_zombies(self.table, [life.identity for life in self.lives()])
        zombies += leftover_children(self.monitor, zombies)
        history = self._history()
        sent = checks.notifications({life.name: life.stderr_lines() for life in self.lives()})
        open_runs = [(r.id, r.pid, r.started_at) for r in history.runs if r.ended_at is None]
        findings = [
            checks.check_irreversible(self.lab.remotes(), self.lab.deploy_logs(), history),
            checks.check_landed(self.lab.remotes(), history),
            checks.check_forward(self.lab.remotes(), self.lab.deploy_logs(), history),
            checks.check_lost(history),
            checks.check_leases(at_settle, self.o.sweep_s),
            checks.check_zombies(zombies, self.monitor.zombies_during_run),
            checks.check_history(history),
            checks.check_repo_limits(
                history, self.lab.limits(), self.monitor.open_run_ends(open_runs)
            ),
            checks.check_stops(history, T_CANCEL_S),
            checks.check_keys(history, sent),
            bounds(self.monitor, self.lives(), self._fence_wait_s),
            *self._more_findings(history),
        ]
        figures = self._figures(findings, elapsed_s)
        self._more_figures(figures)
        reasons = [f"{f.name} broken: {f.violations[0]}" for f in findings if not f.ok]
        reasons += self._run_problems(shutdown_problems)
        return ChaosResult(
            not reasons,
            reasons,
            figures,
            findings,
            self.lab.root,
            self.seed,
            self.o.kills,
            self._outside_report(),
        )

    def _run_problems(self, shutdown_problems: list[str]) -> list[str]:
        out = list(shutdown_problems) + list(self.state.unexpected)
        if self._kills() < self.o.kills:
            out.append(f"only {self._kills()} kills of the {self.o.kills} asked for")
        if self.state.settled_after_s is None:
            out.append(f"tasks did not settle within {self.o.settle_s:g}s of the last fault")
        return out

    def _figures(self, findings: list[checks.Finding], elapsed_s: float) -> dict[str, Any]:
        assert self.monitor is not None and self.person is not None
        f = {finding.name: finding.figures for finding in findings}
        kills = self.state.kills
        points = Counter(k.point for k in kills if k.how == "crashpoint")
        return {
            "elapsed_s": round(elapsed_s, 1),
            "runs": len(self.lives()),
            "kills": len(kills),
            "kills_at_crash_points": sum(points.values()),
            "kills_random": sum(1 for k in kills if k.how == "random"),
            "kills_by_point": dict(sorted(points.items())),
            "armed_not_reached": sum(
                1 for life in self.lives() if life.crashpoint and life.end == "sigkill"
            ),
            "pauses": len(self.state.pauses),
            "paused_jobs_reclaimed": self.monitor.count("pause", "reclaimed"),
            "paused_jobs_finished_by_holder": self.monitor.count("pause", "finished"),
            "tickets_filed": self.state.filed,
            "tasks": f["I2/I8"]["by_status"],
            "parked_reasons": f["I2/I8"]["parked_reasons"],
            "duplicates": f["I1"]["duplicates"] + f["I7"]["duplicate_keys"],
            "merges": f["I1"]["merges"],
            "deploys": f["I1"]["deploys"],
            "lost": f["I2/I8"]["lost"],
            "zombies": f["I3 zombies"]["zombies"],
            "children_seen": self.monitor.children_seen(),
            "longest_orphan_s": round(self.monitor.longest_orphan_s(), 2),
            "stops": f["I6"],
            **self.person.figures(),
            "settled_after_s": _round(self.state.settled_after_s),
            "notifications_repeated": f["I7"]["notifications_repeated"],
            "runs_without_end_skipped": f["I5"]["runs_without_end_skipped"],
            "repo_peaks": f["I5"]["peak"],
            "monitor_errors": dict(self.monitor.errors),
            "filing_refusals": self.state.refusals,
            **{k: _round(v) for k, v in f["I8/F6"].items()},
        }


def settled(statuses: Counter[str]) -> bool:
    """Every task terminal or parked (and at least one task)."""
    return sum(statuses.values()) > 0 and all(TaskStatus(s) in checks.SETTLED for s in statuses)


def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def run_chaos(options: ChaosOptions, say: Say) -> ChaosResult:
    if options.world == "plane-gitea":
        from orch.chaos.outside import OutsideHarness

        return OutsideHarness(options, say).run()
    return Harness(options, say).run()
