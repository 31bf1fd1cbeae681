"""Budgets, the ledger and the agent's environment, on the engine with an in-process agent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orch.adapters.agents.claude_code import ClaudeCodeAgent
from orch.config import load_settings
from orch.domain import pipeline as pl
from orch.domain.errors import ConfigError
from orch.domain.ledger import Budget, Prices, Usage
from orch.domain.model import Task
from orch.domain.states import RunOutcome, Stage, TaskStatus
from orch.services.views import state_view, task_detail
from orch.testing import InstantAgent, MemoryProcessTable, Rig, rig

PER_RUN = Usage(tokens_in=300, tokens_out=100, cache_read=1000, cache_write=0, cost_usd=0.02)


def build(made: list[Rig], agent: InstantAgent, pipeline: pl.Pipeline, **kw: Any) -> Rig:
    r = rig({"default": agent}, pipeline=pipeline, **kw)
    made.append(r)
    return r


def with_budget(task: Budget | None = None, **stages: Budget) -> pl.Pipeline:
    base = pl.default_pipeline()
    return replace(
        base,
        budget=task or Budget(),
        stages=tuple(
            replace(s, budget=stages.get(s.stage.name.lower(), s.budget)) for s in base.stages
        ),
    )


def drive(r: Rig, task: Task) -> Task:
    """Run until idle, approving every checkpoint on the way."""
    while True:
        r.run_until_idle()
        t = r.store.get_task(task.id)
        if t.status != TaskStatus.WAITING:
            return t
        assert r.intake.decide(t.key, True, "alice")


def test_every_run_is_in_the_ledger_per_stage_task_and_repository(made: list[Rig]) -> None:
    r = build(made, InstantAgent(spends=PER_RUN), pl.default_pipeline())
    task = drive(r, r.intake.file("app", "Add a greeting", ""))
    assert task.status == TaskStatus.DONE
    agent_stages = [s for s in r.pipeline.stages if s.agent]
    five = Usage(1500, 500, 5000, 0, 0.1)
    assert task.spent.tokens_in == five.tokens_in and task.spent.cache_read == five.cache_read
    assert task.spent.cost_usd == pytest.approx(five.cost_usd)
    detail = task_detail(r.store, task)
    ledger = detail["ledger"]
    assert sorted(ledger["stages"]) == sorted(s.stage.value for s in agent_stages)
    assert ledger["stages"]["review"]["spent"] == {
        "usd": 0.02,
        "tokens_in": 300,
        "tokens_out": 100,
        "cache_read": 1000,
        "cache_write": 0,
    }
    assert all(run["usage"]["tokens_in"] == 300 for run in detail["runs"])
    state = state_view(r.store.summary())
    assert state["cost"]["tokens_in"] == 1500
    assert state["cost_by_repo"]["app"]["usd"] == pytest.approx(0.1)


def test_a_run_that_ends_over_its_stage_budget_parks_the_task_with_the_reason_budget(
    made: list[Rig],
) -> None:
    agent = InstantAgent(spends=PER_RUN)
    r = build(made, agent, with_budget(analysis=Budget(tokens=350)))
    task = drive(r, r.intake.file("app", "Add a greeting", ""))
    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.stage == Stage.ANALYSIS
    assert task.status_reason.startswith("budget: stage analysis spent 400 of 350 tokens")
    run = r.store.runs(task.id)[-1]
    assert run.outcome == RunOutcome.BUDGET
    assert run.usage.tokens == 400  # the overshoot is on the record


def test_an_operator_raises_the_used_up_budget_and_the_task_goes_on(made: list[Rig]) -> None:
    agent = InstantAgent(spends=PER_RUN)
    r = build(made, agent, with_budget(task=Budget(usd=0.05)))
    task = drive(r, r.intake.file("app", "Add a greeting", ""))
    # analysis $0.02, architecture $0.04, development would end at $0.06: parked after it
    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.stage == Stage.DEVELOPMENT
    assert task.status_reason.startswith("budget: the task spent $0.0600 of $0.0500")
    started = len(agent.started)
    # a retry without more budget parks again at once, without starting the agent
    assert r.intake.retry(task.key, None, "ops")
    task = drive(r, task)
    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith("budget: the task spent $0.0600 of $0.0500")
    assert len(agent.started) == started
    assert r.intake.retry(task.key, None, "ops", Budget(usd=1.0))
    task = drive(r, task)
    assert task.status == TaskStatus.DONE
    assert task.budgets == {"task": {"usd": 1.0}, "stages": {}}
    assert task_detail(r.store, task)["ledger"]["task"]["budget"] == {"usd": 1.0, "tokens": None}


def test_each_run_is_told_what_it_may_still_spend(made: list[Rig]) -> None:
    agent = InstantAgent(spends=PER_RUN)
    r = build(made, agent, with_budget(task=Budget(usd=1.0), architecture=Budget(tokens=10_000)))
    drive(r, r.intake.file("app", "Add a greeting", ""))
    budgets = {(q.stage, q.budget.usd, q.budget.tokens) for q in agent.started}
    assert (Stage.ANALYSIS, 1.0, None) in budgets
    assert any(
        s == Stage.ARCHITECTURE and t == 10_000 and u == pytest.approx(0.98) for s, u, t in budgets
    )


def test_a_retried_stage_resumes_the_agents_conversation(made: list[Rig]) -> None:
    def fail_first(request: Any) -> int:
        return 1 if request.stage == Stage.ANALYSIS and request.attempt == 1 else 0

    agent = InstantAgent(outcome=fail_first, sessions=True)
    r = build(made, agent, pl.default_pipeline())
    task = r.intake.file("app", "Add a greeting", "")
    r.run_until_idle()
    first, second = [q for q in agent.started if q.stage == Stage.ANALYSIS]
    assert first.resume is None
    assert second.resume == f"{task.key}:analysis:1"
    later = [q for q in agent.started if q.stage != Stage.ANALYSIS]
    assert all(q.resume is None for q in later)


SECRETS = {
    "PLANE_API_KEY": "plane-secret",
    "GITEA_TOKEN": "gitea-secret",
    "GITHUB_TOKEN": "github-secret",
    "TELEGRAM_BOT_TOKEN": "telegram-secret",
    "ORCH_NOTIFIER__TOKEN": "orch-notifier-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
}


def test_an_agent_sees_its_own_variables_and_never_a_tracker_forge_or_notifier_credential(
    made: list[Rig],
) -> None:
    agent = InstantAgent(env_names=frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}))
    environ = {
        **SECRETS,
        "PATH": "/usr/bin",
        "HOME": "/home/orch",
        "LC_ALL": "C.UTF-8",
        "ANTHROPIC_API_KEY": "agent-key",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
        "OPENAI_API_KEY": "another-agents-key",
    }
    r = build(made, agent, pl.default_pipeline(), environ=environ)
    task = r.intake.file("app", "Add a greeting", "")
    r.run_until_idle()
    env = dict(agent.started[0].env)
    assert env["ANTHROPIC_API_KEY"] == "agent-key"
    assert env["PATH"] == "/usr/bin" and env["LC_ALL"] == "C.UTF-8"
    assert env["ORCH_TICKET"] == task.key and env["ORCH_STAGE"] == "analysis"
    assert "OPENAI_API_KEY" not in env
    leaked = [k for k, v in env.items() if v in SECRETS.values() or k in SECRETS]
    assert leaked == []


@pytest.mark.parametrize(
    ("overrides", "where", "name"),
    [
        ({"agent_env_allow": ["GITEA_TOKEN"]}, "agent_env_allow", "GITEA_TOKEN"),
        (
            {"agents": {"a": {"kind": "claude_code", "pass_env": ["ORCH_STORE__URL"]}}},
            "agents.a.claude_code.pass_env",
            "ORCH_STORE__URL",
        ),
        (
            {"agents": {"a": {"kind": "command", "command": "x", "env": {"PLANE_API_KEY": "k"}}}},
            "agents.a.command.env",
            "PLANE_API_KEY",
        ),
        (
            {
                "agents": {
                    "a": {"kind": "codex", "provider": {"base_url": "u", "env_key": "GITHUB_TOKEN"}}
                }
            },
            "agents.a.codex.provider.env_key",
            "GITHUB_TOKEN",
        ),
    ],
)
def test_no_setting_may_hand_an_agent_orchs_own_or_a_services_credentials(
    overrides: dict[str, Any], where: str, name: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    assert str(info.value).startswith(f"invalid setting {where}: Value error, {name} may not be")


CLAUDE_LOG = [
    {"type": "system", "subtype": "init", "session_id": "s-9"},
    {
        "type": "stream_event",
        "api_message_id": "m1",
        "event": {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 800}}},
    },
    {
        "type": "stream_event",
        "api_message_id": "m1",
        "event": {"type": "message_delta", "usage": {"input_tokens": 800, "output_tokens": 300}},
    },
]


def test_what_a_dead_workers_run_spent_is_read_back_from_its_log_once(
    made: list[Rig], tmp_path: Path
) -> None:
    processes = MemoryProcessTable()
    claude = ClaudeCodeAgent(
        "claude",
        command="/nonexistent/claude",
        prices=Prices(input=3.0, output=15.0),
        environ={},
        euid=lambda: 1000,
    )
    r = rig({"default": InstantAgent(), "claude": claude}, processes=processes)
    made.append(r)
    task = r.intake.file("app", "Add a greeting", "")
    # a worker starts a claude run, which prints one model message, and dies
    held = r.store.claim("gone:1:x", 60, r.repos.limit)
    assert held is not None
    log = tmp_path / "run.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in CLAUDE_LOG) + "not json\n")
    r.store.start_run(held, "claude", 4242, str(log))
    assert r.dispatcher.recover().runs_accounted == 0  # its worker may still live
    processes.dead.add("gone:1:x")

    assert r.dispatcher.recover().runs_accounted == 1
    assert r.dispatcher.recover().runs_accounted == 0
    spent = r.store.get_task(task.id).spent
    assert (spent.tokens_in, spent.tokens_out) == (800, 300)
    assert spent.cost_usd == pytest.approx((800 * 3.0 + 300 * 15.0) / 1e6)
