"""The dashboard at /: server-rendered pages from the package, kept live by server-sent events.

Pages are HTML from Jinja2 templates with one small script and one stylesheet, all served from
the package (nothing from a CDN, no build step). The script refreshes a page's live regions
when /events says the store changed, and sends actions to the JSON API with the session's CSRF
token. Signing in trades an API token for a session cookie (orch.web.sessions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import StreamingResponse

from orch.bootstrap import App
from orch.domain import access
from orch.domain.access import Role
from orch.domain.states import is_terminal
from orch.services.views import state_view, task_detail
from orch.web import board
from orch.web.access import Caller, caller_of
from orch.web.live import Allowed, Streams
from orch.web.sessions import COOKIE, Sessions

STATIC = Path(__file__).parent / "static"
# scripts and styles from this server only; no inline script can run, no other site may frame
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=500)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("orch.web", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=board.duration, when=board.when, one_line=board.one_line)
    return env


def add_dashboard(api: FastAPI, app: App) -> None:
    templates = Jinja2Templates(env=_environment())
    sessions = Sessions()
    streams = Streams(app.store.changes, app.store.hearing.watch)
    api.state.sessions = sessions
    api.state.close_streams = streams.close
    api.mount("/static", StaticFiles(directory=STATIC), name="static")

    def signed_in(request: Request) -> Caller | None:
        try:
            return caller_of(app.store, request)
        except HTTPException as exc:
            if exc.status_code == 401:
                return None
            raise

    def still_allowed(request: Request) -> Allowed:
        def allowed() -> bool:
            try:
                return signed_in(request) is not None
            except HTTPException:
                return False

        return allowed

    def page(
        request: Request, name: str, caller: Caller, changes: int, **context: Any
    ) -> HTMLResponse:
        """A page, and the change count read before its data was (arguments are evaluated in
        order): the script then knows whether a change came between the two."""
        session = sessions.get(request.cookies.get(COOKIE, ""))
        response = templates.TemplateResponse(
            request,
            name,
            {
                "caller": caller,
                "can_act": caller.role.allows(Role.OPERATOR),
                "csrf": session.csrf if session else "",
                "signed_in": session is not None,
                "changes": changes,
                **context,
            },
        )
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def to_sign_in(request: Request) -> Response:
        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)

    def board_context() -> dict[str, Any]:
        now = app.store.now()
        summary = state_view(app.store.summary(), app.engine.breakers.states(), app.over_time())
        spent = app.store.spend_over_time(board.chart_since(now), board.DAY_S)
        return {
            "columns": board.columns(app.store.list_tasks(500), app.waits()),
            "state": summary,
            "chart": board.spend_chart(spent, now),
            "chart_height": board.CHART_HEIGHT,
            "repos": [r.name for r in app.settings.repos],
        }

    def task_context(key: str) -> dict[str, Any]:
        task = app.intake.task(key)
        detail = task_detail(app.store, task, app.waits(), app.over_time(task.repo))
        return {
            "task": detail,
            "timeline": board.timeline(detail["stages"]),
            "terminal": is_terminal(task.status),
            "last_run": len(detail["runs"]),  # the log tail follows the newest run
        }

    @api.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        caller = signed_in(request)
        if caller is None:
            return to_sign_in(request)
        return page(request, "board.html", caller, app.store.changes.count, **board_context())

    @api.get("/fragments/board", include_in_schema=False)
    def board_fragment(request: Request) -> Response:
        caller = signed_in(request)
        if caller is None:
            return Response(status_code=401)
        return page(request, "_board.html", caller, app.store.changes.count, **board_context())

    @api.get("/tasks/{key}", include_in_schema=False)
    def task_page(request: Request, key: str) -> Response:
        caller = signed_in(request)
        if caller is None:
            return to_sign_in(request)
        return page(request, "task.html", caller, app.store.changes.count, **task_context(key))

    @api.get("/fragments/tasks/{key}", include_in_schema=False)
    def task_fragment(request: Request, key: str) -> Response:
        caller = signed_in(request)
        if caller is None:
            return Response(status_code=401)
        return page(request, "_task.html", caller, app.store.changes.count, **task_context(key))

    @api.get("/events", include_in_schema=False)
    def events(request: Request) -> Response:
        if signed_in(request) is None:
            return Response(status_code=401)
        return _stream(streams.changed(still_allowed(request)))

    @api.get("/tasks/{key}/log", include_in_schema=False)
    def log(request: Request, key: str) -> Response:
        if signed_in(request) is None:
            return Response(status_code=401)
        task = app.intake.task(key)
        logs = app.settings.logs.resolve()

        def locate() -> tuple[Path | None, bool]:
            runs = app.store.runs(task.id)
            if not runs:
                return None, is_terminal(app.store.get_task(task.id).status)
            path = Path(runs[-1].log_path).resolve()
            # the path is orch's own record, but only a file under its logs is ever shown
            return (path if path.is_relative_to(logs) else None), runs[-1].ended_at is not None

        return _stream(streams.log(locate, still_allowed(request)))

    @api.get("/login", include_in_schema=False)
    def login(request: Request) -> Response:
        response = templates.TemplateResponse(
            request, "login.html", {"next": _local(request.query_params.get("next", "/"))}
        )
        response.headers["Content-Security-Policy"] = CSP
        return response

    @api.post("/session", include_in_schema=False)
    def sign_in(request: Request, body: SignIn) -> Response:
        digest = access.digest(body.token.strip())
        token = app.store.token_by_hash(digest)
        if token is None:
            return JSONResponse({"error": "unknown or revoked token"}, 401)
        sid, _session = sessions.open(digest)
        response = JSONResponse({"name": token.name, "role": str(token.role)})
        # behind a proxy that ends TLS, uvicorn takes the scheme from X-Forwarded-Proto
        response.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @api.post("/session/end", include_in_schema=False)
    def sign_out(request: Request) -> Response:
        caller_of(app.store, request)  # a session ends only with its CSRF token
        sessions.close(request.cookies.get(COOKIE, ""))
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _stream(body: Any) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _local(path: str) -> str:
    """Where to go after signing in: a path on this site, never another site's URL. Browsers
    drop tabs and newlines from a URL and read a backslash as a slash, so "/\t/evil.example"
    would leave the site: any control character or backslash sends the person home instead."""
    if any(ch < " " or ch == "\x7f" or ch == "\\" for ch in path):
        return "/"
    parts = urlsplit(path)
    if not path.startswith("/") or path.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return path
