"""The merge: exactly the tree that passed lands (rule 18), at most once per head (rule 7)."""

from __future__ import annotations

import logging

from orch import crashpoints
from orch.domain.errors import (
    Busy,
    CandidateFailed,
    DefaultMoved,
    ForgeError,
    ForgeUnavailable,
    HeadMoved,
    MergeConflict,
    OrchError,
)
from orch.domain.naming import merge_key
from orch.domain.news import NewsKind
from orch.domain.pipeline import GateKind, GateSpec
from orch.domain.states import UNRESOLVED_EFFECT_STATES, EffectKind, EffectState
from orch.ports import Candidate, RepoSettings
from orch.services.gates import CANDIDATE_GATE, Gates
from orch.services.news import about
from orch.services.outbox import Outbox
from orch.services.pulls import Pulls
from orch.services.work import Tools, Where, Work

log = logging.getLogger("orch.engine")

MERGE_TRIES = 3  # builds of a merge candidate while the default branch keeps moving


class Merger:
    def __init__(self, tools: Tools, outbox: Outbox, gates: Gates) -> None:
        self.tools = tools
        self.store = tools.store
        self.forge = tools.forge
        self.outbox = outbox
        self.gates = gates
        self.pulls = Pulls(tools)

    def merge(self, work: Work, repo: RepoSettings, where: Where, head: str) -> str:
        """Land exactly `head`, merged onto the default branch's current head, as the tree
        that passed the repository's tests. The merge effect is the repository's one merge
        slot: it is taken before the candidate is built, so candidates are tested one at a
        time per repository, and a default branch that moves anyway is built on and tested
        again. A change that cannot land raises MergeConflict, HeadMoved or CandidateFailed."""
        task, claim = work.task, work.claim
        # keyed by the head: the same commits are merged at most once, however often the task
        # comes back through this stage
        key = merge_key(task.key, task.id, task.stage, head)
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            return self._merged(work, key, str(effect.result["merge_sha"]))
        if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES:
            # an earlier attempt died between intent and confirm: ask the forge before acting
            found = self.forge.find_merge(task.repo, head)
            if found:
                self.store.finish_effect(
                    claim, key, EffectState.SUCCEEDED, {"merge_sha": found, "resolved_by": "forge"}
                )
                return self._merged(work, key, found)
            self._wait_for_earlier(work)
            self.outbox.mark_unknown(claim, effect)
        else:
            landed = self._late_landing(work, head)
            if landed is not None:
                return landed
            self._wait_for_earlier(work)
            # an earlier head's merge this task left unresolved would hold the slot against it
            self.outbox.settle_open(task, claim)
            earlier = self._landed_as(task.id, head) if effect is None else None
            if earlier is not None:
                # `head` is what an earlier merge of this task landed (a forge that lands
                # through the task branch leaves it there): nothing is left to merge
                return self._merged(work, earlier, head)
            self.store.begin_effect(claim, key, EffectKind.MERGE, task.repo, head)
        message = f"Merge {task.branch}: {task.key} {task.title}"
        for _ in range(MERGE_TRIES):
            work.lease.renew()
            try:
                candidate = self.forge.merge_candidate(task.repo, task.branch, head, message)
                failure = self._candidate_failure(work, repo, where, candidate)
                sha = "" if failure is not None else self.forge.land(task.repo, candidate)
            except DefaultMoved as exc:
                log.info("%s: %s; building the merge candidate again", task.key, exc)
                continue
            except HeadMoved as exc:
                # known not merged: the stage reworks it
                self.store.finish_effect(claim, key, EffectState.FAILED, {"error": str(exc)})
                raise
            except ForgeUnavailable:
                # a request the forge took may still be carried out: its outcome is asked again
                # once it would have been (by the next attempt, or the sweeper), counted from now
                current = self.store.get_effect(key)
                if current is not None:
                    self.store.finish_effect(claim, key, EffectState.UNKNOWN, current.result)
                raise
            except ForgeError:
                self.outbox.settle_merge(claim, key, head, task.repo)
                raise
            if failure is not None:
                # known not merged, and recorded so before the branch moves on: the next round
                # starts from the merged tree, and meets the failure there
                self.store.finish_effect(
                    claim, key, EffectState.FAILED, {"error": str(failure), "to": candidate.sha}
                )
                self.forge.adopt(task.repo, task.branch, candidate)
                self._show(work, candidate)
                raise failure
            crashpoints.hit("forge.response.received")
            self.store.finish_effect(
                claim,
                key,
                EffectState.SUCCEEDED,
                {"merge_sha": sha, "head": head, "base": candidate.base},
            )
            self._show(work, candidate)
            return self._merged(work, key, sha)
        self.outbox.settle_merge(claim, key, head, task.repo)
        raise Busy(
            f"{repo.default_branch} moved {MERGE_TRIES} times while the merge of {task.branch}"
            " was tested; it is tried again"
        )

    def _wait_for_earlier(self, work: Work) -> None:
        """Raise Busy while a merge request of this task whose answer was lost may still be
        carried out: nothing is sent, and no other candidate built, before the forge's answer
        about it is final (a late landing would otherwise leave a candidate that never lands on
        the task branch, and a second merge to reason about)."""
        recent = self.store.now() - self.forge.settle_after_s
        for effect in self.store.effects(work.task.id):
            if (
                effect.kind == EffectKind.MERGE
                and effect.state in UNRESOLVED_EFFECT_STATES
                and effect.updated_at > recent
            ):
                wait = effect.updated_at - recent
                raise Busy(
                    f"the forge may still carry out the merge of {effect.precondition[:12]},"
                    f" whose answer was lost; asked again in {wait:.0f}s at the latest"
                )

    def _late_landing(self, work: Work, head: str) -> str | None:
        """`head` on the default branch as the candidate of a merge of this task still
        unresolved (a forge that lands through the task branch leaves it there; the request's
        answer was lost, and it was carried out after all): that merge succeeded, as `head`."""
        task, claim = work.task, work.claim
        for effect in self.store.effects(task.id):
            if effect.kind != EffectKind.MERGE or effect.state not in UNRESOLVED_EFFECT_STATES:
                continue
            try:
                under = self.forge.is_ancestor(task.repo, effect.precondition, head)
                landed = under and self.forge.find_merge(task.repo, head)
            except OrchError:
                continue
            if landed:
                result = {"merge_sha": head, "head": effect.precondition, "resolved_by": "forge"}
                self.store.finish_effect(claim, effect.key, EffectState.SUCCEEDED, result)
                return self._merged(work, effect.key, head)
        return None

    def _landed_as(self, task_id: int, head: str) -> str | None:
        """The key of the task's merge that landed `head` itself, if one did."""
        return next(
            (
                e.key
                for e in self.store.effects(task_id)
                if e.kind == EffectKind.MERGE
                and e.state == EffectState.SUCCEEDED
                and e.result.get("merge_sha") == head
            ),
            None,
        )

    def _show(self, work: Work, candidate: Candidate) -> None:
        """Post on the candidate, once the forge has it, the checks of its round and its own."""
        records = [
            r
            for r in self.store.gate_records(work.task.id)
            if r.version == work.claim.version
            and (r.head_sha == candidate.sha or (r.passed and r.gate != CANDIDATE_GATE))
        ]
        self.pulls.statuses(work.task, candidate.sha, records)

    def _merged(self, work: Work, key: str, sha: str) -> str:
        """Tell people, once per merge, and return what landed."""
        task = work.task
        repo = self.tools.repos.get(task.repo)
        text = f"{task.key} merged into {repo.default_branch} as {sha[:12]}: {task.title}"
        news = about(task, NewsKind.MERGED, text)
        self.outbox.send(task, work.claim, f"{key}:notify", text, news)
        return sha

    def _candidate_failure(
        self, work: Work, repo: RepoSettings, where: Where, candidate: Candidate
    ) -> OrchError | None:
        """Why the candidate may not land: it conflicts, or the repository's test command fails
        on exactly its tree; None if it may."""
        task = work.task
        if candidate.conflicts:
            return MergeConflict(
                f"{task.branch} conflicts with {repo.default_branch} in"
                f" {', '.join(candidate.conflicts[:10])}; the task branch now merges"
                f" {repo.default_branch} with those conflicts marked (<<<<<<< ======= >>>>>>>):"
                " resolve them"
            )
        if candidate.landed or not repo.test_command.strip():
            return None
        self.forge.checkout(task.repo, where.worktree, candidate.sha)
        gate = GateSpec(CANDIDATE_GATE, GateKind.COMMAND, command="{{ repo.test_command }}")
        record = self.gates.judge(work, gate, where, (candidate.sha, candidate.sha))
        if record.passed:
            return None
        return CandidateFailed(
            f"{task.branch} merged onto {repo.default_branch} at {candidate.base[:12]}"
            f" (candidate {candidate.sha[:12]}) fails the tests: {record.reason}"
        )
