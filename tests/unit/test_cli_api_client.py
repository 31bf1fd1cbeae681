"""How the CLI's API client reads what orch serve answers: where it finds the server, the token
it sends, and each refusal turned into one line."""

from __future__ import annotations

import json

import httpx
import pytest

from orch.api_client import ApiError, ApiTasks, UnknownKey, Unreachable, api_url
from orch.domain.errors import NotFound


@pytest.mark.parametrize(
    ("environ", "host", "expected"),
    [
        ({"ORCH_URL": "https://orch.example.com/"}, "127.0.0.1", "https://orch.example.com"),
        ({}, "0.0.0.0", "http://127.0.0.1:8077"),
        ({}, "::", "http://[::1]:8077"),
        ({}, "10.0.0.5", "http://10.0.0.5:8077"),
    ],
)
def test_the_server_is_orch_url_or_where_the_settings_say_it_listens(
    environ: dict[str, str], host: str, expected: str
) -> None:
    assert api_url(environ, host, 8077) == expected


def client(handler: httpx.MockTransport) -> ApiTasks:
    return ApiTasks("http://orch.test", "orch_secret", transport=handler)


def test_a_key_is_sent_as_typed_with_the_token_and_an_unknown_one_is_not_found() -> None:
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path.endswith("/sam-1/approve"):
            return httpx.Response(200, json={"key": "SAM-1", "checkpoint": "p", "recorded": True})
        return httpx.Response(404, json={"error": "no task for ticket NOPE-1"})

    tasks = client(httpx.MockTransport(answer))
    assert tasks.decide("sam-1", True, "ok")["key"] == "SAM-1"
    assert seen == [("/api/v1/tasks/sam-1/approve", "Bearer orch_secret")]
    with pytest.raises(UnknownKey, match="no task for ticket") as missing:
        tasks.task("NOPE-1")
    assert isinstance(missing.value, NotFound)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (403, {"error": "vic is a viewer; this needs operator"}, "vic is a viewer; this needs"),
        (
            422,
            {
                "error": "the request is not valid",
                "detail": [{"loc": ["body", "budget_usd"], "msg": "Input should be > 0"}],
            },
            "the request is not valid: budget_usd: Input should be > 0",
        ),
        (
            401,
            {"error": "unknown or revoked token"},
            "unknown or revoked token (the ORCH_TOKEN given to http://orch.test)",
        ),
        (503, {"error": "store read failed: locked\nmore"}, "store read failed: locked"),
        (
            502,
            "<html>bad gateway</html>",
            "the server at http://orch.test answered HTTP 502, not as orch serve does",
        ),
    ],
)
def test_each_refusal_becomes_one_line(status: int, body: object, message: str) -> None:
    def answer(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, content=json.dumps(body).encode())

    with pytest.raises(ApiError) as refused:
        client(httpx.MockTransport(answer)).retry("SAM-1", None, -1.0, None)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert refused.value.status == status


def test_a_server_that_does_not_answer_is_named() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(Unreachable, match=r"no orch serve answers at http://orch\.test"):
        client(httpx.MockTransport(answer)).tasks(50, None)


def test_retry_sends_only_what_was_given() -> None:
    bodies: list[object] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"key": "SAM-1", "recorded": True})

    client(httpx.MockTransport(answer)).retry("SAM-1", "development", None, 5000)
    assert bodies == [{"from": "development", "budget_tokens": 5000}]
