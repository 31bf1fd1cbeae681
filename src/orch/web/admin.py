"""The admin's routes: API tokens, and the settings in force. An admin token only; the
statuses a token brings (401, 403, 503) are added to each by orch.web.openapi."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orch.bootstrap import App
from orch.domain import access
from orch.domain.access import Role
from orch.domain.errors import OrchError
from orch.services.settings_view import settings_view
from orch.services.tokens import create_token, token_view
from orch.web.access import needs
from orch.web.openapi import BODY, errors

# what access.check_name accepts, for the document: the check itself stays check_name's
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=NAME_PATTERN,
        description="Who holds it: their decisions are recorded under this name.",
    )
    role: Role = Role.VIEWER

    @field_validator("name")
    @classmethod
    def _a_token_name(cls, name: str) -> str:
        try:
            return access.check_name(name)
        except OrchError as exc:
            raise ValueError(str(exc)) from exc


class TokenView(BaseModel):
    name: str
    role: Role
    created_at: float
    revoked_at: float | None


class TokenList(BaseModel):
    tokens: list[TokenView]


class MadeToken(TokenView):
    secret: str = Field(description="Shown this once: only its digest is kept.")


class Revoked(BaseModel):
    name: str
    revoked: bool = Field(description="Whether this call revoked it (false: it was already).")


def add_admin(api: FastAPI, app: App) -> None:
    admin = Depends(needs(app.store, Role.ADMIN))

    @api.get("/api/v1/tokens", dependencies=[admin], response_model=TokenList)
    def tokens() -> dict[str, Any]:
        """Every token, live or revoked; never a secret."""
        return {"tokens": [token_view(t) for t in app.store.tokens()]}

    @api.post(
        "/api/v1/tokens",
        status_code=201,
        dependencies=[admin],
        response_model=MadeToken,
        responses=errors(*BODY, 409),
    )
    def make_token(new: NewToken) -> dict[str, Any]:
        """Make a token; its secret is in the answer, and never again."""
        made, secret = create_token(app.store, new.name, new.role)
        return {**token_view(made), "secret": secret}

    @api.delete(
        "/api/v1/tokens/{name}",
        dependencies=[admin],
        response_model=Revoked,
        responses=errors(404, 422),
    )
    def revoke_token(
        name: str = Path(min_length=1, max_length=100, pattern=NAME_PATTERN),
    ) -> dict[str, Any]:
        """Revoke a token at once: requests carrying it are refused from now on."""
        return {"name": name, "revoked": app.store.revoke_token(name)}

    @api.get("/api/v1/settings", dependencies=[admin])
    def settings() -> dict[str, Any]:
        """The settings in force, secrets redacted: passwords and tokens in URLs, agents'
        environment values, and any setting named for a secret."""
        return settings_view(app.settings.model_dump(mode="json"), app.store.display_url)
