"""The environment an agent or a gate command runs with: an allowlist, never the whole of orch's.

Tracker, forge and notifier credentials live in orch's own environment and settings; none of them
is on this list, so none reaches a child.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BASE_ALLOWED: frozenset[str] = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TERM", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL"}
)


# credentials of the services orch itself talks to (trackers, forges, notifiers, its store):
# no setting may pass them to an agent, which runs whatever its model tells it to
FORBIDDEN: frozenset[str] = frozenset(
    {
        "GITEA_TOKEN",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "GITLAB_TOKEN",
        "GITEA_WEBHOOK_SECRET",
        "PLANE_API_KEY",
        "PLANE_WEBHOOK_SECRET",
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_WEBHOOK_SECRET",
        "NOTIFY_WEBHOOK_SECRET",
        "LINEAR_API_KEY",
        "JIRA_API_TOKEN",
        "DATABASE_URL",
        "PGPASSWORD",
    }
)


def forbidden(names: Iterable[str]) -> list[str]:
    """The names an agent may never be given: orch's own settings (ORCH_*) and the
    credentials of the services orch talks to."""
    return sorted(n for n in names if n in FORBIDDEN or n.startswith("ORCH_"))


def child_env(
    environ: Mapping[str, str], extra: Mapping[str, str], allowed: Iterable[str] = ()
) -> dict[str, str]:
    keep = BASE_ALLOWED | frozenset(allowed)
    env = {k: v for k, v in environ.items() if k in keep or k.startswith("LC_")}
    env.update(extra)
    return env
