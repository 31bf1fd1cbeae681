"""Deploys move forward (rule 19): a release already in the history of what a target runs is
recorded as superseded and not deployed; a deploy is followed by its check, and one that fails
it is rolled back to the release the target ran before, as an effect of its own."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orch.domain import pipeline as pl
from orch.domain.errors import Busy, ForgeError
from orch.domain.naming import deploy_key, rollback_key, superseded_key
from orch.domain.news import NewsKind
from orch.domain.pipeline import Decision
from orch.domain.states import UNRESOLVED_EFFECT_STATES, EffectKind, EffectState, RunOutcome
from orch.ports import NOT_STARTED_LATE, AgentProcess, RepoSettings
from orch.services.news import about
from orch.services.outbox import Outbox
from orch.services.work import Tools, Work

log = logging.getLogger("orch.engine")

DEPLOY_TIMEOUT_S = 1800.0
CHECK_TIMEOUT_S = 300.0


class Deployer:
    def __init__(self, tools: Tools, outbox: Outbox) -> None:
        self.tools = tools
        self.store = tools.store
        self.forge = tools.forge
        self.outbox = outbox

    def deploy(
        self, work: Work, repo: RepoSettings, worktree: Path, target: str, release: str
    ) -> Decision | str:
        """Move `target` to `release`, forward only; the release, or what parks the task."""
        task, claim = work.task, work.claim
        spec = repo.deploy.get(target)
        if spec is None:
            return release  # nothing configured for this target: the stage has no deploy to do
        key = deploy_key(repo.name, target, release)
        skipped = self.store.get_effect(superseded_key(key))
        if skipped is not None and skipped.state == EffectState.SUCCEEDED:
            return release
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            if effect.result.get("check") == "failed":
                previous = str(effect.result.get("previous", ""))
                return self._roll_back(work, repo, worktree, target, key, previous)
            self._deployed(work, target, release, key)
            return release
        rolling = self.store.get_effect(rollback_key(key))
        if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES and rolling is not None:
            # the deploy ran and failed its check, and its rollback was under way
            return self._failed_check(work, repo, worktree, target, key, rolling.precondition, {})
        if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES:
            deployed = self.resolve(work, target, release)
            if deployed is None:
                return pl.parked(
                    task.stage, f"deploy of {release[:12]} to {target} may have run; {key}"
                )
            if deployed:
                self._deployed(work, target, release, key)
                return release
        if skipped is not None and skipped.state in UNRESOLVED_EFFECT_STATES:
            # interrupted while recording a skip: nothing ran, the choice is made again below
            self.store.finish_effect(claim, skipped.key, EffectState.FAILED, {"error": "redone"})
        # the target's one deploy slot is taken first: what it runs is read while no other
        # deploy can move it, after any deploy whose outcome was left unknown is settled
        self.store.begin_effect(
            claim, key, EffectKind.DEPLOY.for_target(target), repo.name, release
        )
        unsettled = self._settle_target(work, repo, target, worktree)
        if unsettled:
            self.store.finish_effect(claim, key, EffectState.FAILED, {"error": unsettled})
            raise Busy(unsettled)
        running = self._running(repo.name, target)
        if running and running != release and self.forge.is_ancestor(task.repo, release, running):
            self.store.finish_effect(
                claim, key, EffectState.FAILED, {"error": "superseded", "superseded_by": running}
            )
            result = {"release": release, "target": target, "superseded_by": running}
            self.outbox.once(
                claim,
                superseded_key(key),
                EffectKind.SUPERSEDED.for_target(target),
                repo.name,
                release,
                lambda: result,
            )
            log.info("%s: %s already runs %s, newer than %s", task.key, target, running, release)
            return release
        code, timed_out, proc, log_path = self._run(work, spec.command, worktree, target, release)
        if code == 0 and not timed_out:
            result = {"release": release, "target": target, "log": str(log_path)}
            if spec.check:
                if self._check(work, spec.check, worktree, target, release) != 0:
                    return self._failed_check(work, repo, worktree, target, key, running, result)
                result["check"] = "passed"
            self.store.finish_effect(
                claim, key, EffectState.SUCCEEDED, {**result, "previous": running}
            )
            self._deployed(work, target, release, key)
            return release
        if timed_out:
            # killed part-way: whether it took effect is unknown until the check says
            self.store.finish_effect(
                claim, key, EffectState.UNKNOWN, {"timed_out": True, "log": str(log_path)}
            )
            raise ForgeError(f"deploy to {target} timed out: {proc.tail(400)}")
        self.store.finish_effect(
            claim, key, EffectState.FAILED, {"exit_code": code, "log": str(log_path)}
        )
        raise ForgeError(f"deploy to {target} exited {code}: {proc.tail(400)}")

    def _deployed(self, work: Work, target: str, release: str, key: str) -> None:
        """Tell people a release reached production, once."""
        if target != "production":
            return
        task = work.task
        text = f"{task.key} deployed {release[:12]} to {target}: {task.title}"
        news = about(task, NewsKind.DEPLOYED, text)
        self.outbox.send(task, work.claim, f"{key}:notify", text, news)

    def _settle_target(self, work: Work, repo: RepoSettings, target: str, worktree: Path) -> str:
        """Ask the target's check about every deploy to it whose outcome was left unknown (its
        worker died, or its task was parked mid-deploy): what the target runs is not known
        until each is settled. Empty when all are; else why this deploy must wait."""
        kind = EffectKind.DEPLOY.for_target(target)
        spec = repo.deploy[target]
        while (
            other := self.store.latest_effect(repo.name, [kind], EffectState.UNKNOWN)
        ) is not None:
            release = other.precondition
            settled = self._settle(work, spec.check, worktree, other.key, target, release)
            if settled is None:
                return (
                    f"the outcome of the deploy of {release[:12]} to {target}"
                    f" ({other.key}) is unknown; {target} is not deployed to until it is settled"
                )
        return ""

    def _settle(
        self, work: Work, check: str, worktree: Path, key: str, target: str, release: str
    ) -> bool | None:
        """Settle the unconfirmed deploy under `key` by the target's check: True (SUCCEEDED),
        False (FAILED: only an explicit "not deployed", exit 1, allows deploying again) or
        None (no check, or it could not tell: the effect stays as it is)."""
        code = self._check(work, check, worktree, target, release) if check else None
        if code == 0:
            result = {"release": release, "target": target, "resolved_by": "check"}
            self.store.finish_effect(work.claim, key, EffectState.SUCCEEDED, result)
            return True
        if code == 1:
            result = {"error": "not deployed", "resolved_by": "check"}
            self.store.finish_effect(work.claim, key, EffectState.FAILED, result)
            return False
        return None

    def _running(self, repo: str, target: str) -> str:
        """The release `target` runs, as far as orch made it so: the last deploy or rollback
        that took effect there; empty if none did."""
        kinds = (EffectKind.DEPLOY.for_target(target), EffectKind.ROLLBACK.for_target(target))
        last = self.store.latest_effect(repo, kinds)
        if last is None:
            return ""
        if last.result.get("check") == "failed":
            # recorded after its rollback, which put back the release before it
            back = self.store.get_effect(rollback_key(last.key))
            if back is not None and back.state == EffectState.SUCCEEDED:
                return back.precondition
        return last.precondition

    def _run(
        self,
        work: Work,
        command: str,
        worktree: Path,
        target: str,
        release: str,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[int | None, bool, AgentProcess, Path]:
        """Run a deploy command on the worktree checked out at `release`; never cut off by a
        STOP (the cancel waits for it and applies after). The lease is renewed just before,
        and the command is not started at all past the renewed lease's end: a worker paused in
        between may have lost the job to one that ran the deploy already."""
        task = work.task
        self.forge.checkout(task.repo, worktree, release)
        log_path = self.tools.log_path(task, f"deploy-{target}-{release[:12]}.log")
        env = {**self._env(work, target, release), **(extra or {})}
        work.lease.renew()
        proc = self.tools.runner.start(
            command, worktree, env, log_path, not_after=work.lease.valid_until()
        )
        code, outcome = work.lease.supervise(
            proc, DEPLOY_TIMEOUT_S, self.tools.settings.kill_grace_s, cancellable=False
        )
        if code == NOT_STARTED_LATE:
            # nothing ran: this worker was held up past its lease's sure end; if it lost the
            # job the renewal says so, else the step is tried again, not counted as a failure
            work.lease.renew()
            raise Busy(f"the {target} deploy started too late to be sure of its lease; not run")
        return code, outcome != RunOutcome.EXITED, proc, log_path

    def _check(
        self, work: Work, check: str, worktree: Path, target: str, release: str
    ) -> int | None:
        """What the deploy's check answers to "does `target` run `release`?": 0 yes, 1 no,
        anything else (None: it had to be killed) says nothing."""
        probe = self.tools.runner.start(
            check,
            worktree,
            self._env(work, target, release),
            self.tools.log_path(work.task, f"deploy-{target}-{release[:12]}-check.log"),
        )
        code, outcome = work.lease.supervise(
            probe, CHECK_TIMEOUT_S, self.tools.settings.kill_grace_s, cancellable=False
        )
        return code if outcome == RunOutcome.EXITED else None

    def _env(self, work: Work, target: str, release: str) -> dict[str, str]:
        return self.tools.child_env(
            work.task, work.claim, {"ORCH_RELEASE": release, "ORCH_DEPLOY_TARGET": target}
        )

    def _failed_check(
        self,
        work: Work,
        repo: RepoSettings,
        worktree: Path,
        target: str,
        key: str,
        previous: str,
        result: dict[str, Any],
    ) -> Decision:
        """The deploy under `key` ran and failed its check: roll back while its effect still
        holds the target's one deploy slot (no other deploy can move the target meanwhile),
        then record it as run, with the failed check."""
        decision = self._roll_back(work, repo, worktree, target, key, previous)
        release = key.rsplit(":", 1)[1]
        self.store.finish_effect(
            work.claim,
            key,
            EffectState.SUCCEEDED,
            {
                "release": release,
                "target": target,
                **result,
                "check": "failed",
                "previous": previous,
            },
        )
        return decision

    def _roll_back(
        self,
        work: Work,
        repo: RepoSettings,
        worktree: Path,
        target: str,
        key: str,
        previous: str,
    ) -> Decision:
        """Put back the release the target ran before the deploy under `key` failed its check
        (once, as an effect) and park the task with what happened."""
        task, claim = work.task, work.claim
        release = key.rsplit(":", 1)[1]
        why = f"the deploy of {release[:12]} to {target} failed its check"
        if not previous:
            return pl.parked(
                task.stage, f"{why}, and {target} ran no earlier release to roll back to"
            )
        back = rollback_key(key)
        effect = self.store.get_effect(back)
        if effect is None or effect.state != EffectState.SUCCEEDED:
            self.store.begin_effect(
                claim, back, EffectKind.ROLLBACK.for_target(target), repo.name, previous
            )
            code, timed_out, proc, log_path = self._run(
                work,
                repo.deploy[target].command,
                worktree,
                target,
                previous,
                {"ORCH_ROLLBACK_FROM": release},
            )
            if code != 0 or timed_out:
                self.store.finish_effect(
                    claim,
                    back,
                    EffectState.UNKNOWN if timed_out else EffectState.FAILED,
                    {"exit_code": code, "timed_out": timed_out, "log": str(log_path)},
                )
                return pl.parked(
                    task.stage,
                    f"{why}, and the rollback to {previous[:12]} failed too: {proc.tail(300)};"
                    f" what {target} runs is unknown",
                )
            self.store.finish_effect(
                claim,
                back,
                EffectState.SUCCEEDED,
                {
                    "release": previous,
                    "target": target,
                    "rolled_back": release,
                    "log": str(log_path),
                },
            )
        return pl.parked(task.stage, f"{why}; {target} was rolled back to {previous[:12]}")

    def resolve(self, work: Work, target: str, release: str) -> bool | None:
        """After a crash, ask the deploy's check whether `release` reached `target`: True (the
        effect is SUCCEEDED), False (FAILED, so it may run again) or None (nobody can tell)."""
        task, claim = work.task, work.claim
        repo = self.tools.repos.get(task.repo)
        key = deploy_key(repo.name, target, release)
        effect = self.store.get_effect(key)
        if effect is None:
            return False
        self.outbox.mark_unknown(claim, effect)
        spec = repo.deploy.get(target)
        if spec is None or not spec.check:
            return None
        worktree = self.forge.prepare_worktree(task.repo, task.branch)
        return self._settle(work, spec.check, worktree, key, target, release)
