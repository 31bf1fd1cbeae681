"""The services outside orch that it talks to, built from the settings: a hosted tracker (Plane),
a forge's API (Gitea) and the notifiers (log, a signed webhook, Telegram). Part of the
composition root (orch.bootstrap): their credentials are read here, from orch's own
environment, by the names the settings give, and go nowhere else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orch.adapters.forges.gitea import GiteaForge
from orch.adapters.notifiers.fanout import FanOut
from orch.adapters.notifiers.log import LogNotifier
from orch.adapters.notifiers.telegram import TelegramBot, TelegramNotifier
from orch.adapters.notifiers.webhook import WebhookNotifier
from orch.adapters.trackers.plane import PlaneTracker
from orch.config import (
    GiteaSettings,
    LogNotifierSettings,
    PlaneSettings,
    Settings,
    TelegramSettings,
    WebhookNotifierSettings,
)
from orch.domain.errors import ConfigError
from orch.ports import Notifier
from orch.services.intake import Intake
from orch.services.tracking import ProjectRules

log = logging.getLogger("orch.outside")


def credential(environ: Mapping[str, str], name: str, what: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise ConfigError(f"{what} needs ${name} in orch's environment, and it is not set")
    return value


def project_rules(settings: PlaneSettings) -> list[ProjectRules]:
    return [
        ProjectRules(
            project=p.id,
            repo=p.repo,
            start=p.states.start,
            approve=p.states.approve,
            reject=p.states.reject,
            confirm_deploy=p.states.confirm_deploy,
            stop=p.states.stop,
            report=dict(p.report),
        )
        for p in settings.projects
    ]


def check_projects(settings: Settings) -> None:
    """Every tracker project names a configured repository."""
    if settings.tracker is None:
        return
    names = {r.name for r in settings.repos}
    for p in settings.tracker.projects:
        if p.repo not in names:
            raise ConfigError(
                f"tracker project {p.id} names repository {p.repo!r}, which is not in repos"
            )


def build_tracker(settings: Settings, environ: Mapping[str, str]) -> PlaneTracker | None:
    if settings.tracker is None:
        return None
    check_projects(settings)
    plane = settings.tracker
    return PlaneTracker(
        plane.url,
        plane.workspace,
        credential(environ, plane.token_env, "the Plane tracker"),
        timeout_s=plane.timeout_s,
    )


def webhook_secret(settings: Settings, environ: Mapping[str, str]) -> str:
    """The tracker's webhook secret; "" when unset, and then every delivery is refused."""
    if settings.tracker is None:
        return ""
    return environ.get(settings.tracker.webhook_secret_env, "")


def build_forge(
    settings: Settings, environ: Mapping[str, str], workspace: Path
) -> GiteaForge | None:
    """The Gitea forge when one is configured: every repository's remote is on it."""
    if settings.forge is None:
        return None
    gitea: GiteaSettings = settings.forge
    base = gitea.url.rstrip("/") + "/"
    for r in settings.repos:
        if not r.remote.startswith(base):
            raise ConfigError(
                f"repository {r.name}: its remote {r.remote} is not on the Gitea at {gitea.url}"
                " (with a forge configured, every remote is an https URL on it)"
            )
    return GiteaForge(
        workspace,
        gitea.url,
        credential(environ, gitea.token_env, "the Gitea forge"),
        {r.name: (r.remote, r.default_branch) for r in settings.repos},
        {r.name: r.exclude for r in settings.repos},
        merge_style=gitea.merge_style,
        timeout_s=gitea.timeout_s,
    )


@dataclass
class Channels:
    """The notifiers the settings name, as one; the Telegram one among them, if any (its bot
    answers buttons and commands); and what closes their connections."""

    notifier: Notifier
    telegram: TelegramNotifier | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)


def build_notifiers(settings: Settings, environ: Mapping[str, str]) -> Channels:
    telegram: TelegramNotifier | None = None
    closers: list[Callable[[], None]] = []
    channels: list[tuple[str, Notifier]] = []
    try:
        for n, channel in enumerate(settings.notifiers):
            if isinstance(channel, LogNotifierSettings):
                channels.append(("log", LogNotifier()))
            elif isinstance(channel, WebhookNotifierSettings):
                secret = credential(environ, channel.secret_env, f"notifier {n + 1} (webhook)")
                hook = WebhookNotifier(channel.url, secret, timeout_s=channel.timeout_s)
                # named by its host: a hook's path may be its secret (Slack's are)
                channels.append((f"webhook:{urlsplit(channel.url).hostname}", hook))
                closers.append(hook.close)
            elif isinstance(channel, TelegramSettings):
                telegram = TelegramNotifier(
                    channel.api_url,
                    credential(environ, channel.token_env, "the Telegram notifier"),
                    channel.chats,
                    timeout_s=channel.timeout_s,
                    dashboard_url=channel.dashboard_url,
                )
                channels.append(("telegram", telegram))
                closers.append(telegram.close)
    except BaseException:
        # a later channel's setting is wrong: the ones made before it are closed
        for close in closers:
            close()
        raise
    if not channels:
        return Channels(FanOut([]), None, closers)
    one = channels[0][1] if len(channels) == 1 else FanOut(channels)
    return Channels(one, telegram, closers)


def telegram_bot(
    settings: Settings,
    notifier: TelegramNotifier,
    actions: Intake,
    environ: Mapping[str, str],
) -> TelegramBot | None:
    """The bot that answers Telegram's buttons and commands, if updates are not off."""
    channel = next((n for n in settings.notifiers if isinstance(n, TelegramSettings)), None)
    if channel is None or channel.updates == "off":
        return None
    secret = ""
    if channel.updates == "webhook":
        secret = credential(environ, channel.webhook_secret_env, "Telegram's webhook")
    return TelegramBot(notifier, actions, channel.users, channel.chats, webhook_secret=secret)


@dataclass
class Background:
    """Threads that listen outside orch while it serves: the tracker's deliveries and polls,
    Telegram's updates. Each runs until `stop`."""

    loops: list[tuple[str, Callable[[threading.Event], None]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _nudges: list[Callable[[], None]] = field(default_factory=list)

    def add(
        self,
        name: str,
        loop: Callable[[threading.Event], None],
        nudge: Callable[[], None] | None = None,
    ) -> None:
        """`nudge` wakes the loop from its wait, so that it sees `stop` at once."""
        self.loops.append((name, loop))
        if nudge is not None:
            self._nudges.append(nudge)

    def start(self) -> None:
        for name, loop in self.loops:
            thread = threading.Thread(target=self._run, args=(name, loop), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        try:
            loop(self._stop)
        except Exception:
            log.exception("%s stopped unexpectedly", name)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for nudge in self._nudges:
            nudge()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()
