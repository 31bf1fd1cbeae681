"""Running one stage: its agent in the task's worktree, its commit, its gates, its actions (merge,
deploy), and the decision that ends it."""

from __future__ import annotations

import contextlib
import os
from functools import partial
from pathlib import Path
from typing import Any

from orch.domain import machine
from orch.domain import pipeline as pl
from orch.domain.errors import (
    AgentError,
    CancelRequested,
    CandidateFailed,
    HeadMoved,
    MergeConflict,
    Unavailable,
)
from orch.domain.model import Task
from orch.domain.pipeline import Action, Decision, GateKind, Pipeline, StageSpec
from orch.domain.prompts import render
from orch.domain.states import Stage, TaskStatus
from orch.ports import Agent, Confinement, RepoSettings
from orch.services.agent_run import AgentRunner
from orch.services.deploy import Deployer
from orch.services.gates import Gates
from orch.services.merge import Merger
from orch.services.outbox import Outbox
from orch.services.pulls import Pulls, released_sha
from orch.services.work import Outcome, Tools, Where, Work, decided

ARTIFACT_CHARS = 20_000  # of each earlier artifact, in a prompt
FORGE = "forge"  # its circuit breaker's name


class StageRunner:
    def __init__(
        self,
        tools: Tools,
        outbox: Outbox,
        agents: AgentRunner,
        gates: Gates,
        merger: Merger,
        deployer: Deployer,
    ) -> None:
        self.tools = tools
        self.store = tools.store
        self.forge = tools.forge
        self.outbox = outbox
        self.agents = agents
        self.gates = gates
        self.merger = merger
        self.deployer = deployer
        self.pulls = Pulls(tools)

    def stop_point(self, work: Work, *, ask: bool = False) -> None:
        """Between steps: a STOP that arrived is applied here, before anything else starts.
        The lease carries the flag back with each renewal and poll; before an irreversible
        action (`ask`), the store is asked as well."""
        if work.lease.cancel_seen or (ask and self.store.cancel_requested(work.task.id)):
            raise CancelRequested("stop requested")

    def run(self, work: Work, deadline_left: float | None) -> Outcome:
        """Run the task's stage, unless the forge's circuit is open: a forge that does not
        answer pauses the work that needs it, not counted against the task."""
        breakers = self.tools.breakers
        wait = breakers.admit(FORGE, _no_preflight)
        if wait > 0:
            why = breakers.state(FORGE)["reason"]
            reason = f"the forge is unavailable: {why}"
            return Outcome(change=machine.retry(reason, wait, counts=False))
        try:
            outcome = self._run(work, deadline_left)
        except Unavailable as exc:
            breakers.record(FORGE, ok=False, provider_failure=True, reason=str(exc))
            raise
        except BaseException:
            breakers.release(FORGE)
            raise
        breakers.record(FORGE, ok=True)
        return outcome

    def _run(self, work: Work, deadline_left: float | None) -> Outcome:
        task, spec, tools = work.task, work.spec, self.tools
        agent = tools.agent_for(task, spec)
        if agent is not None:
            wait = tools.breakers.admit(agent.name, agent.preflight)
            if wait > 0:
                # the provider is down: this attempt is not launched, and not counted
                why = tools.breakers.state(agent.name)["reason"]
                reason = f"circuit open for agent {agent.name}: {why}"
                return Outcome(change=machine.retry(reason, wait, counts=False))
        try:
            repo = tools.repos.get(task.repo)
            # the first attempt of a task's first job: nothing of it was pushed yet
            fresh = work.claim.attempt == 1 and work.claim.version == 1
            worktree = self.forge.prepare_worktree(task.repo, task.branch, fresh=fresh)
            work.lease.check()
            self.stop_point(work)
            ctx = self._context(work, repo, worktree)
            try:
                confine = self._confinement(work, repo, worktree, agent)
            except AgentError as exc:
                return decided(pl.parked(task.stage, str(exc)))
            # people hear that a new task started once its first agent has (not before: the
            # notice is not on the way from the ticket to the agent)
            announce = partial(self.outbox.started, task, work.claim) if task.version == 1 else None
            if agent is not None:
                _clear_verdicts(spec, ctx, worktree)
                failure = self.agents.run(
                    work, agent, ctx, worktree, deadline_left, confine, started=announce
                )
                if failure is not None:
                    return decided(failure)
            elif announce is not None:
                announce()
        finally:
            if agent is not None:
                tools.breakers.release(agent.name)
        self.stop_point(work)
        work.lease.fresh()
        marker = round_marker(task, work.claim.version)
        head = self.forge.commit_and_push(
            task.repo,
            worktree,
            task.branch,
            f"{task.key}: {task.stage} ({spec.role})\n\n{task.title}\n\n{marker}",
        )
        where = Where(worktree, ctx, tools.code_user(work.pipeline, agent), confine)
        # a verdict counts only if this round wrote it: compared with the round's first commit
        base = (
            self.forge.round_base(task.repo, head, marker)
            if any(g.kind == GateKind.VERDICT for g in spec.gates)
            else head
        )
        verdicts = [self.gates.judge(work, g, where, (base, head)) for g in spec.gates]
        # the gates may have run for long: a worker that lost its lease meanwhile shows nothing
        work.lease.fresh()
        self.pulls.show(task, head, verdicts)
        failed = [v for v in verdicts if not v.passed]
        if failed:
            reason = "; ".join(f"{v.gate}: {v.reason}" for v in failed)
            return decided(
                pl.after_gate_failure(
                    work.pipeline, task.stage, task.rework_rounds, work.claim.attempt, reason
                )
            )
        if Action.MERGE in spec.actions:
            held = self.gates.check_integrity(work, repo, head)
            if held is not None:
                return decided(held)
        release = ""
        for action in spec.actions:
            self.stop_point(work, ask=True)
            outcome = self._act(work, action, repo, where, head, release)
            if isinstance(outcome, Decision):
                return decided(outcome)
            release = outcome or release
        self.stop_point(work)
        decision = pl.after_success(work.pipeline, task.stage)
        if decision.status == TaskStatus.DONE:
            tools.remove_worktree(task)
            self.outbox.delete_merged_branch(task, work.claim)
        return decided(decision)

    def _act(
        self,
        work: Work,
        action: Action,
        repo: RepoSettings,
        where: Where,
        head: str,
        release: str,
    ) -> Decision | str:
        task = work.task
        if action == Action.MERGE:
            try:
                return self.merger.merge(work, repo, where, head)
            except (MergeConflict, HeadMoved, CandidateFailed) as exc:
                why = f"the merge into {repo.default_branch} failed: {exc}"
                return pl.after_merge_failure(work.pipeline, task.stage, task.rework_rounds, why)
        target = "staging" if action == Action.DEPLOY_STAGING else "production"
        release = release or released_sha(self.store, task)
        if not release:
            return pl.parked(task.stage, f"{action} needs a merged release, and this task has none")
        return self.deployer.deploy(work, repo, where.worktree, target, release)

    def _confinement(
        self, work: Work, repo: RepoSettings, worktree: Path, agent: Agent | None
    ) -> Confinement:
        """The confinement of this stage's agent and gates: they write only in the worktree
        and the task's home, and read nothing of orch's own. A stage that runs neither an agent,
        a command gate nor a merge candidate's tests runs nothing the agents wrote, and needs
        none."""
        spec, task = work.spec, work.task
        runs_code = any(g.kind == GateKind.COMMAND for g in spec.gates) or (
            Action.MERGE in spec.actions and bool(repo.test_command.strip())
        )
        if agent is None and not runs_code:
            return Confinement()
        home = self.tools.home(task)
        user = self.tools.code_user(work.pipeline, agent)
        if user is not None:
            with contextlib.suppress(OSError):
                os.chown(home, user.uid, user.gid)
                os.chown(home / "tmp", user.uid, user.gid)
        return self.tools.sandbox.confine(repo, worktree, home, self.tools.log_dir(task))

    def _context(self, work: Work, repo: RepoSettings, worktree: Path) -> dict[str, Any]:
        task, spec, claim = work.task, work.spec, work.claim
        ctx: dict[str, Any] = {
            "ticket": {"key": task.key, "title": task.title, "body": task.body, "url": ""},
            "stage": task.stage.value,
            "role": spec.role,
            "attempt": claim.attempt,
            "round": task.rework_rounds,
            "feedback": task.feedback,
            "previous_error": claim.last_error,
            "repo": {
                "name": repo.name,
                "default_branch": repo.default_branch,
                "test_command": repo.test_command,
            },
            "workdir": str(worktree),
            "artifacts": [],
            "integrity": [],
        }
        ctx["artifacts"] = _artifacts(work.pipeline, spec.stage, ctx, worktree)
        if spec.stage == Stage.REVIEW:
            head = self.forge.branch_head(task.repo, task.branch)
            if head is not None:
                ctx["integrity"] = self.gates.findings(task.repo, repo, head)
        return ctx


