"""Gate verdicts, effects, runs and the ledger, in the SQL store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch import crashpoints
from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import (
    SqlBase,
    _effect,
    _gate,
    _insert_ignore,
    _upsert,
)
from orch.domain.errors import (
    Busy,
    Conflict,
    in_flight,
)
from orch.domain.ledger import AGENTS_OWN, Usage, UsageFrom
from orch.domain.model import (
    Claim,
    Effect,
    GateRecord,
)
from orch.domain.states import (
    UNRESOLVED_EFFECT_STATES,
    EffectState,
    JobState,
    RunOutcome,
    Stage,
    holds_a_slot,
)
from orch.ports import RunUsage


class Records(SqlBase):
    """Gate verdicts, effects, agent runs and the ledger."""

    def record_gate(self, claim: Claim, record: GateRecord) -> GateRecord:
        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            conn.execute(
                _insert_ignore(conn, t.gate_verdicts).values(
                    task_id=record.task_id,
                    version=record.version,
                    gate=record.gate,
                    head_sha=record.head_sha,
                    stage=record.stage.value,
                    passed=record.passed,
                    reason=record.reason,
                    at=self._now_sql,
                )
            )

        self._write(fn)
        found = self.find_gate(record.task_id, record.version, record.gate, record.head_sha)
        assert found is not None
        return found

    def find_gate(self, task_id: int, version: int, gate: str, head_sha: str) -> GateRecord | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.gate_verdicts).where(
                    t.gate_verdicts.c.task_id == task_id,
                    t.gate_verdicts.c.version == version,
                    t.gate_verdicts.c.gate == gate,
                    t.gate_verdicts.c.head_sha == head_sha,
                )
            ).first()
        )
        return _gate(row) if row is not None else None

    def begin_effect(
        self, claim: Claim, key: str, kind: str, repo: str, precondition: str
    ) -> Effect:
        """Record the intent to act. An effect that FAILED (known not to have happened) is
        re-armed for another try; one that exists in any other state is returned as it is."""

        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            inserted = conn.execute(
                _insert_ignore(conn, t.effects)
                .values(
                    key=key,
                    task_id=claim.task_id,
                    repo=repo,
                    kind=str(kind),  # an EffectKind is stored as its value
                    state=EffectState.INITIATED.value,
                    precondition=precondition,
                    result={},
                    lease_token=claim.token,
                    created_at=self._now_sql,
                    updated_at=self._now_sql,
                )
                .returning(t.effects.c.id)
            ).first()
            if inserted is not None:
                return
            existing = conn.execute(
                sa.select(t.effects.c.state).where(t.effects.c.key == key)
            ).scalar()
            if existing is None:
                raise Busy(in_flight(kind, repo))
            if existing == EffectState.FAILED.value:
                conn.execute(
                    sa.update(t.effects)
                    .where(t.effects.c.key == key, t.effects.c.state == EffectState.FAILED.value)
                    .values(
                        state=EffectState.INITIATED.value,
                        precondition=precondition,
                        result={},
                        lease_token=claim.token,
                        updated_at=self._now_sql,
                    )
                )

        self._write(fn, duplicate=lambda: Busy(in_flight(kind, repo)))
        crashpoints.hit("effect.initiated")
        found = self.get_effect(key)
        assert found is not None
        return found

    def finish_effect(
        self, claim: Claim, key: str, state: EffectState, result: Mapping[str, Any]
    ) -> Effect:
        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            res = conn.execute(
                sa.update(t.effects)
                .where(
                    t.effects.c.key == key,
                    t.effects.c.state.in_([st.value for st in UNRESOLVED_EFFECT_STATES]),
                )
                .values(
                    state=state.value,
                    result=dict(result),
                    lease_token=claim.token,
                    updated_at=self._now_sql,
                )
            )
            if res.rowcount != 1:
                raise Conflict(f"effect {key} is already resolved")
            if state not in UNRESOLVED_EFFECT_STATES:
                self._wake_waiting(conn, key)

        self._write(fn, wakes=True)
        if state == EffectState.SUCCEEDED:
            crashpoints.hit("effect.succeeded")
        found = self.get_effect(key)
        assert found is not None
        return found

    def unsettled_merges(self) -> list[Effect]:
        # stated as the index of merges in flight states it, and put in order here (at most one
        # a repository): SQLite would rather read every effect in order than sort a few
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.effects).where(
                    sa.text(t.MERGE_IN_FLIGHT), ~self._running(t.effects.c.task_id)
                )
            ).all()
        )
        return [_effect(r) for r in sorted(rows, key=lambda r: r.id)]

    def settle_effect(self, key: str, state: EffectState, result: Mapping[str, Any]) -> bool:
        def fn(conn: Connection) -> bool:
            unresolved = [st.value for st in UNRESOLVED_EFFECT_STATES]
            res = conn.execute(
                sa.update(t.effects)
                .where(
                    t.effects.c.key == key,
                    t.effects.c.state.in_(unresolved),
                    ~self._running(t.effects.c.task_id),
                )
                .values(state=state.value, result=dict(result), updated_at=self._now_sql)
            )
            if res.rowcount != 1:
                return False
            if state not in UNRESOLVED_EFFECT_STATES:
                self._wake_waiting(conn, key)
            return True

        return bool(self._write(fn, wakes=True))

    def _wake_waiting(self, conn: Connection, key: str) -> None:
        """The effect `key` was resolved: the jobs retried because its slot was taken (another
        merge in flight for the repository, say) are due now rather than after their backoff."""
        row = conn.execute(
            sa.select(t.effects.c.kind, t.effects.c.repo).where(t.effects.c.key == key)
        ).first()
        if row is None or not holds_a_slot(row.kind):
            return
        conn.execute(
            sa.update(t.jobs)
            .where(
                t.jobs.c.state == JobState.QUEUED.value,
                t.jobs.c.repo == row.repo,
                t.jobs.c.last_error == in_flight(row.kind, row.repo),
                t.jobs.c.run_after > self._now_sql,
            )
            .values(run_after=self._now_sql)
        )

    def failed_effects(self, kind: str) -> list[Effect]:
        rows = self._read(
            lambda c: c.execute(
                sa.select(t.effects)
                .where(t.effects.c.kind == kind, t.effects.c.state == EffectState.FAILED.value)
                .order_by(t.effects.c.id)
            ).all()
        )
        return [_effect(r) for r in rows]

    def mark_redone(self, key: str, result: Mapping[str, Any]) -> bool:
        def fn(conn: Connection) -> bool:
            res = conn.execute(
                sa.update(t.effects)
                .where(t.effects.c.key == key, t.effects.c.state == EffectState.FAILED.value)
                .values(
                    state=EffectState.SUCCEEDED.value,
                    result=dict(result),
                    updated_at=self._now_sql,
                )
            )
            return bool(res.rowcount == 1)

        return bool(self._write(fn))

    @staticmethod
    def _running(task_id: Any) -> Any:
        """Whether a job of the task runs: its worker, not the sweeper, settles its effects."""
        return sa.exists().where(
            t.jobs.c.task_id == task_id, t.jobs.c.state == JobState.RUNNING.value
        )

    def latest_effect(
        self, repo: str, kinds: Sequence[str], state: EffectState = EffectState.SUCCEEDED
    ) -> Effect | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.effects)
                .where(
                    t.effects.c.repo == repo,
                    t.effects.c.kind.in_(list(kinds)),
                    t.effects.c.state == state.value,
                )
                .order_by(t.effects.c.updated_at.desc(), t.effects.c.id.desc())
                .limit(1)
            ).first()
        )
        return _effect(row) if row is not None else None

    def get_effect(self, key: str) -> Effect | None:
        row = self._read(
            lambda c: c.execute(sa.select(t.effects).where(t.effects.c.key == key)).first()
        )
        return _effect(row) if row is not None else None

    def start_run(self, claim: Claim, agent: str, pid: int | None, log_path: str) -> int:
        def fn(conn: Connection) -> int:
            self._guard(conn, claim)
            row = {
                "task_id": claim.task_id,
                "job_id": claim.job_id,
                "stage": claim.stage.value,
                "attempt": claim.attempt,
                "agent": agent,
                "pid": pid,
                "log_path": log_path,
                "owner": claim.owner,
            }
            return int(conn.execute(self.sql.start_run, row).scalar_one())

        return self._write(fn)  # type: ignore[no-any-return]

    def finish_run(
        self,
        claim: Claim,
        run_id: int,
        exit_code: int | None,
        usage: Usage,
        outcome: RunOutcome = RunOutcome.EXITED,
        *,
        session: str | None = None,
        detail: str = "",
        tools: Sequence[str] = (),
        reported: Usage | None = None,
        usage_from: UsageFrom | None = None,
    ) -> None:
        def fn(conn: Connection) -> None:
            self._guard(conn, claim)
            ended = {
                "b_run": run_id,
                "exit_code": exit_code,
                "outcome": outcome.value,
                "session": session,
                "detail": detail[:2000],
                "tools": list(tools)[:500] or None,
                "reported": reported.as_dict() if reported else None,
            }
            conn.execute(self.sql.finish_run, ended)
            self._account(conn, claim.task_id, run_id, usage, usage_from)

        self._write(fn)

    def record_usage(
        self, task_id: int, run_id: int, usage: Usage, usage_from: UsageFrom | None = None
    ) -> None:
        """The ledger of a run whose worker lost its lease, or died (read back from its log).
        Not fenced, because the money was spent whoever holds the task now; the run itself
        stays open, as its worker lost it."""
        self._write(lambda conn: self._account(conn, task_id, run_id, usage, usage_from))

    def record_usages(self, spent: Sequence[RunUsage]) -> None:
        if not spent:
            return

        def fn(conn: Connection) -> None:
            # in the order of their runs: two sweeps counting the same runs lock them alike
            for one in sorted(spent, key=lambda s: (s.run_id, s.task_id)):
                self._account(conn, one.task_id, one.run_id, one.usage, one.usage_from)

        self._write(fn)

    def note_spending(self, run_id: int, usage: Usage, retrying: str = "") -> None:
        runs = t.runs
        noted = (
            sa.update(runs)
            .where(runs.c.id == run_id, runs.c.accounted_at.is_(None))
            .values(**asdict(usage), retrying=retrying[:2000])
        )

        def fn(conn: Connection) -> bool:
            before = conn.execute(
                sa.select(runs.c.retrying).where(runs.c.id == run_id, runs.c.accounted_at.is_(None))
            ).first()
            if before is None:  # it ended (or never was): nothing to note
                return False
            conn.execute(noted)
            return (before.retrying or "") != retrying[:2000]

        # what a run spent so far is on no screen (its account is, when it ends); whether it
        # retries is, as why its task is held up
        self._write(fn, shown=bool)

    def retrying_runs(self) -> dict[int, str]:
        runs = t.runs
        query = sa.select(runs.c.task_id, runs.c.retrying).where(
            runs.c.ended_at.is_(None), runs.c.retrying.is_not(None), runs.c.retrying != ""
        )
        rows = self._read(lambda c: c.execute(query).all())
        return {int(r.task_id): str(r.retrying) for r in rows}

    def open_circuit(self, name: str, until: float, cooldown_s: float, reason: str) -> None:
        circuits = t.circuits

        def fn(conn: Connection) -> None:
            opened = {"open_until": until, "cooldown_s": cooldown_s, "reason": reason}
            upsert = _upsert(conn, circuits).values(name=name, **opened)
            # two processes opening it at once: the later end stands
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[circuits.c.name],
                    set_=opened,
                    where=circuits.c.open_until < upsert.excluded.open_until,
                )
            )

        self._write(fn)

    def close_circuit(self, name: str) -> None:
        circuits = t.circuits
        self._write(lambda conn: conn.execute(sa.delete(circuits).where(circuits.c.name == name)))

    def circuits(self) -> dict[str, tuple[float, float, str]]:
        rows = self._read(lambda c: c.execute(sa.select(t.circuits)).all())
        return {
            str(r.name): (float(r.open_until), float(r.cooldown_s), str(r.reason)) for r in rows
        }

    def _account(
        self,
        conn: Connection,
        task_id: int,
        run_id: int,
        usage: Usage,
        usage_from: UsageFrom | None,
    ) -> None:
        # a run's usage is counted once, into the run and into its task's totals
        spent = {
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
            "cache_read": usage.cache_read,
            "cache_write": usage.cache_write,
            "cost_usd": usage.cost_usd,
        }
        source = usage_from or AGENTS_OWN
        res = conn.execute(
            self.sql.account_run,
            {
                "b_run": run_id,
                **spent,
                "tokens_from": source.tokens.value,
                "usd_from": source.usd.value,
            },
        )
        if res.rowcount != 1:
            return
        conn.execute(
            self.sql.account_task,
            {"b_task": task_id, **{f"b_{name}": value for name, value in spent.items()}},
        )

    def spending(self, task_id: int) -> dict[Stage, Usage]:
        """What the task's agent runs have spent, per stage, over all versions and attempts."""
        rows = self._read(
            lambda c: c.execute(
                sa.select(
                    t.runs.c.stage,
                    sa.func.sum(t.runs.c.tokens_in),
                    sa.func.sum(t.runs.c.tokens_out),
                    sa.func.sum(t.runs.c.cache_read),
                    sa.func.sum(t.runs.c.cache_write),
                    sa.func.sum(t.runs.c.cost_usd),
                )
                # a run in flight enters the ledger when it ends (what it noted so far counts
                # only against the budgets over time)
                .where(t.runs.c.task_id == task_id, t.runs.c.accounted_at.is_not(None))
                .group_by(t.runs.c.stage)
            ).all()
        )
        return {
            Stage(r[0]): Usage(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))
            for r in rows
        }

    def spent_since(self, since: float, repo: str | None = None) -> Usage:
        runs = t.runs
        query = sa.select(
            sa.func.coalesce(sa.func.sum(runs.c.tokens_in), 0),
            sa.func.coalesce(sa.func.sum(runs.c.tokens_out), 0),
            sa.func.coalesce(sa.func.sum(runs.c.cache_read), 0),
            sa.func.coalesce(sa.func.sum(runs.c.cache_write), 0),
            sa.func.coalesce(sa.func.sum(runs.c.cost_usd), 0.0),
        ).where(runs.c.started_at >= since)
        if repo is not None:
            query = query.join(t.tasks, t.tasks.c.id == runs.c.task_id).where(
                t.tasks.c.repo == repo
            )
        row = self._read(lambda c: c.execute(query).one())
        return Usage(int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]))

    def spend_over_time(self, since: float, bucket_s: float) -> dict[float, Usage]:
        """What agent runs started since `since` spent, per `bucket_s` interval from the epoch,
        keyed by the interval's start."""
        ratio = t.runs.c.started_at / bucket_s
        # CAST truncates on SQLite (times are positive: a floor) and rounds on PostgreSQL
        index = sa.cast(ratio, sa.Integer) if self.dialect == "sqlite" else sa.func.floor(ratio)
        rows = self._read(
            lambda c: c.execute(
                sa.select(
                    index,
                    sa.func.sum(t.runs.c.tokens_in),
                    sa.func.sum(t.runs.c.tokens_out),
                    sa.func.sum(t.runs.c.cache_read),
                    sa.func.sum(t.runs.c.cache_write),
                    sa.func.sum(t.runs.c.cost_usd),
                )
                .where(t.runs.c.started_at >= since, t.runs.c.accounted_at.is_not(None))
                .group_by(index)
            ).all()
        )
        return {
            int(r[0]) * bucket_s: Usage(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]))
            for r in rows
        }
