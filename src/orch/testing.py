"""Test support shipped with orch: memory adapters, factories, a steppable app, and the scripted
model server (`orch.modelserver`) that the real `claude` and `codex` CLIs talk to in tests.

Tests build their own settings and hand these fakes to the code under test; nothing is patched.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from orch import crashpoints
from orch.adapters.agents.scripted_main import DEFAULTS as SCRIPTED_FILES
from orch.adapters.forges.memory import MemoryForge, Snapshot
from orch.adapters.notifiers.log import MemoryNotifier
from orch.adapters.sandbox.policy import LandlockSandbox
from orch.adapters.store.memory import MemoryStore
from orch.adapters.store.sql import SqlStore
from orch.bootstrap import workers
from orch.config import PlaneStates
from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.errors import NotFound
from orch.domain.failures import Trouble
from orch.domain.ledger import Budget, Metered, Usage, UsageFrom
from orch.domain.model import Claim, Task
from orch.domain.states import Stage
from orch.modelserver import Edit, Fault, ModelServer, Say, Script, Shell, Turn, Write
from orch.modelserver import Usage as ModelUsage
from orch.ports import (
    Agent,
    AgentReport,
    AgentRequest,
    CommandRunner,
    DeployTarget,
    Notifier,
    ProcessTable,
    RepoSettings,
    Sandbox,
    Store,
)
from orch.services.breaker import Breakers
from orch.services.dispatcher import Dispatcher, DispatcherSettings
from orch.services.engine import Engine, EngineSettings
from orch.services.intake import Intake
from orch.services.tracking import ProjectRules

__all__ = [
    "Edit",
    "Fault",
    "InstantAgent",
    "MemoryForge",
    "MemoryNotifier",
    "MemoryProcessTable",
    "MemoryRepos",
    "ModelServer",
    "ModelUsage",
    "Rig",
    "Say",
    "Script",
    "Shell",
    "SimClock",
    "SimulatedCrash",
    "Turn",
    "Write",
    "crash_at",
    "memory_store",
    "rig",
]


class SimClock:
    """A clock that moves only when told: the store reads it in place of the database's. Given
    as a client's `sleep`, it records each wait (`slept`), moves on by it, and does the next of
    what the test set to happen meanwhile."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []
        self.meanwhile: list[Callable[[], object]] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        if self.meanwhile:
            self.meanwhile.pop(0)()


def memory_store(clock: Callable[[], float] | None = None) -> MemoryStore:
    """The store in plain Python structures: the same contract as the SQL stores, no SQL."""
    return MemoryStore(clock)


def sql_memory_store(clock: Callable[[], float] | None = None) -> SqlStore:
    """The SQL store on an in-memory SQLite database: for tests that damage its rows as a fault
    outside orch would."""
    store = SqlStore("sqlite://", clock=clock)
    store.migrate()
    return store


class SimulatedCrash(BaseException):
    """Raised at an armed crash point: the job is abandoned mid-step, as if orch died there.
    A BaseException, so no `except Exception` in orch catches it."""


@contextlib.contextmanager
def crash_at(spec: str) -> Iterator[None]:
    """Within the block, reaching crash point `name[:nth]` raises SimulatedCrash."""

    def crash(name: str) -> None:
        raise SimulatedCrash(name)

    crashpoints.arm(spec, crash)
    try:
        yield
    finally:
        crashpoints.disarm()


class _Finished:
    """An agent process that already ended: it did its work when it started."""

    pid: int | None = None

    def __init__(
        self,
        code: int | None,
        log_path: Path,
        spent: Usage | None = None,
        session: str | None = None,
    ) -> None:
        self.code = code
        self.log_path = log_path  # what the test's `outcome` wrote there is its output
        self.killed = False
        self.spent = spent or Usage()
        self.session = session

    def wait(self, timeout_s: float) -> int | None:
        return self.code

    def kill(self, grace_s: float) -> int | None:
        self.killed = True
        crashpoints.hit("agent.sigterm")
        if self.code is None:
            self.code = -9
        return self.code

    def usage(self) -> Usage:
        return self.spent

    def usage_from(self) -> UsageFrom | None:
        return None

    def limit(self, budget: Budget) -> None:
        return None  # it reports no usage to hold to one

    def retrying(self) -> bool:
        return False

    def trouble(self) -> Trouble | None:
        return None

    def close(self) -> None:
        return None

    def output_bytes(self) -> int:
        return 0

    def dropped_bytes(self) -> int:
        return 0

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def report(self) -> AgentReport | None:
        if self.session is None:
            return None
        return AgentReport(self.code == 0, session=self.session)


