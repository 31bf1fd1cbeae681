"""Running a stage's agent: its request, its supervision under the lease, its run record and
ledger, and what its ending decides."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from structlog.contextvars import bound_contextvars

from orch.domain import pipeline as pl
from orch.domain.errors import (
    AgentError,
    CancelRequested,
    Interrupted,
    LeaseLost,
    OrchError,
    ShuttingDown,
    StoreUnavailable,
    WaitsForBudget,
)
from orch.domain.failures import FailureClass, classify
from orch.domain.ledger import NOTED, Limits, Usage, budgets_of
from orch.domain.model import Run, Task
from orch.domain.periods import WAITS_FOR_BUDGET, OverTime, resets
from orch.domain.pipeline import Decision, Pipeline
from orch.domain.prompts import render
from orch.domain.states import RunOutcome, Stage
from orch.ports import (
    Agent,
    AgentProcess,
    AgentReport,
    AgentRequest,
    Confinement,
    RunUsage,
    Store,
)
from orch.services.in_flight import InFlight, SpendingWatch
from orch.services.over_time import over_time
from orch.services.work import Tools, Work

log = logging.getLogger("orch.engine")

CLOSE_PAUSES_S = (0.2, 0.5, 1.0)  # between tries to record how a run ended


def interrupted(signal: Interrupted) -> RunOutcome:
    """How a run ended when the lease's supervisor interrupted it."""
    if isinstance(signal, CancelRequested):
        return RunOutcome.STOPPED
    if isinstance(signal, ShuttingDown):
        return RunOutcome.SHUTDOWN
    return RunOutcome.LEASE_LOST


def limits_of(
    store: Store,
    task: Task,
    pipeline: Pipeline,
    stage: Stage,
    over: tuple[OverTime, ...] = (),
) -> Limits:
    """What the task's stage and the task may still spend, by their budgets, and `over`, the
    budgets over time of its repository and of all."""
    spec = pipeline.spec(stage)
    stage_budget, task_budget = budgets_of(
        task.budgets, spec.stage.value, spec.budget, pipeline.budget
    )
    # what was spent matters only against a budget: without one, it is not read
    unlimited = stage_budget.unlimited and task_budget.unlimited
    by_stage = {} if unlimited else store.spending(task.id)
    return Limits(
        stage=spec.stage.value,
        stage_budget=stage_budget,
        task_budget=task_budget,
        stage_spent=by_stage.get(spec.stage, Usage()),
        task_spent=sum(by_stage.values(), Usage()),
        over_time=over,
    )


