"""orch driving the real `claude` and `codex` CLIs against the scripted model server.

Everything is real but the model: orch's store (a SQLite file), git remotes and worktrees, the
gates' commands, and the CLIs as published on the npm registry. What is asserted is what the
real agents wrote, what the gates decided and what the ledger recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from docs_examples import readme_pipeline
from real_agents import SECRETS, SONNET, World, binary, drive, writes

from orch.demo import agents as demo_agents
from orch.demo import sample
from orch.domain.errors import ConfigError
from orch.domain.ledger import Budget, Figure
from orch.domain.states import RunOutcome, Stage, TaskStatus
from orch.services.views import task_detail
from orch.testing import ModelUsage as Usage
from orch.testing import Script, Shell, Turn

pytestmark = pytest.mark.slow


def on_main(remote: Path, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"main:{path}"], cwd=remote, capture_output=True, text=True, check=True
    ).stdout


def scripted_usage(script: Script) -> Usage:
    turns = script.turns
    return Usage(
        sum(t.usage.input_tokens for t in turns),
        sum(t.usage.output_tokens for t in turns),
        sum(t.usage.cache_read_input_tokens for t in turns),
        sum(t.usage.cache_creation_input_tokens for t in turns),
    )


def test_the_readme_budget_example_runs_the_whole_pipeline_on_real_claude_with_codex_reviewing(
    world: World,
) -> None:
    # the README's budget example, which changes the built-in pipeline by stage name, with the
    # README's other example: codex reviews
    world.pipeline(readme_pipeline(budget=True) + "  - name: review\n    agent: codex\n")
    app = world.app({"default": world.claude(), "codex": world.codex()})
    task = app.intake.file("sample", sample.TICKET_TITLE, sample.TICKET_BODY, actor="test")
    scripts = demo_agents.scripts(task.key)
    world.server.set_scripts(scripts)

    task = drive(app, task)

    assert (task.stage, task.status) == (Stage.DONE, TaskStatus.DONE), task.status_reason
    # what the real agents wrote reached main through the merge gate
    assert on_main(world.remote, "sample/slug.py") == sample.SLUGIFY
    assert on_main(world.remote, "tests/test_slug.py") == sample.SLUGIFY_TEST
    work = f"docs/work-items/{task.key}"
    assert on_main(world.remote, f"{work}/spec.md") == sample.SPEC.format(key=task.key)
    assert on_main(world.remote, f"{work}/review.md") == sample.REVIEW.format(key=task.key)
    gates = {(g.stage, g.gate): g for g in app.store.gate_records(task.id)}
    assert all(g.passed for g in gates.values())
    assert sorted(g for _, g in gates) == sorted(
        ["spec", "adr", "tests", "review", "tests", "test-report", "integrity", "merge-candidate"]
    )
    # each stage's usage is exactly what the model server reported for its turns
    runs = {r.stage: r for r in app.store.runs(task.id)}
    assert [r.agent for r in app.store.runs(task.id)] == [
        "default",
        "default",
        "default",
        "codex",
        "default",
    ]
    by_stage = {s.match.removeprefix("Stage: "): s for s in scripts}
    for stage, run in runs.items():
        assert run.outcome == RunOutcome.EXITED and run.exit_code == 0
        want = scripted_usage(by_stage[stage.value])
        assert (run.tokens_in, run.tokens_out, run.cache_read, run.cache_write) == (
            want.input_tokens,
            want.output_tokens,
            want.cache_read_input_tokens,
            want.cache_creation_input_tokens,
        ), stage
        assert run.session, "the agent's session id is recorded for a resume"
    # the tool calls each agent made, as its own events reported them
    assert [t.split()[0] for t in runs[Stage.DEVELOPMENT].tools] == [
        "Write",
        "Write",
        "Bash",
        "Write",
    ]
    assert runs[Stage.DEVELOPMENT].tools[0].endswith("/sample/slug.py")
    assert [t.split()[0] for t in runs[Stage.REVIEW].tools] == ["shell", "patch"]
    # Claude Code prices its own usage; codex's is the configured prices' estimate
    dev = runs[Stage.DEVELOPMENT]
    assert dev.cost_usd == pytest.approx(
        (
            dev.tokens_in * SONNET["input"]
            + dev.tokens_out * SONNET["output"]
            + dev.cache_read * SONNET["cache_read"]
            + dev.cache_write * SONNET["cache_write"]
        )
        / 1e6
    )
    review = runs[Stage.REVIEW]
    assert review.cost_usd == pytest.approx(
        (review.tokens_in * 1.25 + review.tokens_out * 10.0 + review.cache_read * 0.125) / 1e6
    )
    detail = task_detail(app.store, task)
    assert detail["cost"]["usd"] == pytest.approx(sum(r.cost_usd for r in runs.values()), abs=1e-6)
    assert detail["ledger"]["stages"]["review"]["spent"]["tokens_in"] == review.tokens_in
    state = app.store.summary()
    assert state.spent_by_repo["sample"].tokens_in == sum(r.tokens_in for r in runs.values())


def test_a_real_claude_run_over_its_budget_is_stopped_within_one_model_turn(
    world: World,
) -> None:
    world.pipeline(
        "replace: true\nmerge: false\n"
        "stages:\n  - name: development\n    gates: []\n    budget: {tokens: 3000}\n"
    )
    app = world.app({"default": world.claude()})
    task = app.intake.file("sample", "Write five files", "", actor="test")
    # output-heavy turns: the budget is crossed by what the model writes, which the API counts
    # only at the end of each message
    world.server.set_scripts([writes(5, Usage(200, 1000))])

    task = drive(app, task)

    # turn 0: 1200, turn 1: 2400, turn 2: 3600 > 3000, known when turn 2's output is counted
    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith("budget: stage development spent 3600 of 3000 tokens")
    played = [r.turn for r in world.server.requests if r.script]
    assert played[:3] == [0, 1, 2]
    assert max(played) <= 3, f"the agent went on past the turn after the crossing: {played}"
    worktree = next((world.root / "workspaces").glob("**/turn-0.txt")).parent
    assert not (worktree / "turn-4.txt").exists()
    [run] = app.store.runs(task.id)
    assert run.outcome == RunOutcome.BUDGET
    assert run.tokens_in + run.tokens_out >= 3600
    # stopped before Claude Code priced it: the provider's tokens at the price table's rates
    assert run.usage_from is not None
    assert (run.usage_from.tokens, run.usage_from.usd) == (Figure.PROVIDER, Figure.ESTIMATED)
    assert run.cost_usd == pytest.approx(
        (run.tokens_in * SONNET["input"] + run.tokens_out * SONNET["output"]) / 1e6
    )

    # the operator raises the budget; the retry resumes the same conversation and finishes
    assert app.intake.retry(task.key, None, "ops", budget=Budget(tokens=20_000))
    task = drive(app, task)
    assert task.status == TaskStatus.DONE, task.status_reason
    first, second = app.store.runs(task.id)
    assert second.outcome == RunOutcome.EXITED
    assert second.session == first.session
    resumed = [r for r in world.server.requests if r.script][-1]
    assert len(resumed.body["messages"]) > 2, "a resumed run sends the earlier conversation"
    assert task.budgets == {"task": {}, "stages": {"development": {"tokens": 20_000}}}


def test_a_resumed_claude_session_is_not_counted_twice_in_the_ledger(world: World) -> None:
    world.pipeline("replace: true\nmerge: false\nstages:\n  - name: development\n    gates: []\n")
    # two turns per run: the first run stops at its turn limit, the retry resumes it
    app = world.app({"default": world.claude(max_turns=2)})
    task = app.intake.file("sample", "Write three files", "", actor="test")
    script = writes(3, Usage(1000, 100, 500, 50))
    world.server.set_scripts([script])

    task = drive(app, task)

    assert task.status == TaskStatus.DONE, task.status_reason
    first, second = app.store.runs(task.id)
    assert "turn limit" in first.detail
    assert second.session == first.session
    turns = [r.turn for r in world.server.requests if r.script]
    played = [script.turns[t].usage for t in turns if t < len(script.turns)]
    want = (
        sum(u.input_tokens for u in played),
        sum(u.output_tokens for u in played),
        sum(u.cache_read_input_tokens for u in played),
        sum(u.cache_creation_input_tokens for u in played),
    )
    spent = task.spent
    assert (spent.tokens_in, spent.tokens_out, spent.cache_read, spent.cache_write) == want
    assert spent.cost_usd == pytest.approx(
        (
            want[0] * SONNET["input"]
            + want[1] * SONNET["output"]
            + want[2] * SONNET["cache_read"]
            + want[3] * SONNET["cache_write"]
        )
        / 1e6
    )


def test_a_real_agent_sees_only_its_allowlisted_environment(world: World) -> None:
    world.pipeline("replace: true\nmerge: false\nstages:\n  - name: analysis\n    gates: []\n")
    environ = {
        **SECRETS,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(world.root / "home"),
        "ANTHROPIC_API_KEY": "the-agents-own-key",
        "OPENAI_API_KEY": "another-agents-key",
    }
    claude = world.claude()
    del claude["env"]["ANTHROPIC_API_KEY"]  # it comes from orch's environment, allowlisted
    app = world.app({"default": claude}, environ=environ)
    task = app.intake.file("sample", "Show the environment", "", actor="test")
    world.server.set_scripts([Script("Stage: analysis", (Turn((Shell("env | sort"),)),))])

    task = drive(app, task)

    assert task.status == TaskStatus.DONE, task.status_reason
    # the model saw the command's output in the next request: the agent's whole environment
    after = [r for r in world.server.requests if r.script and r.turn == 1]
    assert after, "the agent never sent the tool result back"
    seen = json.dumps(after[-1].body)
    assert "ORCH_TICKET=" + task.key in seen and "ORCH_STAGE=analysis" in seen
    headers = {k.lower(): v for k, v in after[-1].headers.items()}
    assert headers.get("x-api-key") == "the-agents-own-key"
    for name, value in SECRETS.items():
        assert value not in seen, f"{name} reached the agent"
    assert "another-agents-key" not in seen


def orch_demo(root: Path, agent: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "ANTHROPIC_"))}
    return subprocess.run(
        [sys.executable, "-m", "orch.cli", "demo", "--agent", agent, "--dir", str(root), "--json"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("agent", "variable", "name"),
    [("claude", "ORCH_CLAUDE_BIN", "claude"), ("codex", "ORCH_CODEX_BIN", "codex")],
)
def test_orch_demo_drives_the_real_cli_and_shows_tokens_and_cost_per_stage(
    tmp_path: Path, agent: str, variable: str, name: str
) -> None:
    done = orch_demo(tmp_path / "demo", agent, {variable: binary(variable, name)})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["ok"] is True and summary["agent"] == agent
    stages = {row["stage"]: row for row in summary["task"]["stages"]}
    scripts = {s.match.removeprefix("Stage: "): s for s in demo_agents.scripts("DEMO-1")}
    for stage, script in scripts.items():
        want = scripted_usage(script)
        usage = stages[stage]["usage"]
        assert (usage["tokens_in"], usage["tokens_out"], usage["cache_read"]) == (
            want.input_tokens,
            want.output_tokens,
            want.cache_read_input_tokens,
        ), stage
        assert usage["usd"] > 0
    assert "deploy" in stages and stages["deploy"]["usage"]["tokens_in"] == 0
    remote = tmp_path / "demo" / "sample.git"
    assert on_main(remote, "sample/slug.py") == sample.SLUGIFY
    # the real CLI's own events are in the run's log
    logs = list((tmp_path / "demo" / "logs").glob("DEMO-1-*/v*-development-1.log"))
    events = [line for line in logs[0].read_text().splitlines() if line.startswith("{")]
    first = json.loads(events[0])
    assert first["type"] == ("system" if agent == "claude" else "thread.started")


def test_orch_demo_with_a_missing_cli_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    done = orch_demo(tmp_path / "demo", "claude", {"ORCH_CLAUDE_BIN": str(tmp_path / "nope")})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {tmp_path / 'nope'} not found: install it with `npm install -g"
        " @anthropic-ai/claude-code@2.1.328`, or point ORCH_CLAUDE_BIN at the binary"
    )
    assert not (tmp_path / "demo").exists()


def test_a_budget_in_a_unit_the_stages_agent_does_not_report_is_refused_at_filing(
    world: World,
) -> None:
    world.pipeline(
        "replace: true\nmerge: false\nbudget: {usd: 1.0}\nstages:\n  - name: development\n"
    )
    unpriced = world.codex()
    del unpriced["prices"]
    unpriced["model"] = "gpt-of-tomorrow"  # a model the built-in price table does not know
    app = world.app({"default": unpriced})
    with pytest.raises(ConfigError) as info:
        app.intake.file("sample", "Spend", "", actor="test")
    assert str(info.value) == (
        "sample:.orch/pipeline.yaml: the task budget is in usd, which agent 'default' of stage"
        " development does not report (give it `prices`)"
    )
    assert app.store.list_tasks() == []
