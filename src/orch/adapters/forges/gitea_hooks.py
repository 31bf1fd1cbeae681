"""Gitea's webhook deliveries, read as reactions to a task's pull request (INTEGRATIONS.md
§2.4): a failing commit status of the repository's own CI, a review asking for changes or
commenting, and a pull request merged or closed by a person. orch's own statuses (`orch/...`)
are not reactions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orch.ports import Reaction, ReactionKind

OWN_CONTEXTS = "orch/"
FAILED = ("failure", "error")


def reaction(
    event: str, payload: Mapping[str, Any], repos: Mapping[str, str], own: str = ""
) -> Reaction | None:
    """`event` is the delivery's X-Gitea-Event-Type (or X-Gitea-Event); `repos` maps Gitea's
    `owner/name` (any case) to orch's name of the repository; `own` is orch's own login, whose
    doings (a branch deleted closes its pull request) are no reaction."""
    full = str(_get(payload, "repository", "full_name") or "").lower()
    repo = repos.get(full)
    if repo is None:
        return None
    actor = str(_get(payload, "sender", "login") or "")
    if event == "push":
        # orch's own merges too: what lands may change the repository's pipeline file
        ref = str(payload.get("ref") or "")
        if not ref.startswith("refs/heads/"):
            return None
        after = str(payload.get("after") or "")
        branch = ref.removeprefix("refs/heads/")
        return Reaction(ReactionKind.PUSHED, repo, after, branch, actor, f"push:{branch}:{after}")
    if own and actor == own:
        return None
    if event == "status":
        return _status(payload, repo, actor)
    pull = payload.get("pull_request")
    if not isinstance(pull, Mapping):
        return None
    head = str(_get(pull, "head", "sha") or "")
    branch = str(_get(pull, "head", "ref") or "")
    number = pull.get("number") or payload.get("number")
    if event in ("pull_request_rejected", "pull_request_review_rejected"):
        text = str(_get(payload, "review", "content") or "").strip()
        feedback = f"A reviewer ({actor}) asked for changes on the pull request" + (
            f":\n\n{text}" if text else "."
        )
        source = f"review:{number}:{head}:{_get(payload, 'review', 'id') or text[:40]}"
        return Reaction(ReactionKind.CHANGES_REQUESTED, repo, head, branch, actor, source, feedback)
    if event == "pull_request_review_comment":
        # a review's comment on the code; a plain comment on the pull request is talk, and an
        # edit or a deletion asks nothing new
        if payload.get("action") not in ("reviewed", "created"):
            return None
        text = str(_get(payload, "review", "content") or _get(payload, "comment", "body") or "")
        if not text.strip():
            return None
        feedback = f"A reviewer ({actor}) commented on the pull request:\n\n{text.strip()}"
        source = f"comment:{number}:{head}:{_get(payload, 'comment', 'id') or text[:40]}"
        return Reaction(ReactionKind.CHANGES_REQUESTED, repo, head, branch, actor, source, feedback)
    if event == "pull_request" and payload.get("action") == "closed":
        kind = ReactionKind.MERGED if pull.get("merged") else ReactionKind.CLOSED
        closed = int(number) if isinstance(number, int) else 0
        return Reaction(kind, repo, head, branch, actor, f"{kind}:{number}", number=closed)
    return None


def _status(payload: Mapping[str, Any], repo: str, actor: str) -> Reaction | None:
    context = str(payload.get("context") or "")
    state = str(payload.get("state") or "")
    if state not in FAILED or context.startswith(OWN_CONTEXTS):
        return None
    sha = str(payload.get("sha") or "")
    description = str(payload.get("description") or "").strip()
    url = str(payload.get("target_url") or "").strip()
    feedback = f"The repository's CI check `{context}` reports {state} on {sha[:12]}" + (
        f": {description}" if description else ""
    )
    if url:
        feedback += f"\nDetails: {url}"
    return Reaction(
        ReactionKind.CI_FAILED, repo, sha, "", actor, f"status:{sha}:{context}", feedback
    )


def _get(payload: Mapping[str, Any], *path: str) -> Any:
    value: Any = payload
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value
