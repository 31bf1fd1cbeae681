"""Who may do what through the API: roles, and the tokens that carry them.

A token's secret is shown once, when it is made; the store keeps only its SHA-256 digest. The
secret is 32 random bytes, so a fast digest is as strong as a slow one here: there is nothing to
guess from.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from orch.domain.errors import OrchError

PREFIX = "orch_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


class Role(StrEnum):
    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # also files tickets, decides, stops and retries
    ADMIN = "admin"  # also manages tokens and settings

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: Role
    created_at: float
    revoked_at: float | None = None

    @property
    def live(self) -> bool:
        return self.revoked_at is None


def check_name(name: str) -> str:
    """A token's name, which its holder's decisions are recorded under."""
    if not _NAME.fullmatch(name):
        raise OrchError(
            f"a token name is 1 to 100 letters, digits or . _ @ -, starting with a letter or"
            f" digit; not {name!r}"
        )
    return name


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
