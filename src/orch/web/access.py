"""Who is calling, and what a request may carry.

Every route but the health check needs a live bearer token once a token has been made (`orch
token create`), even after every token is revoked; a token's role decides what it may do, and
its name is the actor of what it does. Until the first token is made the API is open, `orch
serve` listens on a loopback address only, and a request must name a loopback host: a web page
whose name was rebound to 127.0.0.1 names its own, and is refused. The dashboard's browser
shows a session cookie instead of the token (orch.web.sessions), and a CSRF token with every
change.

Before a request reaches a route, `Guard` refuses what no caller of this API sends: a body over
the size limit (413); a change asked for by another site (an `Origin` or `Sec-Fetch-Site` that is
not this one's: 403), or with a body that is not JSON (415), so a cross-site form post changes
nothing; JSON with NaN or Infinity, or text with a NUL or a lone surrogate (422).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from orch.domain import access
from orch.domain.access import Role
from orch.ports import Store
from orch.web.sessions import COOKIE, CSRF_HEADER, Sessions

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 256 * 1024
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Caller:
    name: str | None  # the token's name; None when the API is open (no live token)
    role: Role

    def actor(self, claimed: str) -> str:
        """Who a decision is recorded as: the token's name, whatever the body claims."""
        return self.name if self.name is not None else claimed


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def caller_of(store: Store, request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    sessions: Sessions | None = getattr(request.app.state, "sessions", None)
    if not header and sessions is not None and request.cookies.get(COOKIE):
        return _session_caller(store, sessions, request)
    scheme, _, secret = header.partition(" ")
    if header and (scheme.lower() != "bearer" or not secret.strip()):
        raise HTTPException(401, "the Authorization header must be 'Bearer <token>'", _CHALLENGE)
    if secret.strip():
        token = store.token_by_hash(access.digest(secret.strip()))
        if token is None:
            raise HTTPException(401, "unknown or revoked token", _CHALLENGE)
        return Caller(token.name, token.role)
    if store.has_tokens():
        raise HTTPException(401, "a bearer token is required (orch token create)", _CHALLENGE)
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
    if not loopback(host):
        raise HTTPException(
            403, f"with no token made, orch answers only to a loopback host, not {host!r}"
        )
    return Caller(None, Role.ADMIN)


def _session_caller(store: Store, sessions: Sessions, request: Request) -> Caller:
    """The dashboard's caller: its session cookie names the token; a change must also carry
    the session's CSRF token."""
    session = sessions.get(request.cookies[COOKIE])
    if session is None:
        raise HTTPException(401, "the session has ended: sign in again", _CHALLENGE)
    if request.method in CHANGES and not session.csrf_matches(request.headers.get(CSRF_HEADER, "")):
        raise HTTPException(403, "the change does not carry this session's CSRF token")
    token = store.token_by_hash(session.token_hash)
    if token is None:
        raise HTTPException(401, "the token this session signed in with is revoked", _CHALLENGE)
    return Caller(token.name, token.role)


def loopback(host: str) -> bool:
    """Whether `host` (a name or an address, without brackets or port) is this machine's
    loopback: what an API with no token answers to, and may listen on."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def needs(store: Store, role: Role) -> Callable[[Request], Caller]:
    """A route dependency: the caller, who must hold at least `role`."""

    def dependency(request: Request) -> Caller:
        caller = caller_of(store, request)
        if not caller.role.allows(role):
            raise HTTPException(403, f"{caller.name} is a {caller.role}; this needs {role}")
        return caller

    return dependency


class Guard:
    """ASGI middleware: the checks every request passes before it is routed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, f"the body is over {self.max_body_bytes} bytes")
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _refuse(send, 413, f"the body is over {self.max_body_bytes} bytes")
                return
        if "\x00" in scope["path"]:
            await _refuse(send, 422, "a path may not hold a NUL character")
            return
        refusal = _refusal(scope["method"], headers, body)
        if refusal is not None:
            await _refuse(send, *refusal)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _refusal(method: str, headers: dict[str, str], body: bytes) -> tuple[int, str] | None:
    if method in CHANGES:
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host", ""):
            return 403, f"a change asked for by {origin} is refused: it is not this site"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "a change asked for by another site is refused"
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if body and not (kind == "application/json" or kind.endswith("+json")):
            return 415, "a change is sent as JSON (Content-Type: application/json)"
    if not body:
        return None
    try:
        parsed = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
        bad = _bad_text(parsed)
    except _NotANumber as exc:
        return 422, str(exc)
    except RecursionError:
        return 422, "the JSON is nested too deeply"
    except UnicodeDecodeError:
        return 422, "the body is not UTF-8 text"
    except ValueError:
        return None  # not JSON, or broken JSON: the route answers 422 as usual
    return (422, bad) if bad else None


class _NotANumber(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _NotANumber(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotANumber(f"{text[:40]} is too large a number")
    return value


def _bad_text(value: Any) -> str:
    """Why a parsed JSON value holds text orch cannot keep: a NUL, or a lone surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            return "text may not hold a NUL character"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return "text may not hold a lone surrogate (\\ud800-\\udfff)"
        return ""
    items: list[Any] = []
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    for item in items:
        bad = _bad_text(item)
        if bad:
            return bad
    return ""


async def _refuse(send: Send, status: int, why: str) -> None:
    body = json.dumps({"error": why}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
