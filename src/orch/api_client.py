"""The task commands spoken to a running `orch serve` over its API, with a token: what the CLI
does when ORCH_TOKEN is set, so the server records each decision under the token's name and
nothing writes the store behind its back. Every answer has the API's own shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from orch.domain.errors import NotFound, OrchError

TOKEN_VAR = "ORCH_TOKEN"
URL_VAR = "ORCH_URL"


class ApiError(OrchError):
    """What the API answered instead of doing what was asked, as one line."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UnknownKey(ApiError, NotFound):
    """A 404 for a task key."""


class Unreachable(OrchError):
    """No answer from the server: not running there, or not in time."""


def api_url(environ: Mapping[str, str], host: str, port: int) -> str:
    """ORCH_URL, or the address `orch serve` listens on by these settings: an address that
    means every interface is reached on this machine's loopback."""
    given = environ.get(URL_VAR, "").strip()
    if given:
        return given.rstrip("/")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class ApiTasks:
    """The task commands through the API at `base_url`, as the token's holder."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def add(self, repo: str, title: str, body: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/tasks", {"repo": repo, "title": title, "body": body})  # type: ignore[no-any-return]

    def tasks(self, limit: int, status: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._call("GET", "/api/v1/tasks", params=params)  # type: ignore[no-any-return]

    def task(self, key: str) -> dict[str, Any]:
        return self._keyed("GET", key, "")

    def decide(self, key: str, approve: bool, comment: str) -> dict[str, Any]:
        return self._keyed("POST", key, "/approve" if approve else "/reject", {"comment": comment})

    def stop(self, key: str, reason: str) -> dict[str, Any]:
        return self._keyed("POST", key, "/stop", {"reason": reason})

    def retry(
        self, key: str, from_stage: str | None, usd: float | None, tokens: int | None
    ) -> dict[str, Any]:
        body = {"from": from_stage, "budget_usd": usd, "budget_tokens": tokens}
        return self._keyed("POST", key, "/retry", {k: v for k, v in body.items() if v is not None})

    def start(self, key: str) -> dict[str, Any]:
        return self._keyed("POST", key, "/start")

    def _keyed(
        self, method: str, key: str, action: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A call on one task, by its key as typed: the API finds a key in any case."""
        return self._call(method, f"/api/v1/tasks/{_segment(key)}{action}", body)  # type: ignore[no-any-return]

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            answer = self._client.request(method, path, json=body, params=params)
        except httpx.ConnectError as exc:
            raise Unreachable(
                f"no orch serve answers at {self.base_url} ({_why(exc)}); start it, or set"
                f" {URL_VAR} to where it listens"
            ) from exc
        except httpx.TimeoutException as exc:
            raise Unreachable(f"orch serve at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise OrchError(f"cannot reach orch serve at {self.base_url}: {_why(exc)}") from exc
        try:
            data = answer.json()
        except ValueError:
            data = None
        if answer.is_success and data is not None:
            return data
        raise _error(answer.status_code, data, self.base_url)


def _segment(key: str) -> str:
    """A key as one path segment: a slash or a question mark in it stays part of the key."""
    from urllib.parse import quote

    return quote(key, safe="")


def _error(status: int, data: Any, base_url: str) -> ApiError:
    if not isinstance(data, dict) or "error" not in data:
        return ApiError(
            f"the server at {base_url} answered HTTP {status}, not as orch serve does", status
        )
    message = str(data["error"]).strip().splitlines()[0] if str(data["error"]).strip() else ""
    detail = data.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        message += f": {where + ': ' if where else ''}{first.get('msg', '')}"
    if status == 401:
        message += f" (the {TOKEN_VAR} given to {base_url})"
    if status == 404:
        return UnknownKey(message, status)
    return ApiError(message, status)


def _why(exc: httpx.HTTPError) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
