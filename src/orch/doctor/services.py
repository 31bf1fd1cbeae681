"""The services orch talks to besides its agents and store: where tickets come from (the
tracker), where code goes (the forge) and who hears about it (the notifier).

Each is one function from the settings to its checks, listed in SERVICES: an adapter with
settings of its own (a hosted tracker, a forge's API, a chat notifier) adds a function that
checks what it needs (its URL answers, its token is set and accepted) and an entry here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from orch.config import Settings, TelegramSettings, WebhookNotifierSettings
from orch.doctor import outside
from orch.doctor.report import Check, fail, ok, run

# `git merge-tree --write-tree`, which the local forge builds merges with
GIT_AT_LEAST = (2, 38)


def tracker(settings: Settings, environ: Mapping[str, str], timeout_s: float) -> list[Check]:
    board = ok("tracker", "built-in board: tickets are kept in the store (`orch task add`)")
    if settings.tracker is None:
        return [board]
    return outside.plane(settings.tracker, environ, timeout_s)


def forge(settings: Settings, environ: Mapping[str, str], timeout_s: float) -> list[Check]:
    checks = _git(settings, environ, timeout_s)
    if settings.forge is not None and all(c.ok for c in checks):
        checks.extend(outside.gitea(settings, environ, timeout_s))
    return checks


def _git(settings: Settings, environ: Mapping[str, str], timeout_s: float) -> list[Check]:
    try:
        ran = run(["git", "--version"], env=environ, timeout_s=timeout_s)
    except OSError as exc:
        return [fail("forge", f"local git: git cannot be run: {exc.strerror or exc}")]
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", ran.out)
    if ran.code != 0 or found is None:
        return [fail("forge", f"local git: `git --version` failed: {ran.last_error()}")]
    version = tuple(int(g) for g in found.groups() if g is not None)
    text = ".".join(str(v) for v in version)
    if version[:2] < GIT_AT_LEAST:
        need = ".".join(str(v) for v in GIT_AT_LEAST)
        return [fail("forge", f"local git: git {text} is older than {need}, which merges need")]
    return [ok("forge", f"local git (git {text}), worktrees under {Path(settings.workspace)}")]


def notifier(settings: Settings, environ: Mapping[str, str], timeout_s: float) -> list[Check]:
    checks: list[Check] = []
    for channel in settings.notifiers:
        if isinstance(channel, TelegramSettings):
            checks.extend(outside.telegram(channel, environ, timeout_s))
        elif isinstance(channel, WebhookNotifierSettings):
            checks.extend(outside.webhook(channel, environ, timeout_s))
        else:
            level = settings.log.level
            checks.append(ok("notifier", f"log: notifications go to orch's log (level {level})"))
    return checks or [ok("notifier", "none: nobody is told what happens")]


ServiceCheck = Callable[[Settings, Mapping[str, str], float], list[Check]]
SERVICES: tuple[ServiceCheck, ...] = (tracker, forge, notifier)
