"""A forge with pull requests shows people each task as one: opened when its branch is first
pushed, its description kept to the stages, and each gate's verdict as a commit status
(`orch/<gate>`). All of it is a view: the forge's own lookups make it safe to repeat, so none of
it is an effect, and a forge that fails it never fails the stage."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from orch.domain import pipeline as pl
from orch.domain.errors import OrchError, PipelineError, Unavailable
from orch.domain.model import GateRecord, Task
from orch.domain.states import WORK_STAGES, EffectKind, EffectState, Stage
from orch.ports import PullRequest, PullRequests, PullState, StatusState, Store
from orch.services.work import Tools

log = logging.getLogger("orch.engine")

STATUS_PREFIX = "orch/"


def released_sha(store: Store, task: Task) -> str:
    """What the task's last merge put on the default branch, as the store recorded it; empty
    if nothing landed."""
    merges = [
        e
        for e in store.effects(task.id)
        if e.kind == EffectKind.MERGE and e.state == EffectState.SUCCEEDED
    ]
    return str(merges[-1].result.get("merge_sha", "")) if merges else ""


class Pulls:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        forge = tools.forge
        self.forge: PullRequests | None = forge if isinstance(forge, PullRequests) else None

    def show(self, task: Task, head: str, verdicts: Sequence[GateRecord]) -> PullRequest | None:
        """Open (or find) the task's pull request, describe where the task is, and post each
        verdict on `head` as a commit status."""
        if self.forge is None:
            return None
        try:
            pull = self.forge.find_pull(task.repo, task.branch)
            if pull is not None and pull.state != PullState.OPEN and self._shows(task, pull, head):
                # this change's, merged (or closed by a person): the stages after show nothing
                return pull
            landed = pull is not None and pull.state == PullState.MERGED
            if landed and released_sha(self.tools.store, task):
                # this task's change has landed: a head that is not under it comes from a
                # worker that lost its lease meanwhile, whose write the store will refuse
                return pull
            pull = self.forge.open_pull(task.repo, task.branch, self.title(task), describe(task))
            self.forge.describe_pull(task.repo, pull.number, self.title(task), describe(task))
            self._statuses(task.repo, head, verdicts)
        except OrchError as exc:
            log.warning("%s: the pull request could not be updated: %s", task.key, exc)
            return None
        return pull

    def _shows(self, task: Task, pull: PullRequest, head: str) -> bool:
        """Whether `pull` shows this task's change as it is: its head is `head` or under it (an
        earlier task of the same ticket had a branch of the same name, built elsewhere), or it
        merged and `head` has landed (a stage after the merge pushed the branch again)."""
        forge = self.tools.forge
        if pull.head == head:
            return True
        try:
            if pull.head and forge.is_ancestor(task.repo, pull.head, head):
                return True
            return pull.state == PullState.MERGED and bool(forge.find_merge(task.repo, head))
        except Unavailable:
            raise  # no answer is no "no": nothing is opened on it
        except OrchError:
            return False  # a head the forge does not know: another task's, built elsewhere

    def statuses(self, task: Task, sha: str, verdicts: Sequence[GateRecord]) -> None:
        """Post `verdicts` on `sha` (a merge candidate: what lands shows the checks it
        passed)."""
        if self.forge is None:
            return
        try:
            self._statuses(task.repo, sha, verdicts)
        except OrchError as exc:
            log.warning("%s: statuses could not be posted on %s: %s", task.key, sha[:12], exc)

    def _statuses(self, repo: str, sha: str, verdicts: Sequence[GateRecord]) -> None:
        assert self.forge is not None
        for v in verdicts:
            state = StatusState.SUCCESS if v.passed else StatusState.FAILURE
            # the forge keeps a status's description short
            self.forge.set_status(repo, sha, f"{STATUS_PREFIX}{v.gate}", state, v.reason[:140])

    def find(self, task: Task) -> PullRequest | None:
        if self.forge is None:
            return None
        try:
            return self.forge.find_pull(task.repo, task.branch)
        except OrchError as exc:
            log.warning("%s: its pull request could not be read: %s", task.key, exc)
            return None

    @staticmethod
    def title(task: Task) -> str:
        return f"{task.key}: {task.title}"


def describe(task: Task) -> str:
    """The pull request's description: the ticket, and where the task is among its stages."""
    rows = []
    passed = True
    try:
        stages: Sequence[Stage] = pl.from_dict(task.pipeline).stage_names
    except (KeyError, TypeError, ValueError, PipelineError):
        stages = WORK_STAGES
    for stage in stages:
        if stage == task.stage:
            mark, passed = "▶", False
        else:
            mark = "✓" if passed else "·"
        rows.append(f"| {mark} | {stage.value} |")
    body = task.body.strip() or "(no description)"
    return (
        f"{body}\n\n---\nWorked by orch: {task.key} is at **{task.stage.value}**"
        f" ({task.status.value}).\n\n| | stage |\n|---|---|\n" + "\n".join(rows) + "\n"
    )
