"""Gates: each judged once per (task, version, gate, head), recorded, and replayed on re-entry
(rule 9). Command gates run the agents' code, confined as the agents were; file gates read what
was committed, not what the worktree holds."""

from __future__ import annotations

from orch.domain import integrity
from orch.domain import pipeline as pl
from orch.domain.gates import Verdict, artifact_verdict, command_verdict, file_verdict
from orch.domain.model import GateRecord, Task
from orch.domain.pipeline import Decision, GateKind, GateSpec
from orch.domain.prompts import render
from orch.domain.states import EventKind, RunOutcome
from orch.ports import RepoSettings
from orch.services.work import Tools, Where, Work

CANDIDATE_GATE = "merge-candidate"
INTEGRITY_GATE = "integrity"


class Gates:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.store = tools.store

    def judge(
        self, work: Work, gate: GateSpec, where: Where, commits: tuple[str, str]
    ) -> GateRecord:
        """Judge `gate` on the round's work: `commits` are the round's base and its head."""
        task, claim = work.task, work.claim
        head = commits[1]
        known = self.store.find_gate(task.id, claim.version, gate.name, head)
        if known is not None:
            return known  # recorded once, replayed on re-entry
        verdict = self._evaluate(work, gate, where, commits)
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
        self, work: Work, gate: GateSpec, where: Where, commits: tuple[str, str]
    ) -> Verdict:
        task, claim, tools = work.task, work.claim, self.tools
        if gate.kind == GateKind.COMMAND:
            command = render(gate.command, where.ctx)
            if where.run_as is not None:
                where.run_as.grant(where.worktree)  # what orch checked out there is orch's
            # the command runs what the agent wrote: confined as the agent was
            proc = tools.runner.start(
                command,
                where.worktree,
                tools.child_env(task, claim, tools.home_env(task)),
                tools.log_path(task, f"v{claim.version}-{task.stage}-gate-{gate.name}.log"),
                where.run_as,
                where.confine,
            )
            code, outcome = work.lease.supervise(proc, gate.timeout_s, tools.settings.kill_grace_s)
            return command_verdict(command, code, outcome != RunOutcome.EXITED, proc.tail())
        # what was committed is judged, not what the worktree holds (an ignored file is not)
        base, head = commits
        rel = render(gate.path, where.ctx)
        text = tools.forge.read_file(task.repo, head, rel)
        if gate.kind == GateKind.ARTIFACT:
            return artifact_verdict(rel, text, gate.headings)
        before = tools.forge.read_file(task.repo, base, rel) if text is None else None
        return file_verdict(rel, text, before, gate.passes, gate.headings)

    # -- integrity: what in a change weakens the checks --------------------------------------

    def findings(self, name: str, repo: RepoSettings, head: str) -> list[str]:
        """What in the task's change weakens the checks (see orch.domain.integrity)."""
        return integrity.findings(
            integrity.parse_diff(self.tools.forge.diff(name, head)), repo.protected_paths
        )

    def check_integrity(self, work: Work, repo: RepoSettings, head: str) -> Decision | None:
        """Record what in the change about to merge weakens the checks, as the `integrity`
        gate; with `protect: strict`, a flagged change waits for a person (once per head).
        Conflict markers never merge, in any mode: the change goes back to be resolved."""
        task, pipeline = work.task, work.pipeline
        flagged = self.findings(task.repo, repo, head)
        markers = [f for f in flagged if f.startswith(integrity.MARKERS)]
        if markers:
            self._record(work, head, False, "; ".join(markers))
            return pl.after_merge_failure(
                pipeline, task.stage, task.rework_rounds, "; ".join(markers)
            )
        strict = repo.protect == "strict" and bool(flagged)
        confirmed = self._confirmed_by(task, head) if strict else ""
        reason = "flagged: " + "; ".join(flagged) if flagged else "nothing weakens the checks"
        if confirmed:
            reason += f"; merged as confirmed by {confirmed}"
        self._record(work, head, not strict or bool(confirmed), reason)
        if not strict or confirmed:
            return None
        return pl.held_for_integrity(task.stage, flagged)

    def _confirmed_by(self, task: Task, head: str) -> str:
        """Who approved this head at the integrity checkpoint since it was first held there."""
        held = [
            g.at
            for g in self.store.gate_records(task.id)
            if g.gate == INTEGRITY_GATE and g.head_sha == head
        ]
        if not held:
            return ""
        approvals = [
            e
            for e in self.store.events(task.id)
            if e.kind == EventKind.APPROVE
            and e.payload.get("checkpoint") == pl.INTEGRITY
            and e.processed_at is not None
            and e.created_at >= min(held)
        ]
        return approvals[-1].actor if approvals else ""

    def _record(self, work: Work, head: str, passed: bool, reason: str) -> None:
        task, claim = work.task, work.claim
        if self.store.find_gate(task.id, claim.version, INTEGRITY_GATE, head) is not None:
            return  # recorded once per version and head
        self.store.record_gate(
            claim,
            GateRecord(task.id, claim.version, INTEGRITY_GATE, head, task.stage, passed, reason),
        )
