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
    return f"{task_ref(task_key, task_id)}:{stage}:merge:{head}"


def deploy_key(repo: str, target: str, release: str) -> str:
    """One deploy of a release to a target."""
    return f"deploy:{repo}:{target}:{release}"


def superseded_key(deploy: str) -> str:
    """The record that a deploy was skipped: its target already ran something newer."""
    return f"{deploy}:superseded"


def rollback_key(deploy: str) -> str:
    """The rollback of a deploy that failed its check."""
    return f"{deploy}:rollback"


def task_ref(task_key: str, task_id: int) -> str:
    """A task named in keys: its ticket's key and its own id (a ticket may have had others)."""
    return f"{task_key}#{task_id}"


def notify_key(task_key: str, task_id: int, version: int, status: str) -> str:
    """One message per version a task reaches and status it reaches it in (a STOP that arrives
    as a job tells people where the task goes sends it to `cancelled` instead, with its own
    message)."""
    return f"{task_ref(task_key, task_id)}:notify:v{version}:{status}"


def remind_key(task_key: str, task_id: int, version: int, rounds: int) -> str:
    """One reminder per timeout a checkpoint's wait has run through."""
    return f"{task_ref(task_key, task_id)}:remind:v{version}:{rounds}"


def delete_branch_key(task_key: str, task_id: int, why: str) -> str:
    """One delete of a task's branch per reason (it was cancelled, or it is done)."""
    return f"{task_ref(task_key, task_id)}:{why}:delete-branch"


def decision_key(task_id: int, version: int) -> str:
    """One decision per wait: whichever of an approval or a rejection comes first answers it."""
    return f"{task_id}:v{version}:decision"


def retry_key(task_id: int, version: int) -> str:
    """One operator's retry per parked version of a task."""
    return f"{task_id}:v{version}:retry"


def stop_key(task_id: int) -> str:
    """One STOP per task."""
    return f"{task_id}:stop"


def store_down_key(owner: str) -> str:
    """The one alert an orch process raises while its store refuses to answer."""
    return f"{owner}:store-down"


def cancel_overdue_key(task_id: int) -> str:
    """The one alert that a task's STOP waits longer than its bound."""
    return f"{task_id}:cancel-overdue"


def landed_key(task_id: int) -> str:
    """One merge by hand per task: a pull request is merged once."""
    return f"{task_id}:landed"


def rework_key(task_id: int, source: str) -> str:
    """One reaction of the forge per task and source (a status, a review, a comment)."""
    return f"{task_id}:rework:{source[:300]}"
