"""The HTTP API: JSON under /api/v1. Writes go through intake, never to a task's stage. Who may
call what, and what a request may carry, is orch.web.access's; what the API documents of
itself, orch.web.openapi's; the admin's routes are orch.web.admin's."""

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
from orch.web.admin import add_admin
from orch.web.dashboard import add_dashboard
from orch.web.docs import add_docs
from orch.web.looplag import LoopLag
from orch.web.metrics import add_metrics
from orch.web.openapi import BODY, KEY, PUBLIC, DocumentedAPI, errors
from orch.web.webhooks import add_webhooks


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


class Health(BaseModel):
    ok: bool
    owner: str = Field(description="The incarnation of the orch process answering.")


class Decided(BaseModel):
    key: str
    checkpoint: str | None = Field(description="The checkpoint the task waited at.")
    recorded: bool = Field(description="False: the same answer was recorded before.")


class Stopped(BaseModel):
    key: str
    status: TaskStatus
    recorded: bool = Field(description="False: a STOP was asked before, or the task had ended.")


class RetryAsked(BaseModel):
    key: str
    recorded: bool = Field(description="False: the same retry was asked before.")


DESCRIPTION = """orch turns tickets into reviewed, merged and deployed changes.

Every route but `/api/v1/health` takes a bearer token made with `orch token create`: a
`viewer` reads, an `operator` also files tickets, decides, stops and retries, an `admin` also
manages tokens and reads the settings. Every error is `{"error": "...", "detail": ...}`."""


def create_app(app: App) -> FastAPI:
    lag = LoopLag()
    # the docs are served by add_docs, from the package: FastAPI's own load from a CDN
    api = DocumentedAPI(
        title="orch",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lambda _api: lag.running(),
    )
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

    @api.get("/api/v1/health", response_model=Health, openapi_extra=PUBLIC, responses=errors(503))
    def health() -> dict[str, Any]:
        app.store.now()
        return {"ok": True, "owner": app.dispatcher.owner}

    add_metrics(api, app, lag)
    add_dashboard(api, app)
    add_docs(api)
    add_admin(api, app)
    add_webhooks(api, app)

    @api.get("/api/v1/state", dependencies=[reads])
    def state() -> dict[str, Any]:
        return state_view(app.store.summary(), app.engine.breakers.states(), app.over_time())

    @api.get("/api/v1/tasks", dependencies=[reads], responses=errors(422))
    def tasks(limit: int = 50, status: TaskStatus | None = None) -> dict[str, Any]:
        """The most recent tasks; `status=needs_operator` lists the dead letters, each with the
        reason it was parked."""
        listed = app.store.list_tasks(min(max(limit, 1), 500), status)
        waits = app.waits()
        return {"tasks": [task_summary(t, waits) for t in listed]}

    @api.get("/api/v1/tasks/{key}", dependencies=[reads], responses=errors(*KEY))
    def task(key: str) -> dict[str, Any]:
        task = app.intake.task(key)
        return task_detail(app.store, task, app.waits(), app.over_time(task.repo))

    @api.post("/api/v1/tasks", status_code=201, responses=errors(*BODY, 404))
    def file_ticket(ticket: NewTicket, caller: Caller = acts) -> dict[str, Any]:
        created = app.intake.file(ticket.repo, ticket.title, ticket.body, caller.actor("api"))
        return task_detail(app.store, created)

    @api.post(
        "/api/v1/tasks/{key}/approve",
        response_model=Decided,
        responses=errors(*KEY, *BODY, 409),
    )
    def approve(
        key: str, decision: Decision | None = None, caller: Caller = acts
    ) -> dict[str, Any]:
        return _decide(key, True, decision or Decision(), caller)

    @api.post(
        "/api/v1/tasks/{key}/reject",
        response_model=Decided,
        responses=errors(*KEY, *BODY, 409),
    )
    def reject(key: str, decision: Decision | None = None, caller: Caller = acts) -> dict[str, Any]:
        return _decide(key, False, decision or Decision(), caller)

    @api.post("/api/v1/tasks/{key}/stop", response_model=Stopped, responses=errors(*KEY, *BODY))
    def stop(key: str, request: Stop | None = None, caller: Caller = acts) -> dict[str, Any]:
        request = request or Stop()
        task, recorded = app.intake.stop(key, caller.actor(request.actor), request.reason)
        return {"key": task.key, "status": task.status.value, "recorded": recorded}

    @api.post(
        "/api/v1/tasks/{key}/retry",
        response_model=RetryAsked,
        responses=errors(*KEY, *BODY, 409),
    )
    def retry(key: str, request: Retry | None = None, caller: Caller = acts) -> dict[str, Any]:
        request = request or Retry()
        key = app.intake.task(key).key
        recorded = app.intake.retry(
            key,
            request.from_stage,
            caller.actor(request.actor),
            Budget(request.budget_usd, request.budget_tokens),
        )
        return {"key": key, "recorded": recorded}

    @api.post("/api/v1/tasks/{key}/start", status_code=201, responses=errors(*KEY, 409))
    def start(key: str, caller: Caller = acts) -> dict[str, Any]:
        """Start a ticket on the built-in board again, as a new task: after its task was
        cancelled (409 while one is live)."""
        return task_detail(app.store, app.intake.start(key, caller.actor("api")))

    def _decide(key: str, approve: bool, decision: Decision, caller: Caller) -> dict[str, Any]:
        task = app.intake.task(key)
        actor = caller.actor(decision.actor)
        recorded = app.intake.decide(key, approve, actor, decision.comment)
        return {"key": task.key, "checkpoint": task.waiting_for, "recorded": recorded}

    return api
