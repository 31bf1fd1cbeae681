"""Reading the agents' own events: how a run ended, what it spent, what it did."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.adapters.agents.claude_code import ClaudeCodeAgent, ClaudeStream
from orch.adapters.agents.codex import CodexAgent, CodexStream, Provider
from orch.domain.errors import ConfigError
from orch.domain.ledger import Budget, Usage
from orch.domain.states import Stage
from orch.ports import AgentRequest


def assistant(msg_id: str, usage: dict, *blocks: dict) -> dict:
    return {"type": "assistant", "message": {"id": msg_id, "content": list(blocks), "usage": usage}}


def result(**fields: object) -> dict:
    return {"type": "result", "session_id": "s-1", **fields}


def test_claude_usage_while_running_counts_each_message_once_at_its_latest_figure() -> None:
    s = ClaudeStream()
    s.feed({"type": "system", "subtype": "init", "session_id": "s-1"})
    tool = {"type": "tool_use", "id": "t1", "name": "Write", "input": {"file_path": "/w/a.md"}}
    s.feed(
        assistant("m1", {"input_tokens": 100, "output_tokens": 1}, {"type": "text", "text": "hi"})
    )
    s.feed(assistant("m1", {"input_tokens": 100, "output_tokens": 40}, tool))
    s.feed(assistant("m2", {"input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 90}))
    assert s.usage() == Usage(tokens_in=130, tokens_out=45, cache_read=90)
    assert s.report(None).tools == ("Write /w/a.md",)
    assert s.session == "s-1"


def partial(msg_id: str, kind: str, usage: dict) -> dict:
    inner: dict = {"type": kind}
    if kind == "message_start":
        inner["message"] = {"id": msg_id, "usage": usage}
    else:
        inner["usage"] = usage
    return {"type": "stream_event", "api_message_id": msg_id, "event": inner}


def test_claude_output_tokens_count_when_the_message_ends_not_at_its_start() -> None:
    s = ClaudeStream()
    s.feed(partial("m1", "message_start", {"input_tokens": 200, "output_tokens": 1}))
    s.feed(assistant("m1", {"input_tokens": 200, "output_tokens": 1}))
    assert s.usage() == Usage(tokens_in=200, tokens_out=1)
    s.feed(partial("m1", "message_delta", {"input_tokens": 200, "output_tokens": 900}))
    assert s.usage() == Usage(tokens_in=200, tokens_out=900)


def sonnet(**extra: object) -> dict:
    return result(
        subtype="success",
        is_error=False,
        result="done",
        total_cost_usd=0.03,
        modelUsage={
            "claude-sonnet-4-5": {"inputTokens": 300, "outputTokens": 70},
            "claude-haiku-4-5": {"inputTokens": 50, "outputTokens": 5},
        },
        **extra,
    )


def test_claude_tokens_are_the_runs_own_and_its_cost_is_the_results() -> None:
    s = ClaudeStream()
    s.feed({"type": "system", "subtype": "init", "session_id": "s-1"})
    s.feed(assistant("m1", {"input_tokens": 300, "output_tokens": 70}))
    s.feed(assistant("m2", {"input_tokens": 50, "output_tokens": 5}))  # a subagent's message
    s.feed(sonnet())
    assert s.usage() == Usage(350, 75, 0, 0, 0.03)
    report = s.report(0)
    assert (report.ok, report.detail, report.session) == (True, "done", "s-1")
    assert report.reported == Usage(350, 75, 0, 0, 0.03)


def test_a_resumed_claude_session_is_charged_only_for_its_own_turns() -> None:
    # the earlier run of the session reported $0.02; the CLI counts it again in this result
    s = ClaudeStream(carried=Usage(200, 50, 0, 0, 0.02))
    s.feed({"type": "system", "subtype": "init", "session_id": "s-1"})
    s.feed(assistant("m3", {"input_tokens": 150, "output_tokens": 25}))
    s.feed(sonnet())
    assert s.usage() == Usage(150, 25, 0, 0, pytest.approx(0.01))


def test_a_failed_resume_leaves_no_session_to_resume_again() -> None:
    s = ClaudeStream()
    s.feed(
        result(
            subtype="error_during_execution",
            is_error=True,
            errors=["No conversation found with session ID: s-1"],
        )
    )
    report = s.report(1)
    assert not report.ok and report.session is None


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (
            result(
                subtype="error_max_turns",
                is_error=True,
                num_turns=3,
                errors=["Reached maximum number of turns (2)"],
            ),
            "turn limit reached after 3 turns",
        ),
        (
            result(subtype="success", is_error=True, api_error_status=529, result="Overloaded"),
            "API error 529: Overloaded",
        ),
        (
            result(subtype="error_during_execution", is_error=True, errors=["tool crashed"]),
            "error_during_execution: tool crashed",
        ),
    ],
)
def test_a_claude_result_that_is_not_a_clean_success_fails_the_run(
    event: dict, detail: str
) -> None:
    s = ClaudeStream()
    s.feed(event)
    report = s.report(1)
    assert not report.ok
    assert report.detail == detail
    assert report.over_budget == ""


def test_claudes_own_budget_limit_is_reported_as_a_budget() -> None:
    s = ClaudeStream()
    s.feed(result(subtype="error_max_budget_usd", is_error=True, errors=["budget exceeded"]))
    report = s.report(1)
    assert not report.ok
    assert report.over_budget.startswith("budget: ")


def test_a_claude_run_that_printed_no_result_succeeds_only_with_exit_zero() -> None:
    assert ClaudeStream().report(0).ok
    failed = ClaudeStream().report(1)
    assert (failed.ok, failed.detail) == (False, "exited 1 without a result event")


def test_codex_usage_keeps_cached_input_apart_from_fresh_input() -> None:
    s = CodexStream()
    s.feed({"type": "thread.started", "thread_id": "th-1"})
    s.feed(
        {
            "type": "item.completed",
            "item": {"id": "i1", "type": "command_execution", "command": "bash -lc 'pytest -q'"},
        }
    )
    s.feed({"type": "item.completed", "item": {"id": "i2", "type": "agent_message", "text": "ok"}})
    s.feed(
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 80},
        }
    )
    assert s.usage() == Usage(tokens_in=600, tokens_out=80, cache_read=400)
    report = s.report(0)
    assert (report.ok, report.detail, report.session) == (True, "ok", "th-1")
    assert report.tools == ("shell bash -lc 'pytest -q'",)


def test_a_failed_codex_turn_fails_the_run_with_its_message() -> None:
    s = CodexStream()
    s.feed({"type": "turn.failed", "error": {"message": "400 Bad Request"}})
    report = s.report(1)
    assert (report.ok, report.detail) == (False, "turn failed: 400 Bad Request")


def test_a_codex_run_that_never_completed_its_turn_reports_its_last_error() -> None:
    s = CodexStream()
    s.feed({"type": "error", "message": "Reconnecting... 1/5"})
    report = s.report(-9)
    assert not report.ok
    assert report.detail == "exited -9 without completing its turn: Reconnecting... 1/5"


def request(tmp_path: Path, **kw: object) -> AgentRequest:
    values: dict = {
        "task_key": "APP-1",
        "stage": Stage.DEVELOPMENT,
        "role": "developer",
        "attempt": 1,
        "prompt": "do it",
        "workdir": tmp_path,
        "log_path": tmp_path / "run.log",
        "env": {},
        "timeout_s": 60.0,
    }
    values.update(kw)
    return AgentRequest(**values)


def test_claude_is_asked_for_stream_json_with_a_fresh_session_and_its_budget(
    tmp_path: Path,
) -> None:
    agent = ClaudeCodeAgent("c", command="/opt/claude", model="m", environ={}, euid=lambda: 1000)
    argv = agent.argv(request(tmp_path, budget=Budget(usd=0.25), instructions="be brief"), "sid")
    assert argv[:5] == ["/opt/claude", "-p", "--output-format", "stream-json", "--verbose"]
    assert "--include-partial-messages" in argv  # output tokens are known only at a message's end
    assert argv[argv.index("--session-id") + 1] == "sid"
    assert argv[argv.index("--max-budget-usd") + 1] == "0.250000"
    assert argv[argv.index("--append-system-prompt") + 1] == "be brief"
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    assert "--resume" not in argv


def test_a_retried_claude_stage_resumes_the_earlier_session(tmp_path: Path) -> None:
    agent = ClaudeCodeAgent("c", command="/opt/claude", environ={}, euid=lambda: 1000)
    argv = agent.argv(request(tmp_path, resume="s-1"), "s-1")
    assert argv[argv.index("--resume") + 1] == "s-1"
    assert "--session-id" not in argv and "--max-budget-usd" not in argv
    # the CLI holds a resumed session's whole cost to its limit, the earlier run's included
    carried = Usage(cost_usd=0.5)
    argv = agent.argv(
        request(tmp_path, resume="s-1", budget=Budget(usd=1.0), carried=carried), "s-1"
    )
    assert argv[argv.index("--max-budget-usd") + 1] == "1.500000"


def test_bypassing_permissions_as_root_is_refused_at_configuration() -> None:
    with pytest.raises(ConfigError, match="refuses permission_mode bypassPermissions as root"):
        ClaudeCodeAgent("c", permission_mode="bypassPermissions", environ={}, euid=lambda: 0)
    # not as another user, nor when orch runs it as one, nor inside a sandbox that says so
    ClaudeCodeAgent("c", permission_mode="bypassPermissions", environ={}, euid=lambda: 1000)
    agent = ClaudeCodeAgent(
        "c", permission_mode="bypassPermissions", run_as="nobody", environ={}, euid=lambda: 0
    )
    assert agent.run_as is not None and agent.run_as.name == "nobody"
    ClaudeCodeAgent(
        "c",
        permission_mode="bypassPermissions",
        env={"IS_SANDBOX": "1"},
        environ={},
        euid=lambda: 0,
    )


def test_the_claude_binary_comes_from_orch_claude_bin_unless_a_path_is_configured() -> None:
    assert ClaudeCodeAgent("c", environ={"ORCH_CLAUDE_BIN": "/x/claude"}).binary == "/x/claude"
    configured = ClaudeCodeAgent("c", command="/y/claude", environ={"ORCH_CLAUDE_BIN": "/x/claude"})
    assert configured.binary == "/y/claude"


def test_a_missing_agent_binary_gets_a_one_line_install_hint() -> None:
    hint = ClaudeCodeAgent("c", command="/nonexistent/claude", environ={}).preflight()
    assert hint == (
        "/nonexistent/claude not found: install it with `npm install -g"
        " @anthropic-ai/claude-code@2.1.328`, or point ORCH_CLAUDE_BIN at the binary"
    )
    hint = CodexAgent("x", command="/nonexistent/codex", environ={}).preflight()
    assert hint is not None and "@openai/codex@0.169.0" in hint and "\n" not in hint


def test_codex_gets_its_provider_as_config_overrides_and_reads_the_prompt_from_stdin(
    tmp_path: Path,
) -> None:
    agent = CodexAgent(
        "x",
        command="/opt/codex",
        model="gpt-x",
        provider=Provider("box", "http://127.0.0.1:9/v1", "BOX_KEY"),
        environ={},
    )
    argv = agent.argv(request(tmp_path))
    assert argv[:3] == ["/opt/codex", "exec", "--json"]
    assert argv[argv.index("-C") + 1] == str(tmp_path)
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert overrides == [
        'model_provider="box"',
        'model_providers.box={name="box", base_url="http://127.0.0.1:9/v1",'
        ' wire_api="responses", env_key="BOX_KEY"}',
    ]
    assert argv[-1] == "-"
    assert "BOX_KEY" in agent.env_names and "OPENAI_API_KEY" in agent.env_names
