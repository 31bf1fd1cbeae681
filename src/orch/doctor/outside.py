"""Checks of the services outside orch that the settings name: Plane, Gitea, Telegram and a
webhook notifier. Each says whether its credential is set, whether the service answers and
accepts it, and whether what orch relies on there exists (Plane's states, push access to each
repository). Nothing here changes anything on the service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from orch.config import (
    GiteaSettings,
    PlaneSettings,
    Settings,
    TelegramSettings,
    WebhookNotifierSettings,
)
from orch.doctor.report import Check, fail, ok, warn
from orch.domain.errors import OrchError
from orch.ports import Tracker


def _get(url: str, headers: Mapping[str, str], timeout_s: float) -> tuple[int, Any, str]:
    """(status, JSON body or None, what went wrong); status 0 when nothing answered."""
    try:
        response = httpx.get(url, headers=dict(headers), timeout=timeout_s)
    except httpx.HTTPError as exc:
        return 0, None, f"{type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body, ""


def plane(settings: PlaneSettings, environ: Mapping[str, str], timeout_s: float) -> list[Check]:
    name = "tracker"
    token = environ.get(settings.token_env, "")
    if not token:
        return [fail(name, f"Plane: ${settings.token_env} (its API key) is not set")]
    base = settings.url.rstrip("/")
    status, body, error = _get(f"{base}/api/v1/users/me/", {"X-Api-Key": token}, timeout_s)
    if status == 0:
        return [fail(name, f"Plane at {base} does not answer: {error}")]
    if status == 401:
        return [fail(name, f"Plane refused the API key in ${settings.token_env}")]
    if status != 200:
        return [fail(name, f"Plane answered {status} to users/me")]
    who = (body or {}).get("display_name") or (body or {}).get("email") or "?"
    checks = [ok(name, f"Plane at {base}, workspace {settings.workspace}, as {who}")]
    checks.extend(_plane_projects(settings, token, timeout_s))
    if not environ.get(settings.webhook_secret_env):
        checks.append(
            warn(
                "tracker webhook",
                f"${settings.webhook_secret_env} is not set: every Plane delivery is refused,"
                f" and changes are seen only by the poll (every {settings.poll_interval_s:g} s)",
            )
        )
    else:
        checks.append(ok("tracker webhook", "deliveries to /webhooks/plane are verified"))
    return checks


def _plane_projects(settings: PlaneSettings, token: str, timeout_s: float) -> list[Check]:
    from orch.adapters.trackers.plane import PlaneTracker

    with PlaneTracker(
        settings.url, settings.workspace, token, timeout_s=timeout_s, max_tries=1
    ) as tracker:
        return _plane_states(settings, tracker)


def _plane_states(settings: PlaneSettings, tracker: Tracker) -> list[Check]:
    checks = []
    for project in settings.projects:
        label = f"tracker project {project.id}"
        try:
            names = set(tracker.state_names(project.id))
        except OrchError as exc:
            checks.append(fail(label, f"its states cannot be read: {exc}"))
            continue
        wanted = project.states.model_dump()
        wanted.update({f"report {k}": v for k, v in project.report.items()})
        missing = [f"{role} ({state!r})" for role, state in wanted.items() if state not in names]
        if missing:
            checks.append(
                fail(
                    label,
                    f"has no state named {', '.join(missing)}: orch does not act on a state it"
                    " cannot find; create it in Plane, or name yours in tracker.projects[].states",
                )
            )
        else:
            checks.append(ok(label, f"every state orch uses exists; works in {project.repo}"))
    return checks


def gitea(settings: Settings, environ: Mapping[str, str], timeout_s: float) -> list[Check]:
    forge = settings.forge
    assert isinstance(forge, GiteaSettings)
    name = "forge"
    token = environ.get(forge.token_env, "")
    if not token:
        return [fail(name, f"Gitea: ${forge.token_env} (its access token) is not set")]
    base = forge.url.rstrip("/")
    auth = {"Authorization": f"token {token}"}
    status, body, error = _get(f"{base}/api/v1/user", auth, timeout_s)
    if status == 0:
        return [fail(name, f"Gitea at {base} does not answer: {error}")]
    if status in (401, 403):
        return [fail(name, f"Gitea refused the token in ${forge.token_env}")]
    if status != 200:
        return [fail(name, f"Gitea answered {status} to /user")]
    checks = [
        ok(
            name,
            f"Gitea at {base} as {(body or {}).get('login', '?')}, merging by {forge.merge_style}",
        )
    ]
    for repo in settings.repos:
        label = f"forge repo {repo.name}"
        path = urlsplit(repo.remote).path.strip("/").removesuffix(".git")
        status, body, error = _get(f"{base}/api/v1/repos/{path}", auth, timeout_s)
        if status != 200:
            checks.append(fail(label, f"{path} cannot be read ({status or error})"))
            continue
        permissions = (body or {}).get("permissions") or {}
        if not permissions.get("push"):
            checks.append(fail(label, f"the token may not push to {path}"))
        elif (body or {}).get("default_branch") != repo.default_branch:
            checks.append(
                warn(
                    label,
                    f"{path}'s default branch is {(body or {}).get('default_branch')}, not"
                    f" {repo.default_branch} as configured",
                )
            )
        else:
            checks.append(ok(label, f"{path}: push access, default branch {repo.default_branch}"))
    if not environ.get(forge.webhook_secret_env):
        checks.append(
            warn(
                "forge webhook",
                f"${forge.webhook_secret_env} is not set: Gitea's deliveries are refused",
            )
        )
    return checks


def telegram(
    channel: TelegramSettings, environ: Mapping[str, str], timeout_s: float
) -> list[Check]:
    name = "notifier telegram"
    token = environ.get(channel.token_env, "")
    if not token:
        return [fail(name, f"${channel.token_env} (the bot's token) is not set")]
    status, body, error = _get(f"{channel.api_url.rstrip('/')}/bot{token}/getMe", {}, timeout_s)
    if status == 0:
        return [fail(name, f"the Bot API does not answer: {error.replace(token, '***')}")]
    if status != 200 or not (body or {}).get("ok"):
        return [fail(name, f"the Bot API refused the token in ${channel.token_env} ({status})")]
    bot = ((body or {}).get("result") or {}).get("username", "?")
    checks = [ok(name, f"@{bot} tells {len(channel.chats)} chat(s); updates by {channel.updates}")]
    if channel.updates != "off" and not channel.users:
        checks.append(warn(name, "no user ids are configured: nobody may act from Telegram"))
    if channel.updates == "webhook" and not environ.get(channel.webhook_secret_env):
        checks.append(
            fail(name, f"${channel.webhook_secret_env} is not set: its webhook would be refused")
        )
    return checks


def webhook(
    channel: WebhookNotifierSettings, environ: Mapping[str, str], timeout_s: float
) -> list[Check]:
    name = "notifier webhook"
    if not environ.get(channel.secret_env):
        return [fail(name, f"${channel.secret_env} (its signing secret) is not set")]
    return [ok(name, f"news is POSTed to {channel.url}, signed (X-Orch-Signature)")]
