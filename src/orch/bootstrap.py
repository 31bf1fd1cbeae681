"""The composition root: the one place where adapters are chosen and wired."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from orch import outside
from orch.adapters.agents.claude_code import ClaudeCodeAgent
from orch.adapters.agents.codex import CodexAgent, Provider
from orch.adapters.agents.command import CommandAgent
from orch.adapters.agents.proxy import MeteringProxy
from orch.adapters.agents.scripted import ScriptedAgent
from orch.adapters.forges.local_git import LocalGitForge, check_writable
from orch.adapters.notifiers.telegram import TelegramBot, TelegramNotifier
from orch.adapters.process import Launchers, LocalRunner
from orch.adapters.proctable import LinuxProcessTable
from orch.adapters.sandbox.policy import LandlockSandbox
from orch.adapters.store.sql import SqlStore, normalise_url, sqlite_path
from orch.config import (
    ClaudeCodeAgentSettings,
    CommandAgentSettings,
    OverTimeSettings,
    ScriptedAgentSettings,
    Settings,
    TelegramSettings,
)
from orch.domain import pipeline as pl
from orch.domain.errors import (
    AlreadyRunning,
    ConfigError,
    NotFound,
    OrchError,
    StoreUnavailable,
)
from orch.domain.ledger import Budget, Prices
from orch.domain.periods import OverTime, Period
from orch.outside import Background
from orch.pipeline_file import PIPELINE_PATH, budget_problems, parse
from orch.ports import (
    Agent,
    CommandRunner,
    DeployTarget,
    Forge,
    Notifier,
    ProcessTable,
    PullRequests,
    Repos,
    RepoSettings,
    Sandbox,
    Store,
    Tracker,
)
from orch.services.breaker import Breakers
from orch.services.deliveries import Deliveries
from orch.services.dispatcher import Dispatcher, DispatcherSettings
from orch.services.engine import Engine, EngineSettings
from orch.services.intake import Intake
from orch.services.over_time import over_time
from orch.services.pipelines import Pipelines
from orch.services.reactions import ForgeSync
from orch.services.reporting import TrackerReport
from orch.services.tracking import TrackerSync
from orch.services.waits import Waits

log = logging.getLogger("orch.bootstrap")


class ConfiguredRepos:
    def __init__(self, settings: Settings) -> None:
        self._repos = {
            r.name: RepoSettings(
                name=r.name,
                default_branch=r.default_branch,
                test_command=r.test_command,
                key_prefix=r.key_prefix,
                max_active=r.max_active,
                deploy={k: DeployTarget(v.command, v.check) for k, v in r.deploy.items()},
                sandbox=r.sandbox,
                protect=r.protect,
                protected_paths=tuple(r.protected_paths),
                budgets=budgets_per_period(r.budgets),
            )
            for r in settings.repos
        }

    def get(self, name: str) -> RepoSettings:
        try:
            return self._repos[name]
        except KeyError:
            known = ", ".join(sorted(self._repos)) or "none configured"
            raise NotFound(f"unknown repository {name!r} (known: {known})") from None

    def limit(self, name: str) -> int:
        repo = self._repos.get(name)
        return repo.max_active if repo else 0  # fail closed for a repository no longer configured


def budgets_per_period(budgets: OverTimeSettings) -> dict[Period, Budget]:
    """Budgets over time, as the settings give them, per period."""
    out = {}
    for period in Period:
        given = getattr(budgets, period.value)
        if given is not None and (given.usd is not None or given.tokens is not None):
            out[period] = Budget(given.usd, given.tokens)
    return out


def build_agents(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    launchers: Launchers | None = None,
    proxy: MeteringProxy | None = None,
) -> dict[str, Agent]:
    """The agents the settings name; with `launchers`, each starts through one started ahead
    when one is ready. The agents metered by orch share `proxy` (made here if not given; it
    starts with the first run it meters)."""
    environ = os.environ if environ is None else environ
    proxy = proxy or MeteringProxy()
    agents: dict[str, Agent] = {}
    for name, cfg in settings.agents.items():
        if isinstance(cfg, ScriptedAgentSettings):
            agents[name] = ScriptedAgent(name, cfg.playbook, launchers=launchers)
            continue
        prices = Prices(**cfg.prices.model_dump()) if cfg.prices else None
        if isinstance(cfg, CommandAgentSettings):
            agents[name] = CommandAgent(
                name, cfg.command, cfg.env, cfg.pass_env, cfg.run_as, launchers=launchers
            )
        elif isinstance(cfg, ClaudeCodeAgentSettings):
            agents[name] = ClaudeCodeAgent(
                name,
                command=cfg.command,
                model=cfg.model,
                permission_mode=cfg.permission_mode,
                allowed_tools=cfg.allowed_tools,
                max_turns=cfg.max_turns,
                extra_args=cfg.extra_args,
                env=cfg.env,
                pass_env=cfg.pass_env,
                prices=prices,
                run_as=cfg.run_as,
                environ=environ,
                launchers=launchers,
                proxy=proxy if cfg.proxy else None,
            )
        else:
            p = cfg.provider
            agents[name] = CodexAgent(
                name,
                command=cfg.command,
                model=cfg.model,
                sandbox=cfg.sandbox,
                provider=Provider(p.name, p.base_url, p.env_key, p.options) if p else None,
                config=cfg.config,
                extra_args=cfg.extra_args,
                env=cfg.env,
                pass_env=cfg.pass_env,
                prices=prices,
                run_as=cfg.run_as,
                environ=environ,
                launchers=launchers,
                proxy=proxy if cfg.proxy else None,
            )
    return agents


@dataclass
class App:
    settings: Settings
    store: Store
    forge: Forge
    repos: ConfiguredRepos
    agents: dict[str, Agent]
    engine: Engine
    dispatcher: Dispatcher
    intake: Intake
    notifier: Notifier
    # the hosted tracker's deliveries and polls, and its webhook's secret ("" refuses them all)
    tracker_sync: TrackerSync | None = None
    tracker_secret: str = ""
    # the forge's webhook deliveries (its pull requests' reactions), and its webhook's secret
    forge_sync: ForgeSync | None = None
    forge_secret: str = ""
    telegram: TelegramBot | None = None
    # Telegram's updates, when they come by webhook: stored once, worked in turn
    telegram_updates: Deliveries | None = None
    background: Background = field(default_factory=Background)
    # what build() opened for the services outside (HTTP clients), closed last
    closers: list[Callable[[], None]] = field(default_factory=list)
    _lock: IO[str] | None = field(default=None, repr=False)
    _workspace_lock: IO[str] | None = field(default=None, repr=False)
    # each repository's pipeline as its default branch holds it, kept current in the background
    pipelines: Pipelines = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pipelines = Pipelines(
            lambda: [r.name for r in self.settings.repos],
            lambda repo: self.forge.branch_head(repo, self.repos.get(repo).default_branch),
            self._read_pipeline,
        )

    def pushed(self, repo: str, branch: str) -> None:
        """The forge says a push moved `branch`: the default branch's pipeline is looked at."""
        if branch == self.repos.get(repo).default_branch:
            self.pipelines.moved(repo)

    def pipeline_for(self, repo: str) -> pl.Pipeline:
        self.repos.get(repo)
        return self.pipelines.get(repo)

    def _read_pipeline(self, repo: str) -> pl.Pipeline:
        text = self.forge.read_default_file(repo, PIPELINE_PATH)
        if text is None:
            pipeline = pl.default_pipeline()
            missing = {s.agent for s in pipeline.stages if s.agent and s.agent not in self.agents}
            if missing:
                raise ConfigError(
                    f"the built-in pipeline needs agent(s) {', '.join(sorted(missing))}"
                )
            return pipeline
        source = f"{repo}:{PIPELINE_PATH}"
        pipeline = parse(text, source, self.agents.keys())
        self._check_budgets(pipeline, source)
        return pipeline

    def _check_budgets(self, pipeline: pl.Pipeline, source: str) -> None:
        problems = budget_problems(pipeline, self.agents, source)
        if problems:
            raise ConfigError(problems[0])

    def lock_for_serving(self) -> None:
        """One `orch serve` per SQLite file; PostgreSQL allows several, fenced by leases."""
        path = sqlite_path(self.store.url)  # a memory store or PostgreSQL has no file
        if path is None:
            return
        lock_path = path.with_name(path.name + ".serve.lock")
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(f"another orch serve is already using {path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def lock_workspace(self) -> None:
        """One process running workers per workspace root: two would share worktrees, and two
        agents must never work in one worktree. Give each serve or worker its own root."""
        root = Path(self.settings.workspace)
        handle = open(root / ".orch-workers.lock", "a+")  # noqa: SIM115 - held while running
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(
                f"another orch process runs workers in {root}; give each serve or worker its"
                " own workspace_root"
            ) from None
        self._workspace_lock = handle

    def start_listening(self) -> None:
        """Start what listens outside orch while it serves: the tracker's deliveries and polls,
        Telegram's updates (registering its webhook, when they come that way)."""
        url = next(
            (
                n.webhook_url
                for n in self.settings.notifiers
                if isinstance(n, TelegramSettings) and n.updates == "webhook"
            ),
            "",
        )
        if self.telegram is not None and url:
            try:
                self.telegram.set_webhook(url)
            except OrchError as exc:
                log.error("Telegram's webhook could not be set to %s: %s", url, exc)
        self.background.start()

    def over_time(self, repo: str | None = None) -> tuple[OverTime, ...]:
        """The budgets over time with their periods' spending: one repository's and all's, or
        (without `repo`) every repository's and all's."""
        tools = self.engine.tools
        every, live = tools.settings.budgets, tools.live_spending()
        if repo is not None:
            try:
                own = self.repos.get(repo).budgets
            except NotFound:  # a repository no longer configured has none
                own = {}
            return over_time(self.store, repo, own, every, live=live)
        out: list[OverTime] = []
        for r in self.settings.repos:
            out += over_time(self.store, r.name, self.repos.get(r.name).budgets, {}, live=live)
        return (*out, *over_time(self.store, None, {}, every, live=live))

    def waits(self) -> Waits:
        """What holds up the active tasks that are not moving, as this process sees them."""
        return Waits(
            self.store,
            self.repos.limit,
            self.engine.breakers.states(),
            self.engine.provider_retries,
        )

    def close(self) -> None:
        self.background.stop()
        self.dispatcher.stop()
        for close in self.closers:
            try:
                close()
            except Exception:  # one that fails must not keep the rest open
                log.exception("closing %s failed", close)
        self.store.close()
        for lock in (self._lock, self._workspace_lock):
            if lock is not None:
                lock.close()
        self._lock = self._workspace_lock = None


def protected_paths(settings: Settings, logs: Path) -> list[Path]:
    """What no agent or gate may read: the store (and its journal files), the settings file,
    orch's logs (a run gets its own task's back) and the other tasks' homes."""
    paths = [logs, Path(settings.homes)]
    store = sqlite_path(settings.store_url)
    if store is not None:
        paths += [store.with_name(store.name + suffix) for suffix in STORE_FILES]
    if settings.source_file is not None:
        paths.append(settings.source_file)
    return paths


# a SQLite store's own file and the files SQLite and orch keep beside it
T = TypeVar("T")

STORE_FILES = ("", "-wal", "-shm", "-journal", ".serve.lock")


def store_at(url: str, *, pool_size: int = 2) -> Store:
    """The store at `url` (not migrated), for a process that only watches it."""
    return _opened(url, lambda: SqlStore(url, pool_size=pool_size))


def open_store(settings: Settings, clock: Callable[[], float] | None = None) -> Store:
    """The store the settings name (not migrated). `clock` replaces the database's clock: a
    simulated one, for tests on SQLite."""
    return _sql_store(settings, clock)


def _sql_store(settings: Settings, clock: Callable[[], float] | None = None) -> SqlStore:
    return _opened(
        settings.store_url,
        lambda: SqlStore(
            settings.store_url,
            busy_timeout_ms=settings.store.busy_timeout_ms,
            synchronous=settings.store.synchronous,
            pool_size=settings.worker.slots + 4,  # each slot, its lease heartbeat, the API
            clock=clock,
        ),
    )


def _opened(url: str, make: Callable[[], T]) -> T:
    """`make()`, with what the database or its driver says on the way in as one line: a file
    that is not a database, a driver that is not installed, a URL that does not parse."""
    try:
        return make()
    except ImportError as exc:
        raise StoreUnavailable(
            f"cannot open the store at {_shown(url)}: its driver {exc.name or ''} is not"
            " installed (postgresql:// URLs use psycopg 3, which orch installs)"
        ) from exc
    except sa_exc.ArgumentError as exc:
        raise StoreUnavailable(f"invalid store URL {url!r}: {exc}") from exc
    except sa_exc.DBAPIError as exc:
        raise StoreUnavailable(f"cannot open the store at {_shown(url)}: {_said(exc)}") from exc


def open_migrated_store(settings: Settings) -> Store:
    """The store the settings name, for a command that only reads it: one that was never
    migrated (or a SQLite file that does not exist) is refused, and its schema is read before
    the store is opened, read-only, so neither a file nor a table is made, nor a journal
    switched."""
    url = settings.store_url
    shown = _shown(url)
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        raise StoreUnavailable(needs_migrate(shown))
    state = _opened(url, lambda: migration_state(url, path))
    if state != "current":
        raise StoreUnavailable(
            needs_migrate(shown)
            if state == "behind"
            else f"the store at {shown} was migrated by a newer orch ({state}); upgrade orch"
        )
    return _sql_store(settings)


def needs_migrate(shown_url: str) -> str:
    return f"the store at {shown_url} needs `orch migrate`"


def migration_state(url: str, sqlite_file: Path | None) -> str:
    """'current' (at this orch's head), 'behind' (never migrated, or by an older orch), or the
    revision it is at when this orch does not know it (a newer orch migrated it). Reads only."""
    from orch.adapters.store.revisions import read_only_engine, schema_at

    schema = schema_at(read_only_engine(normalise_url(url), sqlite_file))
    if schema.latest:
        return "current"
    return f"revision {', '.join(schema.unknown)}" if schema.newer else "behind"


def _sqlite_file(url: str) -> Path | None:
    try:
        return sqlite_path(url)
    except sa_exc.ArgumentError as exc:
        raise StoreUnavailable(f"invalid store URL {url!r}: {exc}") from exc


def _shown(url: str) -> str:
    """The URL as orch shows a store's: without its password."""
    try:
        return sa.engine.make_url(normalise_url(url)).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return repr(url)


def _said(exc: sa_exc.DBAPIError) -> str:
    """The first line the database said."""
    lines = str(exc.orig or exc).strip().splitlines()
    return lines[0] if lines else type(exc.orig or exc).__name__


def workers(
    *,
    store: Store,
    forge: Forge,
    agents: Mapping[str, Agent],
    repos: Repos,
    notifier: Notifier,
    sandbox: Sandbox,
    engine: EngineSettings,
    dispatcher: DispatcherSettings,
    runner: CommandRunner | None = None,
    processes: ProcessTable | None = None,
    environ: Mapping[str, str] | None = None,
    breakers: Breakers | None = None,
    reporter: Notifier | None = None,
    launchers: Launchers | None = None,
) -> tuple[Engine, Dispatcher]:
    """The engine and the dispatcher that runs it: one incarnation of orch's workers. `orch
    serve`, `orch worker` and the tests' rigs are all wired here."""
    built = Engine(
        store=store,
        forge=forge,
        agents=agents,
        repos=repos,
        runner=runner or LocalRunner(launchers),
        notifier=notifier,
        sandbox=sandbox,
        settings=engine,
        environ=environ,
        breakers=breakers,
        reporter=reporter,
    )
    return built, Dispatcher(
        store,
        built,
        repos.limit,
        dispatcher,
        alert=notifier.notify,
        processes=processes,
        launchers=launchers,
    )


def build(
    settings: Settings,
    *,
    store: Store | None = None,
    forge: Forge | None = None,
    agents: Mapping[str, Agent] | None = None,
    runner: CommandRunner | None = None,
    processes: ProcessTable | None = None,
    clock: Callable[[], float] | None = None,
    notifier: Notifier | None = None,
    environ: Mapping[str, str] | None = None,
    sandbox: Sandbox | None = None,
    migrate: bool = True,
    tracker: Tracker | None = None,
) -> App:
    """The app the settings describe. Each dependency may be given instead of built from the
    settings: a store (the settings' own, on `clock` if one is given), forge, agents, command
    runner, process table, notifier, sandbox, tracker."""
    workspace = check_writable(Path(settings.workspace))
    logs = check_writable(Path(settings.logs))
    own_store = store is None
    store = store or open_store(settings, clock)
    opened: list[Callable[[], None]] = []  # closed with the app, last
    try:
        if migrate:
            store.migrate()
        return _build(
            settings,
            store,
            opened,
            workspace=workspace,
            logs=logs,
            forge=forge,
            agents=agents,
            runner=runner,
            processes=processes,
            notifier=notifier,
            environ=environ,
            sandbox=sandbox,
            tracker=tracker,
        )
    except BaseException:
        # a setting found wrong half way leaves no client, connection or store open behind it
        for close in reversed([*opened, *([store.close] if own_store else [])]):
            with contextlib.suppress(Exception):
                close()
        raise


def _build(
    settings: Settings,
    store: Store,
    opened: list[Callable[[], None]],
    *,
    workspace: Path,
    logs: Path,
    forge: Forge | None,
    agents: Mapping[str, Agent] | None,
    runner: CommandRunner | None,
    processes: ProcessTable | None,
    notifier: Notifier | None,
    environ: Mapping[str, str] | None,
    sandbox: Sandbox | None,
    tracker: Tracker | None,
) -> App:
    repos = ConfiguredRepos(settings)
    env = os.environ if environ is None else environ
    if tracker is None:
        plane = outside.build_tracker(settings, env)
        if plane is not None:
            tracker = plane
            opened.append(plane.close)
    rules = outside.project_rules(settings.tracker) if settings.tracker is not None else []
    if forge is None:
        gitea = outside.build_forge(settings, env, workspace)
        if gitea is not None:
            forge = gitea
            opened.append(gitea.close)
    if forge is None:
        forge = LocalGitForge(
            workspace,
            {r.name: (r.remote, r.default_branch) for r in settings.repos},
            {r.name: r.exclude for r in settings.repos},
        )
    launchers = Launchers()
    proxy = MeteringProxy()
    opened.append(proxy.stop)
    all_agents = (
        dict(agents) if agents is not None else build_agents(settings, environ, launchers, proxy)
    )
    telegram: TelegramNotifier | None = None
    if notifier is None:
        channels = outside.build_notifiers(settings, env)
        notifier, telegram = channels.notifier, channels.telegram
        opened.extend(channels.closers)
    reporter = TrackerReport(store, tracker, rules) if tracker is not None else None
    w = settings.worker
    engine, dispatcher = workers(
        store=store,
        forge=forge,
        agents=all_agents,
        repos=repos,
        notifier=notifier,
        sandbox=sandbox or LandlockSandbox(protected_paths(settings, logs), w.output_cap_bytes),
        engine=EngineSettings(
            logs_dir=logs,
            homes_dir=Path(settings.homes),
            lease_ttl_s=w.lease_ttl_s,
            heartbeat_s=w.heartbeat_s,
            kill_grace_s=w.kill_grace_s,
            backoff_base_s=w.backoff_base_s,
            backoff_max_s=w.backoff_max_s,
            agent_env_allow=tuple(settings.agent_env_allow),
            breaker_threshold=w.breaker_threshold,
            breaker_cooldown_s=w.breaker_cooldown_s,
            budgets=budgets_per_period(settings.budgets),
        ),
        dispatcher=DispatcherSettings(
            slots=w.slots,
            lease_ttl_s=w.lease_ttl_s,
            sweep_interval_s=w.sweep_interval_s,
            poll_interval_s=w.poll_interval_s,
            max_attempts=w.max_attempts,
            cancel_bound_s=w.cancel_bound_s,
            spare_worktrees=w.spare_worktrees,
            warm_launchers=w.warm_launchers,
        ),
        runner=runner,
        launchers=launchers,
        processes=processes or LinuxProcessTable(),
        environ=environ,
        reporter=reporter,
    )
    app = App(
        settings=settings,
        store=store,
        forge=forge,
        repos=repos,
        agents=all_agents,
        engine=engine,
        dispatcher=dispatcher,
        intake=Intake(store, repos, lambda repo: app.pipeline_for(repo), engine.stop_asked),
        notifier=notifier,
    )
    app.closers.extend(opened)
    refresh_s = settings.pipeline_refresh_s
    app.background.add(
        "pipelines", lambda stop: app.pipelines.run(stop, refresh_s), app.pipelines.nudge
    )
    if tracker is not None and settings.tracker is not None:
        resend = reporter.resend if reporter is not None else None
        sync = TrackerSync(store, tracker, app.intake, rules, also=resend)
        app.tracker_sync = sync
        app.tracker_secret = outside.webhook_secret(settings, env)
        interval = settings.tracker.poll_interval_s
        app.background.add(
            "tracker", lambda stop: sync.run(stop, interval), sync.deliveries.wake.set
        )
    if settings.forge is not None and isinstance(forge, PullRequests):
        reacting = ForgeSync(store, forge, forge, app.intake, app.pushed)
        app.forge_sync = reacting
        app.forge_secret = env.get(settings.forge.webhook_secret_env, "")
        app.background.add("forge", reacting.run, reacting.deliveries.wake.set)
    if telegram is not None:
        app.telegram = outside.telegram_bot(settings, telegram, app.intake, env)
        polling = any(
            isinstance(n, TelegramSettings) and n.updates == "poll" for n in settings.notifiers
        )
        if app.telegram is not None and polling:
            app.background.add("telegram", app.telegram.poll)
        elif app.telegram is not None:
            updates = Deliveries(store, "telegram", _answer_with(app.telegram))
            app.telegram_updates = updates
            app.background.add("telegram", updates.run, updates.wake.set)
    return app


def _answer_with(bot: TelegramBot) -> Callable[[str], str]:
    """What works a Telegram update stored from its webhook."""

    def answer(body: str) -> str:
        bot.handle_update(json.loads(body))
        return "answered"

    return answer
