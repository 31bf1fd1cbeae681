"""Failure classes: whether trying again can help, and whether the agent's provider is down.

A permanent failure (the agent's command does not exist, its credentials are refused) parks the
task at once: retrying would only burn attempts. A provider failure (rate limits, overload,
network errors) is transient for the task and also counts towards the provider's circuit
breaker. Everything else is transient: retried with backoff until the attempts run out.
"""

from __future__ import annotations

import re
from enum import StrEnum


class FailureClass(StrEnum):
    TRANSIENT = "transient"
    PROVIDER = "provider"
    PERMANENT = "permanent"


# exit codes a shell gives a command it cannot run at all
_CANNOT_RUN = {126: "is not executable", 127: "was not found"}

_PERMANENT = re.compile(
    r"invalid[ _-]?api[ _-]?key|authentication[ _-]?(error|failed)|\b401\b|unauthori[sz]ed"
    r"|permission denied \(publickey\)|invalid x-api-key",
    re.IGNORECASE,
)
_PROVIDER = re.compile(
    r"rate[ _-]?limit|\b429\b|too many requests|overloaded|\b529\b|\b503\b|service unavailable"
    r"|connection (refused|reset|error)|econnrefused|econnreset|etimedout|enotfound"
    r"|network (is )?unreachable|name or service not known|temporary failure in name resolution"
    r"|api_connection_error|upstream connect error",
    re.IGNORECASE,
)


def classify(exit_code: int | None, output_tail: str) -> tuple[FailureClass, str]:
    """The class of an agent that exited `exit_code`, with a short reason; `output_tail` is the
    end of what it printed."""
    if exit_code in _CANNOT_RUN:
        return FailureClass.PERMANENT, f"the agent's command {_CANNOT_RUN[exit_code]}"
    found = _PERMANENT.search(output_tail)
    if found:
        return FailureClass.PERMANENT, f"the provider refused the credentials ({found.group(0)})"
    found = _PROVIDER.search(output_tail)
    if found:
        return FailureClass.PROVIDER, f"the provider failed ({found.group(0)})"
    return FailureClass.TRANSIENT, ""
