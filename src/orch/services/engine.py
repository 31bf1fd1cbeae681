"""The engine: what a worker does with one claimed job.

A job is "drive task T from version V". The worker holding its lease is the only writer of T's
stage; everything it writes is fenced by the lease token, and its last write is one
compare-and-set that moves T to its next version and enqueues the next job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orch import crashpoints
from orch.domain import integrity, machine
from orch.domain import pipeline as pl
from orch.domain.agent_env import child_env
from orch.domain.errors import (
    AgentError,
    Busy,
    CancelRequested,
    CandidateFailed,
    Conflict,
    DefaultMoved,
    ForgeError,
    HeadMoved,
    LeaseLost,
    MergeConflict,
    OrchError,
    ShuttingDown,
    StoreUnavailable,
)
from orch.domain.failures import FailureClass, classify
from orch.domain.gates import Verdict, artifact_verdict, command_verdict, file_verdict
from orch.domain.ledger import Budget, Limits, Usage, budgets_of, raised
from orch.domain.model import Claim, Effect, Event, GateRecord, Run, Task
from orch.domain.naming import deploy_key, merge_key
from orch.domain.pipeline import Action, Decision, GateKind, GateSpec, Move, Pipeline, StageSpec
from orch.domain.prompts import render
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectState,
    RunOutcome,
    Stage,
    TaskStatus,
    is_terminal,
)
from orch.ports import (
    Agent,
    AgentProcess,
    AgentReport,
    AgentRequest,
    Candidate,
    CommandRunner,
    Confinement,
    Forge,
    Notifier,
    Repos,
    RepoSettings,
    RunAs,
    Sandbox,
    Store,
)
from orch.services.breaker import Breakers
from orch.services.lease import Lease

log = logging.getLogger("orch.engine")


@dataclass(frozen=True)
class EngineSettings:
    logs_dir: Path
    homes_dir: Path  # each task's agents get a home of their own under it
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 10.0
    kill_grace_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    agent_env_allow: tuple[str, ...] = ()
    breaker_threshold: int = 5  # provider failures in a row that open an agent's circuit
    breaker_cooldown_s: float = 30.0


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        forge: Forge,
        agents: Mapping[str, Agent],
        repos: Repos,
        runner: CommandRunner,
        notifier: Notifier,
        sandbox: Sandbox,
        settings: EngineSettings,
        environ: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self.store = store
        self.forge = forge
        self.agents = agents
        self.repos = repos
        self.runner = runner
        self.notifier = notifier
        self.sandbox = sandbox
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.rng = rng or random.Random()
        self.breakers = breakers or Breakers(
            settings.breaker_threshold, settings.breaker_cooldown_s
        )
        # set when the process shuts down: jobs in flight kill their children and let go
        self.shutdown = threading.Event()

    # -- entry -------------------------------------------------------------------------------

    def run_job(self, claim: Claim, owner: str) -> None:
        task = self.store.get_task(claim.task_id)
        if task.version != claim.version or is_terminal(task.status):
            self.store.apply(claim, machine.nothing_to_do(task))
            return
        actor = f"worker:{owner}"
        try:
            pipeline = pl.from_dict(task.pipeline)
        except (KeyError, TypeError, ValueError) as exc:
            self._apply(
                task, claim, _park(task, f"the task's pipeline is unreadable: {exc!r}"), actor
            )
            return
        with Lease(
            self.store,
            claim,
            self.settings.lease_ttl_s,
            self.settings.heartbeat_s,
            shutdown=self.shutdown,
        ) as lease:
            try:
                if task.cancel_requested_at is not None:
                    raise CancelRequested("stop requested")
                if task.status in (TaskStatus.WAITING, TaskStatus.NEEDS_OPERATOR):
                    self._read_inbox(task, pipeline, claim)
                    return
                self._ignore_stray_events(task, claim)
                left = self._deadline_left(task, pipeline)
                if left is not None and left <= 0:
                    self._apply(task, claim, _deadline_passed(task, pipeline), actor)
                    return
                self._run_stage(task, pipeline, claim, lease, actor, left)
            except CancelRequested:
                try:
                    self._cancel(task, pipeline, claim, lease)
                except (LeaseLost, Conflict) as exc:
                    log.warning("stop of %s dropped: %s", task.key, exc)
                except Exception as exc:
                    # the cancel flag stays raised: a retry of this job, or an operator's retry
                    # of the parked task, applies the STOP; its event is read once
                    log.exception("stop of %s could not be applied", task.key)
                    self.store.mark_events(
                        claim,
                        [e.id for e in self.store.pending_events(task.id) if e.kind == "stop"],
                    )
                    self._fail_attempt(
                        task, pipeline, claim, f"stop could not be applied: {exc}", "worker"
                    )
            except (LeaseLost, Conflict) as exc:
                # someone else owns the task now: write nothing more
                log.warning("job %s of %s dropped: %s", claim.job_id, task.key, exc)
            except ShuttingDown:
                # not the task's failure: the job goes back to the queue for the next worker
                with contextlib.suppress(OrchError):
                    self.store.apply(
                        claim, machine.retry("the worker shut down", 0.0, counts=False)
                    )
            except Busy as exc:
                # waiting for another task's merge is not this task's failure
                wait = max(self._backoff(1), 1.0)
                self.store.apply(claim, machine.retry(str(exc), wait, counts=False))
            except OrchError as exc:
                self._fail_attempt(task, pipeline, claim, str(exc), actor)
            except Exception as exc:
                # a bug or an unexpected OS error must cost an attempt, not the worker thread
                log.exception("job %s of %s failed unexpectedly", claim.job_id, task.key)
                self._fail_attempt(task, pipeline, claim, f"{type(exc).__name__}: {exc}", actor)

    # -- the inbox of a task that waits for a person or an operator --------------------------

    def _read_inbox(self, task: Task, pipeline: Pipeline, claim: Claim) -> None:
        if task.status == TaskStatus.NEEDS_OPERATOR:
            # parked by the sweeper mid-merge: ask the forge, so the repository's one merge
            # slot is not held by a task nobody drives
            self._settle_open_effects(task, claim)
        events = self.store.pending_events(task.id)
        stray: list[int] = []
        for ev in events:
            decision = self._decision_for(task, pipeline, ev)
            if decision is not None:
                if decision.stage != task.stage or decision.reset_rounds:
                    self._remove_worktree(task)  # rebuilt from the branch
                # the decision is read in the stage write's own transaction: a crash before it
                # leaves the event unread, for the job that runs again
                self._apply(task, claim, decision, ev.actor, read=[*stray, ev.id])
                return
            if ev.kind == "stop":
                continue  # only a cancel consumes a STOP
            log.info("ignored %s event for %s (%s)", ev.kind, task.key, task.status)
            stray.append(ev.id)
        if task.status == TaskStatus.WAITING and task.waiting_for:
            self._checkpoint_timer(task, pipeline, claim, stray)
            return
        self.store.apply(claim, replace(machine.nothing_to_do(task), read=tuple(stray)))

    def _decision_for(self, task: Task, pipeline: Pipeline, ev: Event) -> Decision | None:
        if ev.kind == "retry" and task.status == TaskStatus.NEEDS_OPERATOR:
            try:
                stage = Stage(str(ev.payload.get("stage") or task.stage))
                decision = pl.on_retry(pipeline, task.stage, stage, ev.actor)
                budget = Budget.from_dict(ev.payload.get("budget"))
            except (ValueError, TypeError, OrchError):
                return None
            if budget.unlimited:
                return decision
            # the operator raised the budget that stopped the task
            limits = self._limits(task, pipeline, pipeline.spec(task.stage))
            return replace(decision, budgets=raised(task.budgets, limits, budget))
        if task.status != TaskStatus.WAITING or task.waiting_for is None:
            return None
        if ev.kind not in ("approve", "reject") or ev.payload.get("checkpoint") not in (
            None,
            task.waiting_for,
        ):
            return None
        if ev.kind == "approve":
            return pl.on_approve(pipeline, task.stage, task.waiting_for, ev.actor)
        return pl.on_reject(
            pipeline,
            task.waiting_for,
            ev.actor,
            str(ev.payload.get("comment", "")),
            task.rework_rounds,
        )

    def _checkpoint_timer(
        self, task: Task, pipeline: Pipeline, claim: Claim, read: Sequence[int]
    ) -> None:
        """The wait's timer fired: remind people, or park the task, as the checkpoint says."""
        assert task.waiting_for is not None
        cp = pipeline.checkpoint(task.waiting_for)
        if cp.timeout_s is None:
            self.store.apply(claim, replace(machine.nothing_to_do(task), read=tuple(read)))
            return
        entered = self.store.transitions(task.id)[-1].at
        overdue = self.store.now() - entered
        if overdue < cp.timeout_s:
            self.store.apply(claim, machine.timer(task, cp.timeout_s - overdue, tuple(read)))
            return
        decision = pl.on_checkpoint_timeout(pipeline, task.stage, cp.name)
        if decision is not None:
            self._apply(task, claim, decision, "timer", read=read)
            return
        rounds = int(overdue // cp.timeout_s)
        key = f"{task.key}#{task.id}:remind:v{task.version}:{rounds}"
        self._send(
            task, claim, key, f"{task.key} still waits for {cp.name} ({overdue:.0f}s so far)"
        )
        self.store.apply(
            claim, machine.timer(task, cp.timeout_s * (rounds + 1) - overdue, tuple(read))
        )

    def _ignore_stray_events(self, task: Task, claim: Claim) -> None:
        events = [e for e in self.store.pending_events(task.id) if e.kind != "stop"]
        for ev in events:
            log.info("ignored %s event for %s: no checkpoint is waiting", ev.kind, task.key)
        self.store.mark_events(claim, [ev.id for ev in events])

    # -- one stage ---------------------------------------------------------------------------

    def _run_stage(
        self,
        task: Task,
        pipeline: Pipeline,
        claim: Claim,
        lease: Lease,
        actor: str,
        deadline_left: float | None,
    ) -> None:
        spec = pipeline.spec(task.stage)
        agent = self._agent_for(task, spec)
        if agent is not None:
            wait = self.breakers.admit(agent.name, agent.preflight)
            if wait > 0:
                # the provider is down: this attempt is not launched, and not counted
                why = self.breakers.state(agent.name)["reason"]
                self.store.apply(
                    claim,
                    machine.retry(
                        f"circuit open for agent {agent.name}: {why}", wait, counts=False
                    ),
                )
                return
        try:
            repo = self.repos.get(task.repo)
            worktree = self.forge.prepare_worktree(task.repo, task.branch)
            lease.check()
            self._stop_point(task, lease)
            ctx = self._context(task, pipeline, spec, claim, repo, worktree)
            try:
                confine = self._confinement(task, pipeline, spec, repo, worktree, agent)
            except AgentError as exc:
                self._apply(task, claim, _park(task, str(exc)), actor)
                return
            if agent is not None:
                _clear_verdicts(spec, ctx, worktree)
                failure = self._run_agent(
                    task, pipeline, spec, agent, claim, lease, ctx, worktree, deadline_left, confine
                )
                if failure is not None:
                    self._apply(task, claim, failure, actor)
                    return
        finally:
            if agent is not None:
                self.breakers.release(agent.name)
        self._stop_point(task, lease)
        lease.renew()
        marker = _round_marker(task, claim)
        head = self.forge.commit_and_push(
            task.repo,
            worktree,
            task.branch,
            f"{task.key}: {task.stage} ({spec.role})\n\n{task.title}\n\n{marker}",
        )
        where = _Where(worktree, ctx, self._code_user(pipeline, agent), confine)
        # a verdict counts only if this round wrote it: compared with the round's first commit
        base = (
            self.forge.round_base(task.repo, head, marker)
            if any(g.kind == GateKind.VERDICT for g in spec.gates)
            else head
        )
        verdicts = [
            self._gate(task, spec, claim, lease, g, where, (base, head)) for g in spec.gates
        ]
        failed = [v for v in verdicts if not v.passed]
        if failed:
            reason = "; ".join(f"{v.gate}: {v.reason}" for v in failed)
            self._apply(
                task,
                claim,
                pl.after_gate_failure(
                    pipeline, task.stage, task.rework_rounds, claim.attempt, reason
                ),
                actor,
            )
            return
        if Action.MERGE in spec.actions:
            held = self._check_integrity(task, pipeline, claim, repo, head)
            if held is not None:
                self._apply(task, claim, held, actor)
                return
        release = ""
        for action in spec.actions:
            self._stop_point(task, lease)
            try:
                outcome = self._act(action, task, spec, claim, lease, repo, where, head, release)
            except (MergeConflict, HeadMoved, CandidateFailed) as exc:
                outcome = pl.after_gate_failure(
                    pipeline,
                    task.stage,
                    task.rework_rounds,
                    pipeline.max_attempts,
                    f"the merge into {repo.default_branch} failed: {exc}",
                )
            if isinstance(outcome, Decision):
                self._apply(task, claim, outcome, actor)
                return
            release = outcome or release
        self._stop_point(task, lease)
        decision = pl.after_success(pipeline, task.stage)
        if decision.status == TaskStatus.DONE:
            self._remove_worktree(task)
            self._delete_merged_branch(task, claim)
        self._apply(task, claim, decision, actor)

    def _check_integrity(
        self, task: Task, pipeline: Pipeline, claim: Claim, repo: RepoSettings, head: str
    ) -> Decision | None:
        """Record what in the change about to merge weakens the checks, as the `integrity`
        gate; with `protect: strict`, a flagged change waits for a person (once per head).
        Conflict markers never merge, in any mode: the change goes back to be resolved."""
        flagged = self._integrity(task.repo, repo, head)
        markers = [f for f in flagged if f.startswith(integrity.MARKERS)]
        if markers:
            self._record_integrity(task, claim, head, False, "; ".join(markers))
            return pl.after_gate_failure(
                pipeline, task.stage, task.rework_rounds, pipeline.max_attempts, "; ".join(markers)
            )
        strict = repo.protect == "strict" and bool(flagged)
        confirmed = ""
        held = [
            g.at
            for g in self.store.gate_records(task.id)
            if g.gate == INTEGRITY_GATE and g.head_sha == head
        ]
        if strict and held:
            # a person approved this head at the checkpoint since it was first held there
            approvals = [
                e
                for e in self.store.events(task.id)
                if e.kind == "approve"
                and e.payload.get("checkpoint") == pl.INTEGRITY
                and e.processed_at is not None
                and e.created_at >= min(held)
            ]
            confirmed = approvals[-1].actor if approvals else ""
        reason = "flagged: " + "; ".join(flagged) if flagged else "nothing weakens the checks"
        if confirmed:
            reason += f"; merged as confirmed by {confirmed}"
        self._record_integrity(task, claim, head, not strict or bool(confirmed), reason)
        if not strict or confirmed:
            return None
        return Decision(
            Move.ADVANCE,
            task.stage,
            TaskStatus.WAITING,
            f"the change weakens the checks ({'; '.join(flagged)}); a person must confirm it",
            waiting_for=pl.INTEGRITY,
        )

    def _record_integrity(
        self, task: Task, claim: Claim, head: str, passed: bool, reason: str
    ) -> None:
        if self.store.find_gate(task.id, claim.version, INTEGRITY_GATE, head) is not None:
            return  # recorded once per version and head
        self.store.record_gate(
            claim,
            GateRecord(task.id, claim.version, INTEGRITY_GATE, head, task.stage, passed, reason),
        )

    def _confinement(
        self,
        task: Task,
        pipeline: Pipeline,
        spec: StageSpec,
        repo: RepoSettings,
        worktree: Path,
        agent: Agent | None,
    ) -> Confinement:
        """The confinement of this stage's agent and gates: they write only in the worktree
        and the task's home, and read nothing of orch's own. A stage that runs neither an agent,
        a command gate nor a merge candidate's tests runs nothing the agents wrote, and needs
        none."""
        runs_code = any(g.kind == GateKind.COMMAND for g in spec.gates) or (
            Action.MERGE in spec.actions and bool(repo.test_command.strip())
        )
        if agent is None and not runs_code:
            return Confinement()
        home = self._home(task)
        user = self._code_user(pipeline, agent)
        if user is not None:
            with contextlib.suppress(OSError):
                os.chown(home, user.uid, user.gid)
                os.chown(home / "tmp", user.uid, user.gid)
        return self.sandbox.confine(repo, worktree, home, self._log_dir(task))

    def _code_user(self, pipeline: Pipeline, agent: Agent | None) -> RunAs | None:
        """Whom the stage's agent and gates run as. A stage without an agent (the merge's test
        of its candidate, say) still runs the agents' code: as the user the pipeline's agents
        run as, never as orch itself when there is one."""
        if agent is not None:
            return agent.run_as
        for s in pipeline.stages:
            other = self.agents.get(s.agent) if s.agent else None
            if other is not None and other.run_as is not None:
                return other.run_as
        return None

    def _home(self, task: Task) -> Path:
        """The task's own home directory, kept across its runs (an agent's sessions live there,
        for a retry to resume)."""
        home = self.settings.homes_dir / f"{task.key}-{task.id}"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return home

    def _home_env(self, task: Task) -> dict[str, str]:
        """HOME and TMPDIR of what runs the agents' work (not of deploys, which keep orch's)."""
        home = self._home(task)
        return {"HOME": str(home), "TMPDIR": str(home / "tmp")}

    def _remove_worktree(self, task: Task) -> None:
        self.forge.remove_worktree(task.repo, task.branch)
        crashpoints.hit("worktree.removed")

    def _context(
        self,
        task: Task,
        pipeline: Pipeline,
        spec: StageSpec,
        claim: Claim,
        repo: RepoSettings,
        worktree: Path,
    ) -> dict[str, Any]:
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
        ctx["artifacts"] = _artifacts(pipeline, spec.stage, ctx, worktree)
        if spec.stage == Stage.REVIEW:
            head = self.forge.branch_head(task.repo, task.branch)
            if head is not None:
                ctx["integrity"] = self._integrity(task.repo, repo, head)
        return ctx

    def _integrity(self, name: str, repo: RepoSettings, head: str) -> list[str]:
        """What in the task's change weakens the checks (see orch.domain.integrity)."""
        return integrity.findings(
            integrity.parse_diff(self.forge.diff(name, head)), repo.protected_paths
        )

    def _child_env(
        self,
        task: Task,
        claim: Claim,
        extra: Mapping[str, str] | None = None,
        allow: frozenset[str] = frozenset(),
    ) -> dict[str, str]:
        base = {
            "ORCH_TICKET": task.key,
            "ORCH_TICKET_TITLE": task.title,
            "ORCH_STAGE": task.stage.value,
            "ORCH_ATTEMPT": str(claim.attempt),
            "ORCH_BRANCH": task.branch,
            # names the orch process that owns this child, so a later one can find it orphaned
            "ORCH_INCARNATION": claim.owner,
        }
        base.update(extra or {})
        return child_env(self.environ, base, allow | frozenset(self.settings.agent_env_allow))

    def _log_dir(self, task: Task) -> Path:
        return self.settings.logs_dir / f"{task.key}-{task.id}"

    def _log_path(self, task: Task, name: str) -> Path:
        return self._log_dir(task) / name

    def _agent_for(self, task: Task, spec: StageSpec) -> Agent | None:
        if spec.agent is None:
            return None
        agent = self.agents.get(spec.agent)
        if agent is None:
            raise OrchError(
                f"stage {task.stage} names agent {spec.agent!r}, which is not configured"
            )
        return agent

    def _run_agent(
        self,
        task: Task,
        pipeline: Pipeline,
        spec: StageSpec,
        agent: Agent,
        claim: Claim,
        lease: Lease,
        ctx: dict[str, Any],
        worktree: Path,
        deadline_left: float | None,
        confine: Confinement,
    ) -> Decision | None:
        """Run the stage's agent; None if it succeeded, else what its failure decides."""
        limits = self._limits(task, pipeline, spec)
        exhausted = limits.exhausted()
        if exhausted:
            return _park(task, exhausted)
        resumed = self._run_to_resume(task, claim, spec, agent.name)
        prompt = render(spec.prompt, ctx)
        log_path = self._log_path(task, f"v{claim.version}-{task.stage}-{claim.attempt}.log")
        prompt_file = log_path.with_suffix(".prompt.md")
        prompt_file.parent.mkdir(parents=True, exist_ok=True)
        prompt_file.write_text(prompt, encoding="utf-8")
        env = self._child_env(
            task,
            claim,
            {"ORCH_ROLE": spec.role, "ORCH_PROMPT_FILE": str(prompt_file), **self._home_env(task)},
            allow=agent.env_names,
        )
        request = AgentRequest(
            task_key=task.key,
            stage=task.stage,
            role=spec.role,
            attempt=claim.attempt,
            prompt=prompt,
            workdir=worktree,
            log_path=log_path,
            env=env,
            timeout_s=spec.timeout_s,
            instructions=render(spec.instructions, ctx),
            budget=limits.left(),
            resume=resumed.session if resumed else None,
            carried=resumed.reported or Usage() if resumed else Usage(),
            confine=confine,
        )
        try:
            proc = agent.start(request)
        except AgentError as exc:
            return _park(task, f"permanent failure, not retried: {exc}")
        try:
            run_id = self.store.start_run(claim, agent.name, proc.pid, str(log_path))
        except BaseException:
            proc.kill(self.settings.kill_grace_s)
            raise
        outcome = RunOutcome.ERROR
        report = None
        try:
            code, outcome = lease.supervise(
                proc,
                spec.timeout_s,
                self.settings.kill_grace_s,
                stall_s=spec.stall_s,
                deadline_s=deadline_left,
            )
            report = proc.report()
            # orch's own reckoning names the budget (the stage's or the task's); an agent that
            # cannot be stopped mid-run is held to it when it ends
            over = limits.crossed(proc.usage())
            said = report.over_budget if report is not None else ""
            if over or said:
                outcome = RunOutcome.BUDGET
                why = over or f"budget: {said.removeprefix('budget: ')}"
                report = replace(
                    report or AgentReport(False), ok=False, detail=why, over_budget=why
                )
        except CancelRequested:
            outcome = RunOutcome.STOPPED
            raise
        except LeaseLost:
            outcome = RunOutcome.LEASE_LOST
            raise
        except ShuttingDown:
            outcome = RunOutcome.SHUTDOWN
            raise
        finally:
            self._close_run(task, claim, run_id, proc, outcome, report)
        return self._judge_run(
            task, pipeline, spec, claim, agent.name, code, outcome, log_path, report, proc
        )

    def _close_run(
        self,
        task: Task,
        claim: Claim,
        run_id: int,
        proc: AgentProcess,
        outcome: RunOutcome,
        report: AgentReport | None,
    ) -> None:
        """Record how the run ended and what it spent. The ledger outlives the lease: the usage
        of a run whose lease was lost is still counted, since that money was spent."""
        code, usage = proc.wait(0), proc.usage()
        detail = report.detail if report else ""
        dropped = proc.dropped_bytes()
        if dropped:
            cut = f"output over the log cap: {dropped} bytes dropped, the tail kept"
            detail = f"{detail}; {cut}" if detail else cut
        # a store that is briefly away is waited for: the run's own account is the right one.
        # If it stays away, the job's last write (or the sweep of its lease) closes the run,
        # and its usage is read back from its log once this worker is gone
        for pause in (*CLOSE_PAUSES_S, None):
            try:
                self.store.finish_run(
                    claim,
                    run_id,
                    code,
                    usage,
                    outcome,
                    session=report.session if report else None,
                    detail=detail,
                    tools=report.tools if report else (),
                    reported=report.reported if report else None,
                )
                return
            except LeaseLost:
                with contextlib.suppress(OrchError):
                    self.store.record_usage(task.id, run_id, usage)
                return
            except StoreUnavailable as exc:
                if pause is None or self.shutdown.wait(pause):
                    log.warning("could not close run %s of %s: %s", run_id, task.key, exc)
                    return

    def account_dead_runs(self, is_dead: Callable[[str], bool]) -> int:
        """Put in the ledger what the runs of dead workers spent, read back from their logs:
        a worker killed mid-run never closed its run, but its agent's spending was real. Runs
        whose worker may still live are left to it."""
        accounted = 0
        dead: dict[str, bool] = {}  # one look at the process table per worker
        for run in self.store.unaccounted_runs():
            if not run.owner:
                continue
            if run.owner not in dead:
                dead[run.owner] = is_dead(run.owner)
            if not dead[run.owner]:
                continue
            agent = self.agents.get(run.agent)
            usage = agent.usage_from_log(Path(run.log_path)) if agent is not None else None
            # counted even when nothing can be read, so the log is read once
            self.store.record_usage(run.task_id, run.id, usage or Usage())
            accounted += 1
        return accounted

    def _limits(self, task: Task, pipeline: Pipeline, spec: StageSpec) -> Limits:
        stage_budget, task_budget = budgets_of(
            task.budgets, spec.stage.value, spec.budget, pipeline.budget
        )
        by_stage = self.store.spending(task.id)
        return Limits(
            stage=spec.stage.value,
            stage_budget=stage_budget,
            task_budget=task_budget,
            stage_spent=by_stage.get(spec.stage, Usage()),
            task_spent=sum(by_stage.values(), Usage()),
        )

    def _run_to_resume(self, task: Task, claim: Claim, spec: StageSpec, agent: str) -> Run | None:
        """The run whose conversation this one continues, if any: the task's latest run, when
        it was this stage's with this agent, left a session, and the stage is being retried:
        another attempt of the same job, or an operator's retry of the stage it stopped at. A
        stage entered from another (a rework, a checkpoint) starts afresh."""
        runs = self.store.runs(task.id)
        if not runs:
            return None
        last = runs[-1]
        if last.stage != spec.stage or last.agent != agent or not last.session:
            return None
        entered = self.store.transitions(task.id)[-1]
        if last.job_id == claim.job_id or entered.from_stage == entered.to_stage == spec.stage:
            return last
        return None

    def _judge_run(
        self,
        task: Task,
        pipeline: Pipeline,
        spec: StageSpec,
        claim: Claim,
        name: str,
        code: int | None,
        outcome: RunOutcome,
        log_path: Path,
        report: AgentReport | None,
        proc: AgentProcess,
    ) -> Decision | None:
        """What an agent's run decides: None if it succeeded, else parking or a retry. Whether
        the provider answered is told to the agent's circuit breaker."""
        if outcome == RunOutcome.BUDGET:
            self.breakers.record(name, ok=True)
            assert report is not None
            return _park(task, f"{report.over_budget} (agent {name}; log: {log_path})")
        if report is not None and code == 0 and not report.ok:
            # the CLI exited cleanly but its own result says it did not do the task
            self.breakers.record(name, ok=True)
            reason = f"agent {name} did not finish: {report.detail} (log: {log_path})"
            return pl.after_attempt_failure(pipeline, task.stage, claim.attempt, reason)
        if outcome == RunOutcome.DEADLINE:
            self.breakers.record(name, ok=True)
            return _deadline_passed(task, pipeline)
        if outcome == RunOutcome.TIMED_OUT:
            reason = f"agent {name} timed out after {spec.timeout_s:g}s (the attempt timeout)"
        elif outcome == RunOutcome.STALLED:
            reason = f"agent {name} stalled: no output for {spec.stall_s:g}s"
        elif code == 0:
            self.breakers.record(name, ok=True)
            return None
        else:
            # an agent that reports how it ended is judged by that, not by its raw events, whose
            # numbers and tool output would read as HTTP statuses; any other by its last output
            said = report.detail if report is not None else ""
            kind, why = classify(code, said if report is not None else proc.tail(4000))
            why = why or said
            reason = f"agent {name} exited {code}" + (f": {why}" if why else "")
            reason += f" (log: {log_path})"
            self.breakers.record(
                name, ok=False, provider_failure=kind == FailureClass.PROVIDER, reason=why
            )
            if kind == FailureClass.PERMANENT:
                return _park(task, f"permanent failure, not retried: {reason}")
            return pl.after_attempt_failure(pipeline, task.stage, claim.attempt, reason)
        self.breakers.record(name, ok=False)
        return pl.after_attempt_failure(pipeline, task.stage, claim.attempt, reason)

    def _deadline_left(self, task: Task, pipeline: Pipeline) -> float | None:
        """Seconds of working time the task has left; None without a deadline. Time spent
        waiting for people, parked or queued for a repository slot does not count."""
        if pipeline.deadline_s is None:
            return None
        return pipeline.deadline_s - task.worked(self.store.now())

    # -- gates -------------------------------------------------------------------------------

    def _gate(
        self,
        task: Task,
        spec: StageSpec,
        claim: Claim,
        lease: Lease,
        gate: GateSpec,
        where: _Where,
        commits: tuple[str, str],
    ) -> GateRecord:
        """Judge `gate` on the round's work: `commits` are the round's base and its head."""
        head = commits[1]
        known = self.store.find_gate(task.id, claim.version, gate.name, head)
        if known is not None:
            return known  # recorded once, replayed on re-entry
        verdict = self._evaluate(task, claim, lease, gate, where, commits)
        return self.store.record_gate(
            claim,
            GateRecord(
                task_id=task.id,
                version=claim.version,
                gate=gate.name,
                head_sha=head,
                stage=task.stage,
                passed=verdict.passed,
                reason=verdict.reason,
            ),
        )

    def _evaluate(
        self,
        task: Task,
        claim: Claim,
        lease: Lease,
        gate: GateSpec,
        where: _Where,
        commits: tuple[str, str],
    ) -> Verdict:
        if gate.kind == GateKind.COMMAND:
            command = render(gate.command, where.ctx)
            if where.run_as is not None:
                where.run_as.grant(where.worktree)  # what orch checked out there is orch's
            # the command runs what the agent wrote: confined as the agent was
            proc = self.runner.start(
                command,
                where.worktree,
                self._child_env(task, claim, self._home_env(task)),
                self._log_path(task, f"v{claim.version}-{task.stage}-gate-{gate.name}.log"),
                where.run_as,
                where.confine,
            )
            code, outcome = lease.supervise(proc, gate.timeout_s, self.settings.kill_grace_s)
            return command_verdict(command, code, outcome != RunOutcome.EXITED, proc.tail())
        # what was committed is judged, not what the worktree holds (an ignored file is not)
        base, head = commits
        rel = render(gate.path, where.ctx)
        text = self.forge.read_file(task.repo, head, rel)
        if gate.kind == GateKind.ARTIFACT:
            return artifact_verdict(rel, text, gate.headings)
        before = self.forge.read_file(task.repo, base, rel) if text is None else None
        return file_verdict(rel, text, before, gate.passes, gate.headings)

    # -- actions: merge and deploy, as intent -> act -> confirm ------------------------------

    def _act(
        self,
        action: Action,
        task: Task,
        spec: StageSpec,
        claim: Claim,
        lease: Lease,
        repo: RepoSettings,
        where: _Where,
        head: str,
        release: str,
    ) -> Decision | str:
        if action == Action.MERGE:
            return self._merge(task, spec, claim, lease, repo, where, head)
        target = "staging" if action == Action.DEPLOY_STAGING else "production"
        release = release or self._released_sha(task)
        if not release:
            return _park(task, f"{action} needs a merged release, and this task has none")
        return self._deploy(task, claim, lease, repo, where.worktree, target, release)

    def _released_sha(self, task: Task) -> str:
        merges = [
            e
            for e in self.store.effects(task.id)
            if e.kind == "merge" and e.state == EffectState.SUCCEEDED
        ]
        return str(merges[-1].result.get("merge_sha", "")) if merges else ""

    def _merge(
        self,
        task: Task,
        spec: StageSpec,
        claim: Claim,
        lease: Lease,
        repo: RepoSettings,
        where: _Where,
        head: str,
    ) -> str:
        """Land exactly `head`, merged onto the default branch's current head, as the tree
        that passed the repository's tests. The merge effect is the repository's one merge
        slot: it is taken before the candidate is built, so candidates are tested one at a
        time per repository, and a default branch that moves anyway is built on and tested
        again."""
        # keyed by the head: the same commits are merged at most once, however often the task
        # comes back through this stage
        key = merge_key(task.key, task.id, task.stage, head)
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            return str(effect.result["merge_sha"])
        if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES:
            # an earlier attempt died between intent and confirm: ask the forge before acting
            self._mark_unknown(claim, effect)
            found = self.forge.find_merge(task.repo, head)
            if found:
                self.store.finish_effect(
                    claim, key, EffectState.SUCCEEDED, {"merge_sha": found, "resolved_by": "forge"}
                )
                return found
        else:
            # an earlier head's merge this task left unresolved would hold the slot against it
            self._settle_open_effects(task, claim)
            self.store.begin_effect(claim, key, "merge", task.repo, head)
        message = f"Merge {task.branch}: {task.key} {task.title}"
        for _ in range(MERGE_TRIES):
            lease.renew()
            try:
                candidate = self.forge.merge_candidate(task.repo, task.branch, head, message)
                failure = self._candidate_failure(task, spec, claim, lease, repo, where, candidate)
                sha = "" if failure is not None else self.forge.land(task.repo, candidate)
            except DefaultMoved as exc:
                log.info("%s: %s; building the merge candidate again", task.key, exc)
                continue
            except HeadMoved as exc:
                # known not merged: the stage reworks it (see _run_stage)
                self.store.finish_effect(claim, key, EffectState.FAILED, {"error": str(exc)})
                raise
            except ForgeError:
                self._settle_merge(claim, key, head, task.repo)
                raise
            if failure is not None:
                # known not merged, and recorded so before the branch moves on: the next round
                # starts from the merged tree, and meets the failure there
                self.store.finish_effect(
                    claim, key, EffectState.FAILED, {"error": str(failure), "to": candidate.sha}
                )
                self.forge.adopt(task.repo, task.branch, candidate)
                raise failure
            crashpoints.hit("forge.response.received")
            self.store.finish_effect(
                claim,
                key,
                EffectState.SUCCEEDED,
                {"merge_sha": sha, "head": head, "base": candidate.base},
            )
            return sha
        self._settle_merge(claim, key, head, task.repo)
        raise Busy(
            f"{repo.default_branch} moved {MERGE_TRIES} times while the merge of {task.branch}"
            " was tested; it is tried again"
        )

    def _candidate_failure(
        self,
        task: Task,
        spec: StageSpec,
        claim: Claim,
        lease: Lease,
        repo: RepoSettings,
        where: _Where,
        candidate: Candidate,
    ) -> OrchError | None:
        """Why the candidate may not land: it conflicts, or the repository's test command fails
        on exactly its tree; None if it may."""
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
        record = self._gate(task, spec, claim, lease, gate, where, (candidate.sha, candidate.sha))
        if record.passed:
            return None
        return CandidateFailed(
            f"{task.branch} merged onto {repo.default_branch} at {candidate.base[:12]}"
            f" (candidate {candidate.sha[:12]}) fails the tests: {record.reason}"
        )

    def _settle_merge(self, claim: Claim, key: str, head: str, repo: str) -> None:
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

    def _settle_open_effects(self, task: Task, claim: Claim) -> None:
        for effect in self.store.effects(task.id):
            if effect.kind == "merge" and effect.state in UNRESOLVED_EFFECT_STATES:
                try:
                    self._settle_merge(claim, effect.key, effect.precondition, task.repo)
                except ForgeError as exc:
                    log.error("could not settle %s: %s", effect.key, exc)
            elif effect.kind.startswith("deploy:") and effect.state == EffectState.INITIATED:
                # nobody drives a parked task's deploy: its outcome is unknown until a retry's
                # check says, and the target's deploy slot is free for others meanwhile
                self._mark_unknown(claim, effect)

    def _mark_unknown(self, claim: Claim, effect: Effect) -> Effect:
        if effect.state == EffectState.UNKNOWN:
            return effect
        return self.store.finish_effect(claim, effect.key, EffectState.UNKNOWN, effect.result)

    def _deploy(
        self,
        task: Task,
        claim: Claim,
        lease: Lease,
        repo: RepoSettings,
        worktree: Path,
        target: str,
        release: str,
    ) -> Decision | str:
        """Move `target` to `release`, forward only: a release already in the history of what
        the target runs is recorded as superseded and not deployed. A deploy is followed by its
        check; one that fails it is rolled back to the release the target ran before."""
        spec = repo.deploy.get(target)
        if spec is None:
            return release  # nothing configured for this target: the stage has no deploy to do
        key = deploy_key(repo.name, target, release)
        skipped = self.store.get_effect(f"{key}:superseded")
        if skipped is not None and skipped.state == EffectState.SUCCEEDED:
            return release
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            if effect.result.get("check") == "failed":
                previous = str(effect.result.get("previous", ""))
                return self._roll_back(task, claim, lease, repo, worktree, target, key, previous)
            return release
        rolling = self.store.get_effect(f"{key}:rollback")
        if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES and rolling is not None:
            # the deploy ran and failed its check, and its rollback was under way
            return self._failed_check(
                task, claim, lease, repo, worktree, target, key, rolling.precondition, {}
            )
        if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES:
            deployed = self._resolve_deploy(task, claim, lease, target, release)
            if deployed is None:
                return _park(task, f"deploy of {release[:12]} to {target} may have run; {key}")
            if deployed:
                return release
        if skipped is not None and skipped.state in UNRESOLVED_EFFECT_STATES:
            # interrupted while recording a skip: nothing ran, the choice is made again below
            self.store.finish_effect(claim, skipped.key, EffectState.FAILED, {"error": "redone"})
        running = self._running(repo.name, target)
        if running and running != release and self.forge.is_ancestor(task.repo, release, running):
            self.store.begin_effect(
                claim, f"{key}:superseded", f"superseded:{target}", repo.name, release
            )
            self.store.finish_effect(
                claim,
                f"{key}:superseded",
                EffectState.SUCCEEDED,
                {"release": release, "target": target, "superseded_by": running},
            )
            log.info("%s: %s already runs %s, newer than %s", task.key, target, running, release)
            return release
        self.store.begin_effect(claim, key, f"deploy:{target}", repo.name, release)
        lease.renew()
        code, timed_out, proc, log_path = self._run_deploy(
            task, claim, lease, spec.command, worktree, target, release
        )
        if code == 0 and not timed_out:
            result = {"release": release, "target": target, "log": str(log_path)}
            if spec.check:
                if self._check(task, claim, lease, spec.check, worktree, target, release) != 0:
                    return self._failed_check(
                        task, claim, lease, repo, worktree, target, key, running, result
                    )
                result["check"] = "passed"
            self.store.finish_effect(
                claim, key, EffectState.SUCCEEDED, {**result, "previous": running}
            )
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

    def _running(self, repo: str, target: str) -> str:
        """The release `target` runs, as far as orch made it so: the last deploy or rollback
        that took effect there; empty if none did."""
        last = self.store.latest_effect(repo, (f"deploy:{target}", f"rollback:{target}"))
        if last is None:
            return ""
        if last.result.get("check") == "failed":
            # recorded after its rollback, which put back the release before it
            back = self.store.get_effect(f"{last.key}:rollback")
            if back is not None and back.state == EffectState.SUCCEEDED:
                return back.precondition
        return last.precondition

    def _run_deploy(
        self,
        task: Task,
        claim: Claim,
        lease: Lease,
        command: str,
        worktree: Path,
        target: str,
        release: str,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[int | None, bool, AgentProcess, Path]:
        """Run a deploy command on the worktree checked out at `release`; never cut off by a
        STOP (the cancel waits for it and applies after)."""
        self.forge.checkout(task.repo, worktree, release)
        log_path = self._log_path(task, f"deploy-{target}-{release[:12]}.log")
        env = {**self._deploy_env(task, claim, target, release), **(extra or {})}
        proc = self.runner.start(command, worktree, env, log_path)
        code, outcome = lease.supervise(proc, 1800.0, self.settings.kill_grace_s, cancellable=False)
        return code, outcome != RunOutcome.EXITED, proc, log_path

    def _check(
        self,
        task: Task,
        claim: Claim,
        lease: Lease,
        check: str,
        worktree: Path,
        target: str,
        release: str,
    ) -> int | None:
        """What the deploy's check answers to "does `target` run `release`?": 0 yes, 1 no,
        anything else (None: it had to be killed) says nothing."""
        probe = self.runner.start(
            check,
            worktree,
            self._deploy_env(task, claim, target, release),
            self._log_path(task, f"deploy-{target}-{release[:12]}-check.log"),
        )
        code, outcome = lease.supervise(probe, 300.0, self.settings.kill_grace_s, cancellable=False)
        return code if outcome == RunOutcome.EXITED else None

    def _failed_check(
        self,
        task: Task,
        claim: Claim,
        lease: Lease,
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
        decision = self._roll_back(task, claim, lease, repo, worktree, target, key, previous)
        release = key.rsplit(":", 1)[1]
        self.store.finish_effect(
            claim,
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
        task: Task,
        claim: Claim,
        lease: Lease,
        repo: RepoSettings,
        worktree: Path,
        target: str,
        key: str,
        previous: str,
    ) -> Decision:
        """Put back the release the target ran before the deploy under `key` failed its check
        (once, as an effect) and park the task with what happened."""
        release = key.rsplit(":", 1)[1]
        why = f"the deploy of {release[:12]} to {target} failed its check"
        if not previous:
            return _park(task, f"{why}, and {target} ran no earlier release to roll back to")
        back = f"{key}:rollback"
        effect = self.store.get_effect(back)
        if effect is None or effect.state != EffectState.SUCCEEDED:
            self.store.begin_effect(claim, back, f"rollback:{target}", repo.name, previous)
            lease.renew()
            code, timed_out, proc, log_path = self._run_deploy(
                task,
                claim,
                lease,
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
                return _park(
                    task,
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
        return _park(task, f"{why}; {target} was rolled back to {previous[:12]}")

    def _deploy_env(self, task: Task, claim: Claim, target: str, release: str) -> dict[str, str]:
        return self._child_env(task, claim, {"ORCH_RELEASE": release, "ORCH_DEPLOY_TARGET": target})

    def _resolve_deploy(
        self, task: Task, claim: Claim, lease: Lease, target: str, release: str
    ) -> bool | None:
        """After a crash, ask the deploy's check whether `release` reached `target`: True (the
        effect is SUCCEEDED), False (FAILED, so it may run again) or None (nobody can tell)."""
        repo = self.repos.get(task.repo)
        key = deploy_key(repo.name, target, release)
        effect = self.store.get_effect(key)
        if effect is None:
            return False
        self._mark_unknown(claim, effect)
        spec = repo.deploy.get(target)
        if spec is None or not spec.check:
            return None
        worktree = self.forge.prepare_worktree(task.repo, task.branch)
        code = self._check(task, claim, lease, spec.check, worktree, target, release)
        if code == 0:
            self.store.finish_effect(
                claim,
                key,
                EffectState.SUCCEEDED,
                {"release": release, "target": target, "resolved_by": "check"},
            )
            return True
        if code == 1:
            self.store.finish_effect(
                claim, key, EffectState.FAILED, {"error": "not deployed", "resolved_by": "check"}
            )
            return False
        # only an explicit "not deployed" (exit 1) allows deploying again
        return None

    # -- writing the outcome -----------------------------------------------------------------

    def _apply(
        self,
        task: Task,
        claim: Claim,
        decision: Decision,
        actor: str,
        read: Sequence[int] = (),
    ) -> None:
        """Write a decision; `read` are the inbox events it answers, marked read with it."""
        if decision.move == Move.RETRY:
            backoff = self._backoff(claim.attempt)
            self.store.apply(claim, machine.retry(decision.reason, backoff, read=tuple(read)))
            return
        if decision.move == Move.PARK:
            self._settle_open_effects(task, claim)
        self._notify(task, claim, decision)
        self.store.apply(claim, machine.advance(task, decision, actor, tuple(read)))

    def _fail_attempt(
        self, task: Task, pipeline: Pipeline, claim: Claim, reason: str, actor: str
    ) -> None:
        try:
            decision = pl.after_attempt_failure(pipeline, task.stage, claim.attempt, reason)
            self._apply(task, claim, decision, actor)
        except (LeaseLost, Conflict) as exc:
            log.warning("could not record the failure of %s: %s", task.key, exc)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(
            self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1)
        )
        return self.rng.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0

    def _notify(self, task: Task, claim: Claim, decision: Decision) -> None:
        if decision.status == TaskStatus.WAITING:
            text = f"{task.key} waits for {decision.waiting_for} before {decision.stage}"
        elif decision.status == TaskStatus.DONE:
            text = f"{task.key} is done: {task.title}"
        elif decision.status == TaskStatus.NEEDS_OPERATOR:
            text = f"{task.key} needs an operator: {decision.reason}"
        elif decision.status == TaskStatus.CANCELLED:
            text = f"{task.key} is cancelled: {decision.reason}"
        else:
            return
        self._send(task, claim, f"{task.key}#{task.id}:notify:v{claim.version + 1}", text)

    def _send(self, task: Task, claim: Claim, key: str, text: str) -> None:
        """Tell people, at most once per key and best-effort: a notifier that fails is
        recorded as FAILED and never fails the stage it reports on."""
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            return
        self.store.begin_effect(claim, key, "notify", task.repo, "")
        try:
            self.notifier.notify(key, text)
        except Exception as exc:
            log.error("notification %s failed: %s", key, exc)
            self.store.finish_effect(
                claim, key, EffectState.FAILED, {"text": text, "error": str(exc)}
            )
            return
        self.store.finish_effect(claim, key, EffectState.SUCCEEDED, {"text": text})

    # -- STOP ----------------------------------------------------------------------------------

    def _stop_point(self, task: Task, lease: Lease) -> None:
        """Between steps: a STOP that arrived is applied here, before anything else starts."""
        if lease.cancel_seen or self.store.cancel_requested(task.id):
            raise CancelRequested("stop requested")

    def _cancel(self, task: Task, pipeline: Pipeline, claim: Claim, lease: Lease) -> None:
        """Apply a STOP. The agent is already dead (the supervisor killed it); an effect still
        in flight is resolved first, so nothing irreversible is cut off or left unknown."""
        stops = [e for e in self.store.events(task.id) if e.kind == "stop"]
        actor = stops[0].actor if stops else "operator"
        reason = str(stops[0].payload.get("reason", "")) if stops else ""
        blocked = self._settle_for_cancel(task, claim, lease)
        if blocked:
            # read, and parked on: only an operator's retry brings the STOP back
            self._apply(
                task,
                claim,
                _park(task, f"stop requested by {actor}, but {blocked}; an operator must decide"),
                "worker",
                read=[e.id for e in stops if e.processed_at is None],
            )
            return
        self._delete_branch(task, claim, "cancel")
        self._remove_worktree(task)
        pending = [e.id for e in self.store.pending_events(task.id)]
        self._apply(task, claim, pl.on_stop(task.stage, actor, reason), actor, read=pending)

    def _delete_branch(self, task: Task, claim: Claim, why: str) -> None:
        """Delete the task's branch on the remote, recorded once (an effect keyed by `why`). The
        delete itself is repeated if asked again: a retry after a crash may have pushed the
        branch anew, and deleting a task branch twice does no harm."""
        key = f"{task.key}#{task.id}:{why}:delete-branch"
        effect = self.store.get_effect(key)
        if effect is not None and effect.state == EffectState.SUCCEEDED:
            self.forge.delete_branch(task.repo, task.branch)
            return
        self.store.begin_effect(claim, key, "delete-branch", task.repo, task.branch)
        self.forge.delete_branch(task.repo, task.branch)
        self.store.finish_effect(claim, key, EffectState.SUCCEEDED, {"branch": task.branch})

    def _delete_merged_branch(self, task: Task, claim: Claim) -> None:
        """A done task's branch leaves the remote once all of it has landed. A branch with
        commits that did not land is kept, and a forge that refuses the delete is recorded,
        not held against a task whose work is done."""
        if not self._released_sha(task):
            return
        head = self.forge.branch_head(task.repo, task.branch)
        if head is None:
            return
        if not self.forge.find_merge(task.repo, head):
            log.warning("%s: %s holds commits that did not land; kept", task.key, task.branch)
            return
        key = f"{task.key}#{task.id}:done:delete-branch"
        try:
            self._delete_branch(task, claim, "done")
        except ForgeError as exc:
            log.error("could not delete %s of %s: %s", task.branch, task.key, exc)
            effect = self.store.get_effect(key)
            if effect is not None and effect.state in UNRESOLVED_EFFECT_STATES:
                self.store.finish_effect(
                    claim, key, EffectState.FAILED, {"branch": task.branch, "error": str(exc)}
                )

    def _settle_for_cancel(self, task: Task, claim: Claim, lease: Lease) -> str:
        """Resolve every effect of the task still in flight; say what could not be resolved."""
        for effect in self.store.effects(task.id):
            if effect.state not in UNRESOLVED_EFFECT_STATES:
                continue
            if effect.kind == "merge":
                self._settle_merge(claim, effect.key, effect.precondition, task.repo)
            elif effect.kind.startswith("deploy:"):
                target = effect.kind.split(":", 1)[1]
                deployed = self._resolve_deploy(task, claim, lease, target, effect.precondition)
                if deployed is None:
                    return f"the outcome of its {target} deploy is unknown"
            else:
                self.store.finish_effect(
                    claim, effect.key, EffectState.FAILED, {"error": "abandoned by a stop"}
                )
        return ""


@dataclass(frozen=True)
class _Where:
    """Where a stage's gates run: its worktree and prompt context, as whom, how confined."""

    worktree: Path
    ctx: dict[str, Any]
    run_as: RunAs | None
    confine: Confinement


CLOSE_PAUSES_S = (0.2, 0.5, 1.0)  # between tries to record how a run ended
MERGE_TRIES = 3  # builds of a merge candidate while the default branch keeps moving
CANDIDATE_GATE = "merge-candidate"
INTEGRITY_GATE = "integrity"


def _round_marker(task: Task, claim: Claim) -> str:
    """The last line of every commit orch makes for this round (this version of the task): it
    lets a verdict gate find where the round began, even after a crash between commit and gate."""
    return f"Orch-Round: {task.key}#{task.id} v{claim.version}"


def _park(task: Task, reason: str) -> Decision:
    return Decision(Move.PARK, task.stage, TaskStatus.NEEDS_OPERATOR, reason)


def _deadline_passed(task: Task, pipeline: Pipeline) -> Decision:
    return _park(task, f"deadline: the task used its {pipeline.deadline_s:g}s of working time")


ARTIFACT_CHARS = 20_000  # of each earlier artifact, in a prompt


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
