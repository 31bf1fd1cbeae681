"""The HTTP API: JSON under /api/v1. Writes go through intake, never to a task's stage. Who may
call what, and what a request may carry, is orch.web.access's."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from orch.bootstrap import App
from orch.domain.access import Role
from orch.domain.errors import Conflict, ForgeError, NotFound, OrchError, StoreUnavailable
from orch.domain.ledger import Budget
from orch.domain.states import TaskStatus
from orch.services.views import state_view, task_detail, task_summary
from orch.web.access import Caller, Guard, needs


class NewTicket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1)
    title: str = Field(min_length=1, max_length=500)
    body: str = ""


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str = Field("api", min_length=1, max_length=200)
    comment: str = ""


class Stop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str = Field("api", min_length=1, max_length=200)
    reason: str = ""


class Retry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    actor: str = Field("api", min_length=1, max_length=200)
    from_stage: str | None = Field(None, alias="from")
    # raise the budget that stopped the task (a stage's, the task's, or both) to this
    budget_usd: float | None = Field(None, gt=0)
    budget_tokens: int | None = Field(None, gt=0)


def create_app(app: App) -> FastAPI:
    # Swagger and ReDoc would load from a CDN, and answer without a token: not served (yet)
    api = FastAPI(title="orch", version="0.1.0", docs_url=None, redoc_url=None)
    api.add_middleware(Guard)
    reads = Depends(needs(app.store, Role.VIEWER))
    acts = Depends(needs(app.store, Role.OPERATOR))

    @api.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = jsonable_encoder(exc.errors(), exclude={"input", "url"})
        return JSONResponse({"error": "the request is not valid", "detail": detail}, 422)

    @api.exception_handler(OrchError)
    async def _orch_error(_request: Request, exc: OrchError) -> JSONResponse:
        status = 400
        if isinstance(exc, NotFound):
            status = 404
        elif isinstance(exc, Conflict):
            status = 409
        elif isinstance(exc, (StoreUnavailable, ForgeError)):
            status = 503  # a store or forge that does not answer now: try again later
        return JSONResponse({"error": str(exc)}, status_code=status)

    @api.get("/api/v1/health")
    def health() -> dict[str, Any]:
        app.store.now()
        return {"ok": True, "owner": app.dispatcher.owner}

    @api.get("/api/v1/state", dependencies=[reads])
    def state() -> dict[str, Any]:
        return state_view(app.store.summary(), app.engine.breakers.states())

    @api.get("/api/v1/tasks", dependencies=[reads])
    def tasks(limit: int = 50, status: TaskStatus | None = None) -> dict[str, Any]:
        """The most recent tasks; `status=needs_operator` lists the dead letters, each with the
        reason it was parked."""
        listed = app.store.list_tasks(min(max(limit, 1), 500), status)
        return {"tasks": [task_summary(t) for t in listed]}

    @api.get("/api/v1/tasks/{key}", dependencies=[reads])
    def task(key: str) -> dict[str, Any]:
        return task_detail(app.store, app.intake.task(key))

    @api.post("/api/v1/tasks", status_code=201)
    def file_ticket(ticket: NewTicket, caller: Caller = acts) -> dict[str, Any]:
        created = app.intake.file(ticket.repo, ticket.title, ticket.body, caller.actor("api"))
        return task_detail(app.store, created)

    @api.post("/api/v1/tasks/{key}/approve")
    def approve(
        key: str, decision: Decision | None = None, caller: Caller = acts
    ) -> dict[str, Any]:
        return _decide(key, True, decision or Decision(), caller)

    @api.post("/api/v1/tasks/{key}/reject")
    def reject(key: str, decision: Decision | None = None, caller: Caller = acts) -> dict[str, Any]:
        return _decide(key, False, decision or Decision(), caller)

    @api.post("/api/v1/tasks/{key}/stop")
    def stop(key: str, request: Stop | None = None, caller: Caller = acts) -> dict[str, Any]:
        request = request or Stop()
        task, recorded = app.intake.stop(key, caller.actor(request.actor), request.reason)
        return {"key": key, "status": task.status.value, "recorded": recorded}

    @api.post("/api/v1/tasks/{key}/retry")
    def retry(key: str, request: Retry | None = None, caller: Caller = acts) -> dict[str, Any]:
        request = request or Retry()
        recorded = app.intake.retry(
            key,
            request.from_stage,
            caller.actor(request.actor),
            Budget(request.budget_usd, request.budget_tokens),
        )
        return {"key": key, "recorded": recorded}

    def _decide(key: str, approve: bool, decision: Decision, caller: Caller) -> dict[str, Any]:
        task = app.intake.task(key)
        actor = caller.actor(decision.actor)
        recorded = app.intake.decide(key, approve, actor, decision.comment)
        return {"key": key, "checkpoint": task.waiting_for, "recorded": recorded}

    return api
