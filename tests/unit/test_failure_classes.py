"""Failure classes as the CLIs really fail. The events are what Claude Code 2.1.328 and codex
0.169.0 printed against the scripted model server answering with each fault (trimmed to the
fields orch reads); what orch makes of them decides whether a task is parked at once, retried,
or counted against its agent's circuit."""

from __future__ import annotations

from typing import Any

import pytest

from orch.adapters.agents.claude_code import ClaudeStream
from orch.adapters.agents.codex import CodexStream
from orch.domain.failures import FailureClass, classify, provider_answer


def claude_api_error(status: int | None, kind: str, text: str, error: str) -> list[dict[str, Any]]:
    """A request Claude Code gave up on: its synthetic message, then its result."""
    message: dict[str, Any] = {
        "type": "assistant",
        "message": {
            "id": "7156dcd6",
            "model": "<synthetic>",
            "content": [{"type": "text", "text": text}],
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
        "error": error,
        "is_api_error_message": True,
    }
    if status is not None:
        message |= {"api_error_status": status, "api_error_type": kind}
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": text,
        "total_cost_usd": 0,
        "terminal_reason": "api_error",
    }
    return [message, result]


CLAUDE = [
    (
        "not logged in",
        claude_api_error(None, "", "Not logged in · Please run /login", "authentication_failed"),
        FailureClass.PERMANENT,
        "ANTHROPIC_API_KEY",
    ),
    (
        "refused key",
        claude_api_error(
            401,
            "authentication_error",
            "Failed to authenticate. API Error: 401 invalid x-api-key",
            "authentication_failed",
        ),
        FailureClass.PERMANENT,
        "401",
    ),
    (
        "server error",
        claude_api_error(
            500,
            "api_error",
            "API Error: 500 Internal server error. This is a server-side issue, usually"
            " temporary — try again in a moment.",
            "server_error",
        ),
        FailureClass.PROVIDER,
        "500",
    ),
    (
        "overloaded",
        claude_api_error(
            529,
            "overloaded_error",
            "API Error: 529 Overloaded. This is a server-side issue, usually temporary.",
            "server_error",
        ),
        FailureClass.PROVIDER,
        "529",
    ),
    (
        "bad gateway",
        claude_api_error(502, "api_error", "API Error: 502 Bad Gateway", "server_error"),
        FailureClass.PROVIDER,
        "502",
    ),
    (
        "gateway timeout",
        claude_api_error(504, "api_error", "API Error: 504 Gateway Timeout", "server_error"),
        FailureClass.PROVIDER,
        "504",
    ),
]


@pytest.mark.parametrize(
    ("events", "kind", "named"), [c[1:] for c in CLAUDE], ids=[c[0] for c in CLAUDE]
)
def test_a_claude_run_that_gave_up_on_its_provider_is_classed_by_what_it_said(
    events: list[dict[str, Any]], kind: FailureClass, named: str
) -> None:
    stream = ClaudeStream()
    for event in events:
        stream.feed(event)
    report = stream.report(1)
    assert not report.ok
    found, why = classify(1, report.detail, said=True)
    assert found == kind, report.detail
    assert named in why or named in report.detail


CODEX = [
    (
        "refused key",
        "unexpected status 401 Unauthorized: invalid api key, url: http://127.0.0.1:9/v1/responses",
        FailureClass.PERMANENT,
    ),
    (
        "server error",
        "We\u2019re currently experiencing high demand, which may cause temporary errors.",
        FailureClass.PROVIDER,
    ),
    (
        "rate limited",
        "exceeded retry limit, last status: 429 Too Many Requests",
        FailureClass.PROVIDER,
    ),
]


@pytest.mark.parametrize(("message", "kind"), [c[1:] for c in CODEX], ids=[c[0] for c in CODEX])
def test_a_failed_codex_turn_is_classed_by_its_message(message: str, kind: FailureClass) -> None:
    stream = CodexStream()
    for event in (
        {"type": "thread.started", "thread_id": "01a24765"},
        {"type": "turn.started"},
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    ):
        stream.feed(event)
    report = stream.report(1)
    assert classify(1, report.detail, said=True)[0] == kind


def test_claudes_retry_events_are_retries_and_say_what_failed() -> None:
    stream = ClaudeStream()
    stream.feed({"type": "system", "subtype": "init", "session_id": "s"})
    assert not stream.retrying()
    stream.feed(
        {
            "type": "system",
            "subtype": "api_retry",
            "attempt": 2,
            "max_retries": 10,
            "retry_delay_ms": 1200,
            "error_status": 529,
            "error": "overloaded_error",
        }
    )
    assert stream.retrying()
    kind, why, _ = stream.trouble() or (None, "", None)
    assert kind == FailureClass.PROVIDER
    assert why == "the provider failed: HTTP 529 overloaded_error (retry 2 of 10)"
    stream.feed({"type": "stream_event", "event": {"type": "message_start", "message": {}}})
    assert not stream.retrying(), "an answer streaming again is progress"


def test_codex_reconnecting_is_a_retry() -> None:
    stream = CodexStream()
    stream.feed({"type": "error", "message": "Reconnecting... 2/5 (stream disconnected)"})
    assert stream.retrying()
    assert stream.trouble() == (
        FailureClass.PROVIDER,
        "the provider failed: Reconnecting... 2/5 (stream disconnected)",
        None,
    )
    stream.feed({"type": "item.completed", "item": {"type": "agent_message", "text": "hi"}})
    assert not stream.retrying()


@pytest.mark.parametrize(
    "output",
    [
        "FAILED tests/test_login.py::test_redirects_when_not_logged_in",
        "assert response.status_code == 500",
        "E   AssertionError: Internal Server Error",
    ],
)
def test_a_commands_own_output_is_no_word_of_its_provider(output: str) -> None:
    # a command agent's tail is whatever it ran printed: a failing test, not its provider
    assert classify(1, output) == (FailureClass.TRANSIENT, "")


@pytest.mark.parametrize(
    ("status", "error_type", "kind"),
    [
        (401, "authentication_error", FailureClass.PERMANENT),
        (403, "permission_error", FailureClass.PERMANENT),
        (429, "rate_limit_error", FailureClass.PROVIDER),
        (500, "api_error", FailureClass.PROVIDER),
        (502, "", FailureClass.PROVIDER),
        (503, "", FailureClass.PROVIDER),
        (504, "", FailureClass.PROVIDER),
        (529, "overloaded_error", FailureClass.PROVIDER),
        (200, "overloaded_error", FailureClass.PROVIDER),  # an error event mid-stream
        (400, "invalid_request_error", None),  # the request's own fault: the provider is up
        (413, "request_too_large", None),
    ],
)
def test_a_providers_answer_is_classed_by_its_status_and_error_type(
    status: int, error_type: str, kind: FailureClass | None
) -> None:
    assert provider_answer(status, error_type) == kind
