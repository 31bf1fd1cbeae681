"""Names orch derives from a ticket: its task branch and its key prefix."""

from __future__ import annotations

import re


def branch_for(key: str) -> str:
    return "orch/" + (re.sub(r"[^A-Za-z0-9._-]", "-", key).strip(".-") or "ticket")


def key_prefix(repo: str, configured: str) -> str:
    if configured:
        return configured
    cleaned = re.sub(r"[^A-Za-z0-9]", "", repo).upper()
    return cleaned[:10] or "TASK"
