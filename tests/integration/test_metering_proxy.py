"""The real `claude` and `codex` through orch's metering proxy, the scripted model server behind
it: the provider's key stays orch's, every token the provider reports is counted as it streams,
a budget stops a run within one model request, and the provider's failures are told apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_agents import World, drive, writes

from orch.domain.ledger import Figure
from orch.domain.states import RunOutcome, TaskStatus
from orch.testing import Fault
from orch.testing import ModelUsage as Usage

pytestmark = pytest.mark.slow

ONE_STAGE = "replace: true\nmerge: false\nstages:\n  - name: development\n    gates: []\n"
KEY_SEARCH = Path(__file__).with_name("key_search.py")


def test_a_codex_run_is_stopped_within_one_model_request_of_its_budget(world: World) -> None:
    world.pipeline(ONE_STAGE + "    budget: {tokens: 3000}\n")
    app = world.app({"default": world.codex()})
    task = app.intake.file("sample", "Write five files", "", actor="test")
    world.server.set_scripts([writes(5, Usage(200, 1000))])

    task = drive(app, task)

    # codex reports its usage only when its whole turn completes, after all five requests; the
    # proxy counts each answer as it streams: 1200, 2400, then 3600 > 3000
    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith("budget: stage development spent 3600 of 3000 tokens")
    played = [r.turn for r in world.server.requests if r.script]
    assert played[:3] == [0, 1, 2]
    assert max(played) <= 3, f"more than one request after the crossing: {played}"
    [run] = app.store.runs(task.id)
    assert run.outcome == RunOutcome.BUDGET
    assert run.tokens_in + run.tokens_out >= 3600
    assert run.usage_from is not None and run.usage_from.tokens == Figure.PROVIDER


def test_a_claude_run_is_refused_by_the_proxy_once_its_budget_is_spent(world: World) -> None:
    # the budget is crossed by the first answer's input alone: Claude Code's own count of it
    # comes with the answer, the proxy's before the next request is sent
    world.pipeline(ONE_STAGE + "    budget: {tokens: 500}\n")
    app = world.app({"default": world.claude()})
    task = app.intake.file("sample", "Write two files", "", actor="test")
    world.server.set_scripts([writes(3, Usage(1000, 10))])

    task = drive(app, task)

    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith("budget: stage development spent 1010 of 500 tokens")
    played = [r.turn for r in world.server.requests if r.script]
    assert played[0] == 0 and max(played) <= 1, played
    [run] = app.store.runs(task.id)
    assert run.outcome == RunOutcome.BUDGET


def test_the_provider_key_is_nowhere_the_agent_can_read_and_its_token_dies_with_the_run(
    tmp_path: Path,
) -> None:
    key = "sk-ant-orch-test-" + os.urandom(12).hex()
    # orch runs as `orch serve` does, with the key in its own environment from its start
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "ANTHROPIC_"))}
    claude = os.environ.get("ORCH_CLAUDE_BIN", "")
    done = subprocess.run(
        [sys.executable, str(KEY_SEARCH), str(tmp_path)],
        env={**clean, "ANTHROPIC_API_KEY": key, "ORCH_CLAUDE_BIN": claude},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["status"] == "done", seen
    # the provider got the real key, with every request
    assert seen["keys_at_the_provider"] == [key]
    # what the agent could read: its environment, /proc, its home, its worktree, /tmp
    assert seen["searched"], "the agent's search never reached the model"
    assert key not in seen["searched"]
    assert "ANTHROPIC_API_KEY=" in seen["searched"]
    assert "matches: 0" in seen["searched"], seen["searched"][-2000:]
    readable = int(seen["searched"].split("readable: ", 1)[1].split()[0])
    assert readable >= 1, "the search read no environment in /proc, not even its own"
    # nor anything orch left on disk for the run
    assert seen["key_in_files"] == []
    # once the run ended, its token is refused
    assert seen["token_after_the_run"] == 401
    assert seen["live_tokens"] == 0


def test_a_key_the_provider_refuses_parks_the_task_at_once_naming_the_variable(
    world: World,
) -> None:
    world.pipeline(ONE_STAGE)
    world.server.fail(then=Fault(401, "authentication_error", "invalid x-api-key"))
    app = world.app({"default": world.claude()})
    task = app.intake.file("sample", "Write a file", "", actor="test")
    world.server.set_scripts([writes(1, Usage(10, 10))])

    task = drive(app, task)

    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith("permanent failure, not retried: agent default exited")
    assert "the provider refused the key orch holds in ANTHROPIC_API_KEY" in task.status_reason
    assert "HTTP 401 authentication_error" in task.status_reason
    assert len(app.store.runs(task.id)) == 1, "a refused key is not retried"


def test_an_agent_without_a_key_is_parked_before_it_starts_naming_the_variable(
    world: World,
) -> None:
    world.pipeline(ONE_STAGE)
    claude = world.claude()
    del claude["env"]["ANTHROPIC_API_KEY"]
    app = world.app({"default": claude}, environ={"PATH": os.environ["PATH"]})
    task = app.intake.file("sample", "Write a file", "", actor="test")

    task = drive(app, task)

    assert task.status == TaskStatus.NEEDS_OPERATOR
    assert task.status_reason.startswith("permanent failure, not retried: agent 'default' needs")
    assert "ANTHROPIC_API_KEY" in task.status_reason
    assert world.server.requests == []
    assert app.store.runs(task.id) == []


def test_an_outage_of_529s_and_500s_counts_every_failure_and_opens_the_circuit(
    world: World,
) -> None:
    world.pipeline(ONE_STAGE)
    world.server.fail(
        Fault(529, "overloaded_error", "Overloaded"),
        Fault(500, "api_error", "Internal server error"),
        then=Fault(529, "overloaded_error", "Overloaded"),
    )
    app = world.app({"default": world.claude()})
    app.engine.breakers.threshold = 3
    task = app.intake.file("sample", "Write a file", "", actor="test")
    world.server.set_scripts([writes(1, Usage(10, 10))])

    app.dispatcher.run_until_idle()

    runs = app.store.runs(task.id)
    assert len(runs) == 3
    state = app.engine.breakers.state("default")
    assert state["circuit"] == "open", state
    assert "HTTP 529 overloaded_error" in str(state["reason"])
    # three runs opened it: the 500 between the 529s counted as the provider's failure
    assert "500" in runs[1].detail, runs[1].detail


def test_a_run_that_only_retries_its_provider_ends_as_a_provider_failure_saying_so(
    world: World,
) -> None:
    world.pipeline(ONE_STAGE + "    stall_s: 3\n")
    world.server.fail(then=Fault(529, "overloaded_error", "Overloaded"))
    claude = world.claude()
    claude["env"]["CLAUDE_CODE_MAX_RETRIES"] = "20"  # Claude Code's own retries, with backoff
    app = world.app({"default": claude})
    task = app.intake.file("sample", "Write a file", "", actor="test")

    task = drive(app, task)

    [first, *_] = app.store.runs(task.id)
    assert first.outcome == RunOutcome.STALLED
    reasons = [t.reason for t in app.store.transitions(task.id)]
    assert any(
        "stalled in provider retries for 3s: the provider failed: HTTP 529 overloaded_error" in r
        for r in reasons
    ), reasons
    faults = [r for r in world.server.requests if r.script is None]
    assert len(faults) >= 2, "the CLI retried the provider before the stall ended it"


def test_a_run_with_proxy_off_keeps_the_agents_own_figures(world: World) -> None:
    world.pipeline(ONE_STAGE)
    app = world.app({"default": world.claude(proxy=False)})
    task = app.intake.file("sample", "Write a file", "", actor="test")
    world.server.set_scripts([writes(1, Usage(100, 10))])

    task = drive(app, task)

    assert task.status == TaskStatus.DONE, task.status_reason
    [run] = app.store.runs(task.id)
    assert run.usage_from is not None
    assert (run.usage_from.tokens, run.usage_from.usd) == (Figure.AGENT, Figure.AGENT)
    headers = {k.lower(): v for k, v in world.server.requests[-1].headers.items()}
    assert headers.get("x-api-key") == "scripted", "the agent sent its own key"