class InstantAgent:
    """An agent that works in this process, at once: it writes what each stage's gates expect
    (the scripted agent's defaults) and ends with the code `outcome(request)` returns; None
    means it hangs until it is killed. For tests that drive thousands of jobs."""

    def __init__(
        self,
        name: str = "default",
        outcome: Callable[[AgentRequest], int | None] | None = None,
        spends: Usage | None = None,
        sessions: bool = False,
        env_names: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.env_names = env_names
        self.run_as = None
        self.meters = frozenset({"tokens", "usd"})
        self.outcome = outcome or (lambda _req: 0)
        self.spends = spends  # what each run reports it spent
        self.sessions = sessions  # whether runs report a conversation, named for their request
        self.started: list[AgentRequest] = []

    def preflight(self) -> str | None:
        return None

    def usage_from_log(self, log_path: Path) -> Metered | None:
        return None  # it leaves no log

    def start(self, request: AgentRequest) -> _Finished:
        self.started.append(request)
        code = self.outcome(request)
        if code == 0:
            for rel, content in SCRIPTED_FILES.get(request.stage.value, {}).items():
                for k, v in (("{{key}}", request.task_key), ("{{title}}", request.task_key)):
                    rel = rel.replace(k, v)
                    content = content.replace(k, v)
                path = request.workdir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content.replace("{{body}}", ""), encoding="utf-8")
        session = request.resume or f"{request.task_key}:{request.stage}:{request.attempt}"
        return _Finished(code, request.log_path, self.spends, session if self.sessions else None)


class MemoryProcessTable:
    """A process table where the test says which incarnations have died."""

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.count = 0
        self.reaped: list[str] = []

    def incarnation(self) -> str:
        self.count += 1
        return f"memory:{self.count}:1:incarnation{self.count}"

    def is_dead(self, incarnation: str) -> bool:
        return incarnation in self.dead

    def reap_orphans(self, live: str, grace_s: float) -> list[int]:
        return []


class MemoryRepos:
    def __init__(self, *repos: RepoSettings) -> None:
        self._repos = {r.name: r for r in repos}

    def get(self, name: str) -> RepoSettings:
        try:
            return self._repos[name]
        except KeyError:
            raise NotFound(f"unknown repository {name!r}") from None

    def limit(self, name: str) -> int:
        repo = self._repos.get(name)
        return repo.max_active if repo else 0


@dataclass
class Rig:
    """An engine wired to memory adapters, stepped with `run_until_idle()`."""

    store: Store
    forge: MemoryForge
    repos: MemoryRepos
    notifier: MemoryNotifier
    engine: Engine
    dispatcher: Dispatcher
    intake: Intake
    pipeline: pl.Pipeline
    logs: Path
    make: Callable[[], tuple[Engine, Dispatcher]] = field(repr=False)
    processes: ProcessTable | None = None

    def run_until_idle(self) -> int:
        return self.dispatcher.run_until_idle()

    def restart(self) -> Dispatcher:
        """orch dies and starts again: a new incarnation with a new engine and dispatcher on
        the same store and forge. With a process table, the old incarnation is known dead."""
        if isinstance(self.processes, MemoryProcessTable):
            self.processes.dead.add(self.dispatcher.owner)
        self.engine, self.dispatcher = self.make()
        return self.dispatcher

    def crash_a_worker(self) -> Claim:
        """A worker claims the next runnable job and dies: its lease has already expired, so
        the next sweep requeues the job, and whatever it wrote is left as it was."""
        claim = self.store.claim("crashed:1:gone", -1, self.repos.limit)
        assert claim is not None, "no runnable job to crash on"
        return claim

    def close(self) -> None:
        self.store.close()
        self.forge.close()
        shutil.rmtree(self.logs, ignore_errors=True)


