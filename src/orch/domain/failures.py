"""Failure classes: whether trying again can help, and whether the agent's provider is down.

A permanent failure (the agent's command does not exist, its credentials are refused) parks the
task at once: retrying would only burn attempts. A provider failure (rate limits, overload,
network errors) is transient for the task and also counts towards the provider's circuit
breaker. Everything else is transient: retried with backoff until the attempts run out.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple


class FailureClass(StrEnum):
    TRANSIENT = "transient"
    PROVIDER = "provider"
    PERMANENT = "permanent"


class Trouble(NamedTuple):
    """How a provider failed an agent run since its last good answer."""

    kind: FailureClass
    why: str
    retry_after_s: float | None = None  # how long the provider asked to be left alone


# exit codes a shell gives a command it cannot run at all
_CANNOT_RUN = {126: "is not executable", 127: "was not found"}

_PERMANENT = re.compile(
    r"invalid[ _-]?api[ _-]?key|authentication[ _-]?(error|failed)|\b401\b|unauthori[sz]ed"
    r"|permission denied \(publickey\)|invalid x-api-key|failed to authenticate",
    re.IGNORECASE,
)
# read only in what a CLI said of how it ended, never in a command's own output, where a
# test's "not logged in" or "500" would be taken for the provider's: a CLI that found no
# credentials (Claude Code's words), and the provider's server errors
_NO_LOGIN = re.compile(r"not logged in|please run /login", re.IGNORECASE)
_SERVER_ERROR = re.compile(
    r"API error 50[0234]\b|\b50[0234] (internal server error|bad gateway|service unavailable"
    r"|gateway time-?out)|internal server error|bad gateway|gateway time-?out"
    r"|experiencing high demand|overloaded_error|api_error",
    re.IGNORECASE,
)
_PROVIDER = re.compile(
    r"rate[ _-]?limit|\b429\b|too many requests|overloaded|\b529\b|\b503\b|service unavailable"
    r"|connection (refused|reset|error)|econnrefused|econnreset|etimedout|enotfound"
    r"|network (is )?unreachable|name or service not known|temporary failure in name resolution"
    r"|api_connection_error|upstream connect error",
    re.IGNORECASE,
)


def classify(
    exit_code: int | None, output_tail: str, said: bool = False
) -> tuple[FailureClass, str]:
    """The class of an agent that exited `exit_code`, with a short reason; `output_tail` is the
    end of what it printed, or (`said`) what its CLI reported of how it ended."""
    if exit_code in _CANNOT_RUN:
        return FailureClass.PERMANENT, f"the agent's command {_CANNOT_RUN[exit_code]}"
    found = _NO_LOGIN.search(output_tail) if said else None
    if found:
        return FailureClass.PERMANENT, (
            f"the agent has no credentials (it says {found.group(0)!r}): give orch the"
            " provider's key (ANTHROPIC_API_KEY for Claude Code, OPENAI_API_KEY for Codex) in"
            " its environment; orch's metering proxy keeps it and gives each run a token"
        )
    found = _PERMANENT.search(output_tail)
    if found:
        return FailureClass.PERMANENT, f"the provider refused the credentials ({found.group(0)})"
    found = _PROVIDER.search(output_tail) or (_SERVER_ERROR.search(output_tail) if said else None)
    if found:
        return FailureClass.PROVIDER, f"the provider failed ({found.group(0)})"
    return FailureClass.TRANSIENT, ""


# what a model provider's HTTP answer says about it: its own error types, then its status
_AUTH_TYPES = frozenset({"authentication_error", "permission_error", "invalid_api_key"})
_PROVIDER_TYPES = frozenset(
    {"overloaded_error", "rate_limit_error", "api_error", "server_error", "rate_limit_exceeded"}
)
_PROVIDER_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


def provider_answer(status: int, error_type: str = "") -> FailureClass | None:
    """The class of a provider's error answer: refused credentials are permanent; overload, rate
    limits and server errors are the provider's failures; None for an error that is the
    request's own (a malformed or too long request), which says the provider is up."""
    if status in (401, 403) or error_type in _AUTH_TYPES:
        return FailureClass.PERMANENT
    if status in _PROVIDER_STATUS or error_type in _PROVIDER_TYPES:
        return FailureClass.PROVIDER
    return None