class AgentRunner:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.store = tools.store

    def run(
        self,
        work: Work,
        agent: Agent,
        ctx: dict[str, Any],
        worktree: Path,
        deadline_left: float | None,
        confine: Confinement,
        started: Callable[[], None] | None = None,
    ) -> Decision | None:
        """Run the stage's agent; None if it succeeded, else what its failure decides.
        `started` is called once the agent's process is (and its run recorded)."""
        task, claim, spec, tools = work.task, work.claim, work.spec, self.tools
        repo_budgets = tools.repos.get(task.repo).budgets
        periods = over_time(
            self.store, task.repo, repo_budgets, tools.settings.budgets, live=tools.live_spending()
        )
        limits = limits_of(self.store, task, work.pipeline, task.stage, periods)
        waits = limits.waits_for()
        if waits is not None:
            raise _waits(waits, self.store.now())
        exhausted = limits.exhausted()
        if exhausted:
            return pl.parked(task.stage, exhausted)
        resumed = self._run_to_resume(work, agent.name)
        prompt = render(spec.prompt, ctx)
        log_path = tools.log_path(task, f"v{claim.version}-{task.stage}-{claim.attempt}.log")
        prompt_file = log_path.with_suffix(".prompt.md")
        prompt_file.parent.mkdir(parents=True, exist_ok=True)
        prompt_file.write_text(prompt, encoding="utf-8")
        env = tools.child_env(
            task,
            claim,
            {"ORCH_ROLE": spec.role, "ORCH_PROMPT_FILE": str(prompt_file), **tools.home_env(task)},
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
            return pl.parked(task.stage, f"permanent failure, not retried: {exc}")
        try:
            # read before its row is written: at a period's turn, a run may count twice against
            # the new period's budgets, never not at all
            began = self.store.now()
            run_id = self.store.start_run(claim, agent.name, proc.pid, str(log_path))
        except BaseException:
            proc.kill(tools.settings.kill_grace_s)
            proc.close()
            raise
        with bound_contextvars(run=run_id, agent=agent.name):
            outcome = RunOutcome.ERROR
            report = None
            telling = _Telling(started) if started is not None else None
            flight = InFlight(task.repo, run_id, began, proc)
            tools.running[task.id] = flight
            watch = SpendingWatch(
                self.store,
                flight,
                limits,
                (repo_budgets, tools.settings.budgets),
                lambda: tools.live_spending(but=flight),
                tools.settings.heartbeat_s,
            )
            try:
                code, outcome = work.lease.supervise(
                    proc,
                    spec.timeout_s,
                    tools.settings.kill_grace_s,
                    stall_s=spec.stall_s,
                    deadline_s=deadline_left,
                    on_tick=watch.tick,
                )
                limits = watch.limits
                report = proc.report()
                # orch's own reckoning names the budget (the stage's or the task's); an agent that
                # cannot be stopped mid-run is held to it when it ends. A run that finished its
                # work is kept when only a budget over time is crossed: that money is spent, and
                # the next stage to start waits for the period instead
                usage = proc.usage()
                finished = (
                    code == 0 and outcome == RunOutcome.EXITED and (report is None or report.ok)
                )
                over = limits.crossed(usage, over_time=not finished)
                said = report.over_budget if report is not None else ""
                if over or said:
                    outcome = RunOutcome.BUDGET
                    why = over or f"budget: {said.removeprefix('budget: ')}"
                    report = replace(
                        report or AgentReport(False), ok=False, detail=why, over_budget=why
                    )
            except Interrupted as signal:
                outcome = interrupted(signal)
                raise
            finally:
                if telling is not None:
                    telling.join()  # told before whatever the run's end makes known
                try:
                    self._close(work, run_id, proc, outcome, report)
                finally:
                    # counted as in flight until its account is in the store
                    tools.running.pop(task.id, None)
            return self._judge(work, agent.name, code, outcome, log_path, report, proc, limits)

    def _close(
        self,
        work: Work,
        run_id: int,
        proc: AgentProcess,
        outcome: RunOutcome,
        report: AgentReport | None,
    ) -> None:
        """Record how the run ended and what it spent. The ledger outlives the lease: the usage
        of a run whose lease was lost is still counted, since that money was spent."""
        task, claim = work.task, work.claim
        proc.close()
        code, usage, usage_from = proc.wait(0), proc.usage(), proc.usage_from()
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
                    usage_from=usage_from,
                )
                return
            except LeaseLost:
                try:
                    self.store.record_usage(task.id, run_id, usage, usage_from)
                except OrchError as exc:
                    log.warning("could not count run %s of %s: %s", run_id, task.key, exc)
                return
            except StoreUnavailable as exc:
                if pause is None or self.tools.shutdown.wait(pause):
                    log.warning("could not close run %s of %s: %s", run_id, task.key, exc)
                    return
            except OrchError as exc:
                # in a `finally`: raising would hide why the run ended
                log.warning("could not close run %s of %s: %s", run_id, task.key, exc)
                return

    def account_dead_runs(self, is_dead: Callable[[str], bool]) -> int:
        """Put in the ledger what the runs of dead workers spent, read back from their logs:
        a worker killed mid-run never closed its run, but its agent's spending was real. Runs
        whose worker may still live are left to it. Every log is read first, then all of them
        are written in one transaction."""
        spent: list[RunUsage] = []
        dead: dict[str, bool] = {}  # one look at the process table per worker
        for run in self.store.unaccounted_runs():
            if not run.owner:
                continue
            if run.owner not in dead:
                dead[run.owner] = is_dead(run.owner)
            if not dead[run.owner]:
                continue
            agent = self.tools.agents.get(run.agent)
            metered = agent.usage_from_log(Path(run.log_path)) if agent is not None else None
            # what it noted in the store as it ran, where its log (lost, cut short) says less.
            # Counted even when nothing is known, so the log is read once
            noted = run.usage
            if metered is None or metered.usage.tokens < noted.tokens:
                source = NOTED if noted.tokens or noted.cache_read or noted.cost_usd else None
                spent.append(RunUsage(run.task_id, run.id, noted, source))
            else:
                spent.append(RunUsage(run.task_id, run.id, metered.usage, metered.source))
        self.store.record_usages(spent)
        return len(spent)

    def _run_to_resume(self, work: Work, agent: str) -> Run | None:
        """The run whose conversation this one continues, if any: the task's latest run, when
        it was this stage's with this agent, left a session, and the stage is being retried:
        another attempt of the same job, or an operator's retry of the stage it stopped at. A
        stage entered from another (a rework, a checkpoint) starts afresh."""
        task, stage, last = work.task, work.task.stage, work.claim.last_run
        if last is None or last.stage != stage or last.agent != agent or not last.session:
            return None
        entered = self.store.transitions(task.id)[-1]
        if last.job_id == work.claim.job_id or entered.from_stage == entered.to_stage == stage:
            return last
        return None

    def _judge(
        self,
        work: Work,
        name: str,
        code: int | None,
        outcome: RunOutcome,
        log_path: Path,
        report: AgentReport | None,
        proc: AgentProcess,
        limits: Limits,
    ) -> Decision | None:
        """What an agent's run decides: None if it succeeded, else parking or a retry. Whether
        the provider answered is told to the agent's circuit breaker."""
        task, pipeline, spec, attempt = work.task, work.pipeline, work.spec, work.claim.attempt
        breakers = self.tools.breakers
        if outcome == RunOutcome.BUDGET:
            breakers.record(name, ok=True)
            assert report is not None
            run = proc.usage()
            if not limits.own_spent(run) and limits.over_time:
                # a budget over time stopped it (the proxy may refuse a request that would
                # cross one with the others in flight): the stage waits for the period to end.
                # That counts an attempt: a stage too big for the period does not wait forever
                waits = limits.waits_for(run) or limits.tightest_over_time(run)
                assert waits is not None
                if attempt >= pipeline.max_attempts:
                    return pl.parked(
                        task.stage,
                        f"{WAITS_FOR_BUDGET} {waits.scope} stopped this stage's run"
                        f" {attempt} times: it does not fit in what the period leaves it; raise"
                        f" the budget, or retry the task (agent {name}; log: {log_path})",
                    )
                raise _waits(waits, self.store.now(), run, counts=True)
            return pl.parked(task.stage, f"{report.over_budget} (agent {name}; log: {log_path})")
        succeeded = outcome == RunOutcome.EXITED and code == 0 and (report is None or report.ok)
        trouble = None if succeeded or outcome == RunOutcome.DEADLINE else proc.trouble()
        if trouble is not None:
            # the provider failed the run's last requests: that is why it ended, whatever the
            # CLI made of it (a result, an exit code) or however long it kept retrying
            kind, why, retry_after_s = trouble
            how = {
                RunOutcome.STALLED: f"stalled in provider retries for {spec.stall_s:g}s",
                RunOutcome.TIMED_OUT: f"timed out in provider retries after {spec.timeout_s:g}s",
            }.get(outcome, f"exited {code}")
            reason = f"agent {name} {how}: {why} (log: {log_path})"
            if kind == FailureClass.PERMANENT:
                breakers.record(name, ok=False, reason=why)
                return pl.parked(task.stage, f"permanent failure, not retried: {reason}")
            breakers.record(
                name, ok=False, provider_failure=True, reason=why, retry_after_s=retry_after_s
            )
            return pl.after_attempt_failure(pipeline, task.stage, attempt, reason)
        if report is not None and code == 0 and not report.ok:
            # the CLI exited cleanly but its own result says it did not do the task
            breakers.record(name, ok=True)
            reason = f"agent {name} did not finish: {report.detail} (log: {log_path})"
            return pl.after_attempt_failure(pipeline, task.stage, attempt, reason)
        if outcome == RunOutcome.DEADLINE:
            breakers.record(name, ok=True)
            return pl.deadline_passed(pipeline, task.stage)
        if outcome == RunOutcome.TIMED_OUT:
            reason = f"agent {name} timed out after {spec.timeout_s:g}s (the attempt timeout)"
        elif outcome == RunOutcome.STALLED:
            reason = f"agent {name} stalled: no output for {spec.stall_s:g}s"
        elif code == 0:
            breakers.record(name, ok=True)
            return None
        else:
            # an agent that reports how it ended is judged by that, not by its raw events, whose
            # numbers and tool output would read as HTTP statuses; any other by its last output
            said = report.detail if report is not None else ""
            if report is not None:
                kind, why = classify(code, said, said=True)
            else:
                kind, why = classify(code, proc.tail(4000))
            why = why or said
            reason = f"agent {name} exited {code}" + (f": {why}" if why else "")
            reason += f" (log: {log_path})"
            breakers.record(
                name, ok=False, provider_failure=kind == FailureClass.PROVIDER, reason=why
            )
            if kind == FailureClass.PERMANENT:
                return pl.parked(task.stage, f"permanent failure, not retried: {reason}")
            return pl.after_attempt_failure(pipeline, task.stage, attempt, reason)
        breakers.record(name, ok=False)
        return pl.after_attempt_failure(pipeline, task.stage, attempt, reason)


