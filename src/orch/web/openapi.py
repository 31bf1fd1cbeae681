"""What the API says of itself in /openapi.json: each status a route may answer, the one body
every error has, and the bearer token its routes take (so Swagger UI's "Authorize" works).

Every route but the public ones (`openapi_extra=PUBLIC`: the health check) takes a token, as
orch.web.access has it; the document says so of each, with the statuses a token brings (401,
403, and 503 from the store it is checked against), whichever module added the route. A route
lists its other errors with `errors(...)`: a task key brings 404, and 422 for a key with a NUL;
a body brings 413, 415 and 422, from orch.web.access's Guard or from validation, and 400 for
one that cannot be read.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

BEARER = "bearer"


class ErrorBody(BaseModel):
    """Every error orch answers, whatever refused the request."""

    error: str = Field(description="What went wrong, in a sentence meant for a person.")
    detail: Any = Field(
        None, description="More about it: for a request that is not valid, each of its errors."
    )


WHY = {
    400: "The request cannot be read (a body that is not UTF-8), or carried out as asked (a"
    " blank title, a stage the task's pipeline lacks).",
    401: "No bearer token, or an unknown or revoked one.",
    403: "The token's role does not allow this; or, with no token made, the host named is not"
    " a loopback one; or the change was asked for by another site.",
    404: "There is no such task, repository or token.",
    409: "The request conflicts with what was already recorded.",
    413: "The body is over the size limit (256 KiB).",
    415: "A change is sent as JSON (Content-Type: application/json).",
    422: "The request is not valid: a field, a NaN or Infinity, a NUL or a lone surrogate.",
    503: "The store or the forge does not answer now: try again later.",
}

TOKEN = (401, 403, 503)
KEY = (404, 422)
BODY = (400, 413, 415, 422)
PUBLIC: dict[str, Any] = {"security": []}  # a route's openapi_extra: it takes no token


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer these statuses, each with the error body."""
    return {s: {"model": ErrorBody, "description": WHY[s]} for s in sorted(set(statuses))}


class DocumentedAPI(FastAPI):
    """FastAPI, whose document declares the bearer scheme, and on each route that is not
    public, the token it takes and the statuses that brings."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token made with `orch token create --name NAME --role ROLE`.",
        }
        components.setdefault("schemas", {}).setdefault(
            ErrorBody.__name__, ErrorBody.model_json_schema()
        )
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if operation.get("security") == []:
                    continue
                operation["security"] = [{BEARER: []}]
                responses = operation.setdefault("responses", {})
                for status in TOKEN:
                    responses.setdefault(str(status), _error_response(status))
                operation["responses"] = dict(sorted(responses.items()))
        self.openapi_schema = schema
        return schema


def _error_response(status: int) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
    return {"description": WHY[status], "content": {"application/json": {"schema": ref}}}