def round_marker(task: Task, version: int) -> str:
    """The last line of every commit orch makes for this round (this version of the task): it
    lets a verdict gate find where the round began, even after a crash between commit and gate."""
    return f"Orch-Round: {task.key}#{task.id} v{version}"


def _artifacts(
    pipeline: Pipeline, stage: Stage, ctx: dict[str, Any], worktree: Path
) -> list[dict[str, str]]:
    """What the stages before `stage` produced, as their gates name it: the spec, the ADR,
    the review, for the next agent to read in its prompt."""
    out = []
    for earlier in pipeline.stages:
        if earlier.stage == stage:
            break
        for gate in earlier.gates:
            if gate.kind == GateKind.COMMAND:
                continue
            rel = render(gate.path, ctx)
            text = _read_inside(worktree, rel)
            if text:
                if len(text) > ARTIFACT_CHARS:
                    text = text[:ARTIFACT_CHARS] + "\n[... cut by orch]"
                out.append({"stage": earlier.stage.value, "path": rel, "text": text})
    return out


def _clear_verdicts(spec: StageSpec, ctx: dict[str, Any], worktree: Path) -> None:
    """Remove the stage's verdict files before its agent runs: one there after the run is one
    the agent wrote in this round, even if it says what an earlier round's said."""
    for gate in spec.gates:
        if gate.kind != GateKind.VERDICT:
            continue
        path = worktree / render(gate.path, ctx)
        if path.parent.resolve().is_relative_to(worktree.resolve()) and (
            path.is_symlink() or path.is_file()
        ):
            path.unlink()


def _read_inside(root: Path, rel: str) -> str | None:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _no_preflight() -> str | None:
    return None  # the half-open attempt is the probe
