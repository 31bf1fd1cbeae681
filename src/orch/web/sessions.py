"""The dashboard's sign-in sessions.

A person signs in with an API token; the browser then holds only a random session id, in a
cookie scripts cannot read (HttpOnly) and other sites' requests do not carry (SameSite=Strict).
Every change the session asks for must also carry the session's CSRF token, which the page
holds and a forged request cannot know. The session keeps the token's digest, not the token, and
the token is looked up on every request: revoking it ends its sessions at once.

Sessions live in the serving process's memory: a restart signs everyone out, which costs a
sign-in and keeps no credential on disk.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "orch_session"
CSRF_HEADER = "x-csrf-token"
IDLE_S = 12 * 3600.0  # a session unused this long is over
MAX_SESSIONS = 10_000  # beyond this, the least recently used go first


@dataclass
class Session:
    token_hash: str
    csrf: str
    last_used: float

    def csrf_matches(self, sent: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), sent.encode())


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic, idle_s: float = IDLE_S):
        self._clock = clock
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._live: dict[str, Session] = {}

    def open(self, token_hash: str) -> tuple[str, Session]:
        """A new session for the token with this digest: its id (the cookie) and itself."""
        sid = secrets.token_urlsafe(32)
        session = Session(token_hash, secrets.token_urlsafe(32), self._clock())
        with self._lock:
            if len(self._live) >= MAX_SESSIONS:
                oldest = min(self._live, key=lambda k: self._live[k].last_used)
                del self._live[oldest]
            self._live[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        now = self._clock()
        with self._lock:
            session = self._live.get(sid)
            if session is None:
                return None
            if now - session.last_used > self._idle_s:
                del self._live[sid]
                return None
            session.last_used = now
            return session

    def close(self, sid: str) -> None:
        with self._lock:
            self._live.pop(sid, None)
