"""News as a signed JSON POST, for any receiver that wants it (a chat bridge, an audit log).

Each delivery is one POST of

    {"key": ..., "text": ..., "news": {...every News field...} | null, "sent_at": ISO-8601 UTC}

with the headers

    X-Orch-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the shared secret>
    X-Orch-Delivery: <key>

A receiver checks the signature over the raw bytes, before parsing them, in constant time:

    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Orch-Signature"])

and drops a delivery whose X-Orch-Delivery it has seen before: a retry after a lost answer sends
the same key again (delivery is at least once).

A 5xx, a 429 (after its Retry-After) or no answer at all is tried again a few times with jittered
backoff; any other 4xx is raised at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from orch.domain.errors import OrchError
from orch.domain.news import News

MAX_RETRY_AFTER_S = 60.0


class WebhookError(OrchError):
    """The receiver refused the news, or could not be reached after the retries."""


def sign(secret: str, body: bytes) -> str:
    """The X-Orch-Signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """Whether `signature` (the X-Orch-Signature header) signs `body`: for receivers in Python."""
    return signature is not None and hmac.compare_digest(sign(secret, body), signature)


def payload(key: str, text: str, news: News | None, sent_at: datetime) -> bytes:
    body = {
        "key": key,
        "text": text,
        "news": dataclasses.asdict(news) if news is not None else None,
        "sent_at": sent_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return json.dumps(body, ensure_ascii=False).encode()


class WebhookNotifier:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._secret = secret
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout_s, transport=transport)
        # errors name the receiver by its host alone: a URL's path or query may hold a secret
        self._where = urlsplit(url).netloc or "the webhook"

    def __repr__(self) -> str:
        return f"WebhookNotifier({self._where!r})"

    def close(self) -> None:
        self._client.close()

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        body = payload(key, text, news, datetime.now(UTC))
        headers = {
            "Content-Type": "application/json",
            "X-Orch-Signature": sign(self._secret, body),
            "X-Orch-Delivery": key,
        }
        why = ""
        for attempt in range(self.attempts):
            wait: float | None = None
            try:
                response = self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{self._where} could not be reached ({type(exc).__name__})"
            else:
                status = response.status_code
                if status < 300:
                    return
                why = f"{self._where} answered {status}: {response.text[:200]}"
                if status == 429:
                    wait = _retry_after(response.headers.get("Retry-After"))
                elif status < 500:
                    raise WebhookError(f"news {key} refused: {why}")
            if attempt + 1 < self.attempts:
                base = self.backoff_s * 2**attempt
                self._sleep(wait if wait is not None else base + random.uniform(0, base))
        raise WebhookError(f"news {key} not delivered after {self.attempts} attempts: {why}")


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None else min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
