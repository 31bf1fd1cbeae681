"""Names orch derives: a ticket's branch and key prefix, and effects' idempotency keys."""

from __future__ import annotations

import re


def branch_for(key: str) -> str:
    return "orch/" + (re.sub(r"[^A-Za-z0-9._-]", "-", key).strip(".-") or "ticket")


def key_prefix(repo: str, configured: str) -> str:
    if configured:
        return configured
    cleaned = re.sub(r"[^A-Za-z0-9]", "", repo).upper()
    return cleaned[:10] or "TASK"


def merge_key(task_key: str, task_id: int, stage: str, head: str) -> str:
    """One merge per head that passed the gates, however often the stage is entered."""
    return f"{task_key}#{task_id}:{stage}:merge:{head}"


def deploy_key(repo: str, target: str, release: str) -> str:
    """One deploy of a release to a target."""
    return f"deploy:{repo}:{target}:{release}"
