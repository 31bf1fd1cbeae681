"""The effect outbox: what orch does outside its store, each effect recorded under its key as
intent, then act, then confirm (rule 7); one found unconfirmed after a crash is resolved by
asking the world what happened before anything acts again.

Merges (orch.services.merge) and deploys (orch.services.deploy) go through these steps with
their own guards; notifications and branch deletions go through `once`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from orch.domain.errors import ForgeError, Interrupted
from orch.domain.model import Claim, Effect, Task
from orch.domain.naming import delete_branch_key, notify_key
from orch.domain.news import News, NewsKind, plain
from orch.domain.pipeline import Decision
from orch.domain.states import UNRESOLVED_EFFECT_STATES, EffectKind, EffectState
from orch.ports import Notifier
from orch.services.news import about, tell
from orch.services.pulls import Pulls, released_sha
from orch.services.work import Tools

log = logging.getLogger("orch.engine")

REPORT = "report"  # an effect's kind: news written back to the tracker a task came from


class Outbox:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.store = tools.store
        self.forge = tools.forge

    def once(
        self,
        claim: Claim,
        key: str,
        kind: str,
        repo: str,
        precondition: str,
        act: Callable[[], Mapping[str, Any]],
        *,
        kept: Mapping[str, Any] | None = None,
    ) -> Effect:
        """Record the intent, act, and record what it did; an effect that already succeeded is
        not acted on again. What `act` raises is recorded as FAILED (known not done, so it may
        be tried again), with `kept` (what a later try needs to act), and raised."""
        # the intent returns an effect that succeeded already as it is, and one that failed
        # re-armed for another try
        effect = self.store.begin_effect(claim, key, kind, repo, precondition)
        if effect.state == EffectState.SUCCEEDED:
            return effect
        try:
            result = act()
        except Interrupted:
            raise
        except Exception as exc:
            failed = {"error": str(exc), **(kept or {})}
            self.store.finish_effect(claim, key, EffectState.FAILED, failed)
            raise
        return self.store.finish_effect(claim, key, EffectState.SUCCEEDED, result)

    def mark_unknown(self, claim: Claim, effect: Effect) -> Effect:
        if effect.state == EffectState.UNKNOWN:
            return effect
        return self.store.finish_effect(claim, effect.key, EffectState.UNKNOWN, effect.result)

    # -- notifications -----------------------------------------------------------------------

    def notify(self, task: Task, claim: Claim, decision: Decision) -> None:
        """Tell people where a decision takes the task, if it is news to them; the tracker the
        task came from, if it has one, also hears each stage the task leaves."""
        news = tell(self.store, task, decision)
        if news is None:
            return
        if news.kind == NewsKind.WAITING:
            news = replace(news, wait=f"{task.id}.{claim.version + 1}")
        pull = Pulls(self.tools).find(task)
        if pull is not None:
            news = replace(news, links=(*news.links, ("pull request", pull.url)))
        key = notify_key(task.key, task.id, claim.version + 1, decision.status.value)
        # the tracker first: asking there marks where answers start (orch.services.reporting),
        # before people anywhere can answer
        if self.tools.reporter is not None:
            self._deliver(self.tools.reporter, task, claim, f"{key}:report", news, REPORT)
        if news.kind != NewsKind.STAGE_DONE:
            self.send(task, claim, key, news.text, news)

    def started(self, task: Task, claim: Claim) -> None:
        """Tell people a task started, once, as its first stage first runs."""
        text = f"{task.key} started at {task.stage}: {task.title}"
        news = about(task, NewsKind.STARTED, text)
        self.send(task, claim, notify_key(task.key, task.id, 1, "started"), text, news)

    def send(self, task: Task, claim: Claim, key: str, text: str, news: News | None = None) -> None:
        """Tell people, at most once per key and best-effort: a notifier that fails is
        recorded as FAILED and never fails the stage it reports on."""
        news = news or plain(task.key, text)
        self._deliver(self.tools.notifier, task, claim, key, news, EffectKind.NOTIFY)

    def _deliver(
        self, channel: Notifier, task: Task, claim: Claim, key: str, news: News, kind: str
    ) -> None:
        def deliver() -> Mapping[str, Any]:
            try:
                channel.notify(key, news.text, news)
            except Exception as exc:
                raise _Undelivered(f"{exc}") from exc
            return {"text": news.text}

        try:
            # the news is kept with a failure: a write-back to the tracker is sent again from it
            # (orch.services.reporting) until it is made
            kept = {"news": news.as_dict()}
            self.once(claim, key, kind, task.repo, "", deliver, kept=kept)
        except _Undelivered as exc:
            log.error("notification %s failed: %s", key, exc)

    # -- branches ----------------------------------------------------------------------------

    def delete_branch(self, task: Task, claim: Claim, why: str) -> None:
        """Delete the task's branch on the remote, recorded once (an effect keyed by `why`). The
        delete itself is repeated if asked again: a retry after a crash may have pushed the
        branch anew, and deleting a task branch twice does no harm."""
        key = delete_branch_key(task.key, task.id, why)
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            self.forge.delete_branch(task.repo, task.branch)
            return

        def delete() -> Mapping[str, Any]:
            self.forge.delete_branch(task.repo, task.branch)
            return {"branch": task.branch}

        self.once(claim, key, EffectKind.DELETE_BRANCH, task.repo, task.branch, delete)

    def delete_merged_branch(self, task: Task, claim: Claim) -> None:
        """A done task's branch leaves the remote once all of it has landed. A branch with
        commits that did not land is kept, and a forge that refuses the delete is recorded,
        not held against a task whose work is done."""
        if not released_sha(self.store, task):
            return
        head = self.forge.branch_head(task.repo, task.branch)
        if head is None:
            return
        if not self.forge.find_merge(task.repo, head):
            log.warning("%s: %s holds commits that did not land; kept", task.key, task.branch)
            return
        try:
            self.delete_branch(task, claim, "done")
        except ForgeError as exc:
            log.error("could not delete %s of %s: %s", task.branch, task.key, exc)

    # -- merges ------------------------------------------------------------------------------

    def settle_merge(self, claim: Claim, key: str, head: str, repo: str) -> None:
        """Resolve an unconfirmed merge by asking the forge, so it never holds the repository's
        merge slot after this attempt ends."""
        found = self.forge.find_merge(repo, head)
        if found:
            self.store.finish_effect(
                claim, key, EffectState.SUCCEEDED, {"merge_sha": found, "resolved_by": "forge"}
            )
        else:
            self.store.finish_effect(
                claim, key, EffectState.FAILED, {"error": "not merged", "resolved_by": "forge"}
            )

    def settle_open(self, task: Task, claim: Claim) -> None:
        """Before a task is parked: free the slots its effects in flight hold."""
        for effect in self.store.effects(task.id):
            if effect.kind == EffectKind.MERGE and effect.state in UNRESOLVED_EFFECT_STATES:
                try:
                    self.settle_merge(claim, effect.key, effect.precondition, task.repo)
                except ForgeError as exc:
                    log.error("could not settle %s: %s", effect.key, exc)
            elif EffectKind.DEPLOY.of(effect.kind) and effect.state == EffectState.INITIATED:
                # nobody drives a parked task's deploy: its outcome is unknown until a retry's
                # check says, and the target's deploy slot is free for others meanwhile
                self.mark_unknown(claim, effect)


class _Undelivered(Exception):
    """A notifier failed: recorded, and never the failure of the stage it reports on."""