def rig(
    agents: Mapping[str, Agent],
    *,
    pipeline: pl.Pipeline | None = None,
    files: Snapshot | None = None,
    repo: RepoSettings | None = None,
    store: Store | None = None,
    notifier: MemoryNotifier | None = None,
    environ: Mapping[str, str] | None = None,
    max_attempts: int = 3,
    kill_grace_s: float = 10.0,
    cancel_bound_s: float = 1860.0,
    clock: Callable[[], float] | None = None,
    processes: ProcessTable | None = None,
    breakers: Breakers | None = None,
    sandbox: Sandbox | None = None,
    runner: CommandRunner | None = None,
    reporter: Notifier | None = None,
    heartbeat_s: float = 5.0,
    poll_interval_s: float = 1.0,
    sweep_interval_s: float = 10.0,
) -> Rig:
    """One repository named "app" (unless `repo` says otherwise), the given agents, backoff off."""
    repo = repo or RepoSettings(
        name="app",
        test_command="true",
        deploy={
            "staging": DeployTarget("true"),
            "production": DeployTarget("true"),
        },
    )
    store = store or memory_store(clock)
    forge = MemoryForge({repo.name: files or {"README.md": b"app\n"}})
    repos = MemoryRepos(repo)
    notifier = notifier or MemoryNotifier()
    logs = Path(tempfile.mkdtemp(prefix="orch-logs-"))
    chosen = pipeline or pl.default_pipeline()
    # agents and gates run confined as in production: they may read the whole host here
    confinement = sandbox or LandlockSandbox(protect=())

    def make() -> tuple[Engine, Dispatcher]:
        # wired as orch serve wires its workers
        return workers(
            store=store,
            forge=forge,
            agents=agents,
            repos=repos,
            notifier=notifier,
            sandbox=confinement,
            engine=EngineSettings(
                logs_dir=logs,
                homes_dir=logs / "homes",
                backoff_base_s=0.0,
                heartbeat_s=heartbeat_s,
                kill_grace_s=kill_grace_s,
            ),
            dispatcher=DispatcherSettings(
                slots=1,
                max_attempts=max_attempts,
                cancel_bound_s=cancel_bound_s,
                poll_interval_s=poll_interval_s,
                sweep_interval_s=sweep_interval_s,
            ),
            processes=processes,
            environ=environ,
            breakers=breakers,
            runner=runner,
            reporter=reporter,
        )

    engine, dispatcher = make()
    # a STOP reaches the engine of the day, as it reaches orch serve's own
    intake = Intake(
        store, repos, lambda _repo: chosen, lambda task_id: rig.engine.stop_asked(task_id)
    )
    rig = Rig(
        store, forge, repos, notifier, engine, dispatcher, intake, chosen, logs, make, processes
    )
    return rig


# -- a worker's writes, for tests that drive a store by hand ------------------------------------


def advance(
    store: Store,
    claim: Claim,
    expected: Stage,
    decision: pl.Decision,
    actor: str,
    read: Sequence[int] = (),
) -> Task:
    """Move a claimed task as its worker would: the domain's change for `decision`, from the
    stage the worker believes the task is at, written by the store."""
    task = replace(store.get_task(claim.task_id), stage=expected)
    store.apply(claim, machine.advance(task, decision, actor, tuple(read)))
    return store.get_task(claim.task_id)


def retry(
    store: Store, claim: Claim, reason: str, backoff_s: float, *, counts: bool = True
) -> None:
    store.apply(claim, machine.retry(reason, backoff_s, counts=counts))


def supersede(store: Store, claim: Claim) -> None:
    store.apply(claim, machine.nothing_to_do(store.get_task(claim.task_id)))


def set_timer(store: Store, claim: Claim, delay_s: float) -> None:
    store.apply(claim, machine.timer(store.get_task(claim.task_id), delay_s))


def project_rules(project: str, report: Mapping[str, str], repo: str = "app") -> ProjectRules:
    """A tracker project's rules, with the state names orch's settings default to."""
    s = PlaneStates()
    return ProjectRules(
        project, repo, s.start, s.approve, s.reject, s.confirm_deploy, s.stop, dict(report)
    )
