"""Webhooks from the services outside orch. Each is verified by its signature before anything
else, stored once by its delivery id, and answered at once: the work happens from the store, on
a thread of its own, and a delivery is only a hint to read the tracker again (rule 15)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from orch.bootstrap import App
from orch.web.openapi import PUBLIC, errors

log = logging.getLogger("orch.web")


class Received(BaseModel):
    stored: bool  # False: a delivery with this id was stored before, and is not worked again


def signed(secret: str, body: bytes, given: str) -> bool:
    """Whether `given` is the hex HMAC-SHA256 of `body` under `secret` (a `sha256=` prefix
    allowed), compared in constant time; never with an empty secret."""
    if not secret or not given:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    offered = given.strip().removeprefix("sha256=").lower().encode("utf-8", "replace")
    return hmac.compare_digest(expected, offered)


def add_webhooks(api: FastAPI, app: App) -> None:
    @api.post(
        "/webhooks/plane",
        response_model=Received,
        openapi_extra={**PUBLIC, "description": _PLANE},
        responses=errors(400, 401, 404, 503),
        tags=["webhooks"],
    )
    async def plane(request: Request) -> Any:
        sync = app.tracker_sync
        if sync is None:
            return JSONResponse({"error": "no Plane tracker is configured"}, 404)
        verified = await _verified(request, "Plane", app.tracker_secret)
        if isinstance(verified, JSONResponse):
            return verified
        body, delivery, _ = verified
        stored = await run_in_threadpool(sync.receive, delivery, body)
        return {"stored": stored}

    @api.post(
        "/webhooks/gitea",
        response_model=Received,
        openapi_extra={**PUBLIC, "description": _GITEA},
        responses=errors(400, 401, 404, 503),
        tags=["webhooks"],
    )
    async def gitea(request: Request) -> Any:
        sync = app.forge_sync
        if sync is None:
            return JSONResponse({"error": "no Gitea forge is configured"}, 404)
        verified = await _verified(request, "Gitea", app.forge_secret)
        if isinstance(verified, JSONResponse):
            return verified
        body, delivery, event = verified
        if not event:
            return JSONResponse({"error": "X-Gitea-Event-Type is missing"}, 400)
        stored = await run_in_threadpool(sync.receive, delivery, event, body)
        return {"stored": stored}

    @api.post(
        "/webhooks/telegram",
        response_model=Received,
        openapi_extra={**PUBLIC, "description": _TELEGRAM},
        responses=errors(400, 401, 404),
        tags=["webhooks"],
    )
    async def telegram(request: Request) -> Any:
        bot, updates = app.telegram, app.telegram_updates
        if bot is None or updates is None:
            return JSONResponse({"error": "Telegram's updates do not come by webhook here"}, 404)
        given = request.headers.get("x-telegram-bot-api-secret-token", "")
        if not bot.check_secret(given):
            return JSONResponse({"error": "the secret token does not match"}, 401)
        body = await request.body()
        try:
            update = json.loads(body)
            update_id = str(int(update["update_id"]))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "not a Telegram update"}, 400)
        # answered at once, worked from the store: the bot's replies are paced per chat, and
        # may wait out a flood
        stored = await run_in_threadpool(
            updates.receive, update_id, body.decode("utf-8", "replace")
        )
        return {"stored": stored}


async def _verified(
    request: Request, provider: str, secret: str
) -> tuple[bytes, str, str] | JSONResponse:
    """The body, delivery id and event type of a delivery whose X-<Provider>-Signature is the
    body's under `secret` (checked before anything else); else the answer that refuses it."""
    body = await request.body()
    name = provider.lower()
    if not signed(secret, body, request.headers.get(f"x-{name}-signature", "")):
        if not secret:
            log.warning("a %s delivery was refused: no webhook secret is set", provider)
        return JSONResponse({"error": "the signature does not match the body"}, 401)
    delivery = request.headers.get(f"x-{name}-delivery", "").strip()
    if not delivery or len(delivery) > 200:
        return JSONResponse({"error": f"X-{provider}-Delivery is missing"}, 400)
    headers = request.headers
    event = headers.get(f"x-{name}-event-type") or headers.get(f"x-{name}-event", "")
    return body, delivery, event.strip()


_GITEA = (
    "A Gitea webhook delivery (`X-Gitea-Signature`: hex HMAC-SHA256 of the body with the"
    " webhook's secret; `X-Gitea-Delivery`: its id; `X-Gitea-Event-Type`: what happened)."
    " Stored once and answered at once; a failing status of the repository's own CI, or a review"
    " asking for changes, sends the task back to be reworked; a closed pull request cancels it."
)

_TELEGRAM = (
    "A Telegram update, when the bot's updates come by webhook (`updates: webhook`): checked by"
    " `X-Telegram-Bot-Api-Secret-Token`, worked once per `update_id`."
)

_PLANE = (
    "A Plane webhook delivery (`X-Plane-Signature`: hex HMAC-SHA256 of the body with the"
    " webhook's secret; `X-Plane-Delivery`: its id). Stored once and answered at once; orch then"
    " reads the work item again and acts on the state it is in."
)