class _Telling:
    """Tells people the run started, on a thread of its own while the agent is supervised: a
    notifier that takes seconds to answer must hold up neither the agent's start nor its
    supervision. Best effort, as every notice: one the store could not record is not sent (a
    lost lease, say, which the supervision finds on its own). What is no error but the end of
    the process (an interrupt, a simulated crash) reaches the job's own thread at `join`."""

    def __init__(self, started: Callable[[], None]) -> None:
        self._started = started
        self._ended: BaseException | None = None
        # its log lines name the task, job and run as the job's own do
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._tell,), name="orch-started-notice", daemon=True
        )
        self._thread.start()

    def _tell(self) -> None:
        try:
            self._started()
        except (OrchError, Interrupted) as exc:
            log.warning("could not tell that the run started: %s", exc)
        except Exception:
            log.exception("telling that the run started failed")
        except BaseException as exc:
            self._ended = exc

    def join(self) -> None:
        self._thread.join()
        if self._ended is not None:
            raise self._ended


def _waits(
    spent: OverTime, now: float, run: Usage | None = None, counts: bool = False
) -> WaitsForBudget:
    """The stage waits for the end of the period whose budget is spent (`run`: the spending of
    the run that crossed it, not in the store's figures yet)."""
    total = spent.spent + (run or Usage())
    why = spent.budget.crossed(total) or spent.budget.exhausted(total)
    is_spent = f"is spent ({why})" if why else "has too little left for the runs in flight"
    return WaitsForBudget(
        f"{WAITS_FOR_BUDGET} {spent.scope} {is_spent}; the stage starts again when it"
        f" resets at {resets(spent.resets_at)}",
        max(spent.resets_at - now, 1.0),
        counts,
    )


def deadline_left(store: Store, task: Task, pipeline: Pipeline) -> float | None:
    """Seconds of working time the task has left; None without a deadline. Time spent waiting
    for people, parked or queued for a repository slot does not count."""
    if pipeline.deadline_s is None:
        return None
    return pipeline.deadline_s - task.worked(store.now())
