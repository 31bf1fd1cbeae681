"""Making API tokens and showing them: one way for `orch token` and the admin API alike."""

from __future__ import annotations

from typing import Any

from orch.domain import access
from orch.domain.access import ApiToken, Role
from orch.ports import Store


def create_token(store: Store, name: str, role: Role) -> tuple[ApiToken, str]:
    """Make a token: its record, and its secret, to be shown this once (only the secret's
    digest is kept). Refuses a name that is not one (OrchError), or one already taken, even by a
    revoked token (Conflict)."""
    access.check_name(name)
    secret = access.new_secret()
    return store.add_token(name, role, access.digest(secret)), secret


def token_view(token: ApiToken) -> dict[str, Any]:
    """What is shown of a token: never its secret, nor its digest."""
    return {
        "name": token.name,
        "role": token.role.value,
        "created_at": token.created_at,
        "revoked_at": token.revoked_at,
    }
