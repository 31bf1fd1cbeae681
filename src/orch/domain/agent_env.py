"""The environment an agent or a gate command runs with: an allowlist, never the whole of orch's.

Tracker, forge and notifier credentials live in orch's own environment and settings; none of them
is on this list, so none reaches a child.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BASE_ALLOWED: frozenset[str] = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TERM", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL"}
)


def child_env(
    environ: Mapping[str, str], extra: Mapping[str, str], allowed: Iterable[str] = ()
) -> dict[str, str]:
    keep = BASE_ALLOWED | frozenset(allowed)
    env = {k: v for k, v in environ.items() if k in keep or k.startswith("LC_")}
    env.update(extra)
    return env
