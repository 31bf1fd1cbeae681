"""A fake Plane: the REST API v1 orch uses (users/me, projects, states, work items, comments)
and its webhooks, with helpers playing the people who use it. Queries and bodies are checked
against plane-sdk's pydantic models, answers parse as its response models, and Plane's own ways
are kept where orch relies on them: cursor pagination (`utils/paginator.py`), 409 on a comment's
duplicate external id, the API key's rate limit (`api/rate_limit.py`), one webhook delivery per
changed field (`bgtasks/webhook_task.py`)."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, TypeVar

import httpx
from plane.models.projects import Project
from plane.models.query_params import PaginatedQueryParams, RetrieveQueryParams, WorkItemQueryParams
from plane.models.states import PaginatedStateResponse
from plane.models.users import UserLite
from plane.models.work_items import (
    CreateWorkItemComment,
    PaginatedWorkItemActivityResponse,
    PaginatedWorkItemCommentResponse,
    PaginatedWorkItemResponse,
    UpdateWorkItem,
    WorkItem,
    WorkItemComment,
    WorkItemDetail,
)
from pydantic import BaseModel, ValidationError

from orch.fakes.server import FakeServer, Request, Response, json_response

# fmt: off
DEFAULT_STATES: tuple[tuple[str, str], ...] = (
    ("Backlog", "backlog"), ("To Analyse", "unstarted"), ("Analysing", "started"),
    ("Approved", "started"), ("Rejected", "started"), ("Confirm Deploy", "started"),
    ("Done", "completed"), ("STOP", "cancelled"),
)
# fmt: on
_T = TypeVar("_T")
Record = dict[str, Any]  # a JSON object as Plane stores and answers it
Fields = Mapping[str, Any]
Activity = tuple[str | None, Any, Any, Fields]  # the field changed, its old and new value, who
NOT_FOUND = {"error": "The requested resource does not exist."}
# webhook_send_task maps HTTP verbs; activity-fired deliveries keep created/updated/deleted
_HTTP_ACTIONS = {"created": "create", "updated": "update", "deleted": "delete"}
_IN_PROJECT = re.compile(r"^/api/v1/workspaces/([^/]+)/projects/([^/]+)/(.*)$")
_ROUTES = (
    (re.compile(r"^$"), "project"),
    (re.compile(r"^states/$"), "states"),
    (re.compile(r"^(?:work-items|issues)/$"), "items"),
    (re.compile(r"^(?:work-items|issues)/([^/]+)/$"), "item"),
    (re.compile(r"^(?:work-items|issues)/([^/]+)/comments/$"), "comments"),
    (re.compile(r"^(?:work-items|issues)/([^/]+)/activities/$"), "activities"),
)


class _Refused(Exception):
    """A request Plane would refuse, with its answer (the only argument)."""


def _found(value: _T | None) -> _T:
    if value is None:
        raise _Refused(json_response(404, NOT_FOUND))
    return value


def _uuid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Delivery:
    """One webhook request: what was (or would have been) sent, and the receiver's answer."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    status: int = 0  # the HTTP status the receiver answered; 0: not sent, or not reached

    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Hook:
    id: str
    url: str
    secret: str
    events: frozenset[str]


@dataclass
class _Project:
    id: str
    name: str
    identifier: str
    states: list[Record]
    items: dict[str, Record] = field(default_factory=dict)  # in creation order
    comments: dict[str, list[Record]] = field(default_factory=dict)  # per item, oldest 1st
    activities: dict[str, list[Record]] = field(default_factory=dict)  # per item, oldest 1st
    sequence: int = 0

    def state(self, state_id: str) -> Record | None:
        return next((s for s in self.states if s["id"] == state_id), None)

    def state_named(self, name: str) -> Record:
        found = next((s for s in self.states if s["name"] == name), None)
        if found is None:
            raise ValueError(f"project {self.identifier} has no state {name!r}")
        return found


# The records as Plane's serializers give them: what orch and the SDK read filled in, the rest
# empty. Dense, being data.
# fmt: off
def _user(handle: str, first: str, last: str) -> Record:
    return {"id": _uuid(), "first_name": first, "last_name": last, "display_name": handle,
            "email": f"{handle}@example.com", "avatar": "", "avatar_url": None, "is_bot": False}


def _state(project: str, workspace: str, at: str, n: int, name: str,
           group: str) -> Record:
    return {"id": _uuid(), "created_at": at, "updated_at": at, "name": name, "group": group,
            "description": "", "color": "#60646C", "sequence": 15000.0 * (n + 1),
            "default": n == 0, "is_triage": False, "external_source": None, "external_id": None,
            "project": project, "workspace": workspace}


def _item(p: _Project, workspace: str, at: str, name: str, html: str, state: str,
          by: str) -> Record:
    blank = dict.fromkeys(("type_id", "deleted_at", "point", "start_date", "target_date",
                           "completed_at", "archived_at", "external_source", "external_id",
                           "parent", "estimate_point", "type"))
    return {**blank, "id": _uuid(), "created_at": at, "updated_at": at, "name": name,
            "description_html": html or "<p></p>", "description_stripped": _stripped(html),
            "priority": "none", "is_draft": False, "sequence_id": p.sequence,
            "sort_order": 65535.0 * p.sequence, "state": state, "project": p.id,
            "workspace": workspace, "created_by": by, "updated_by": by, "labels": [],
            "assignees": []}


def _comment(p: _Project, workspace: str, at: str, item: str, body: Fields,
             by: str) -> Record:
    text = str(body.get("comment_html") or "")
    return {"id": _uuid(), "created_at": at, "updated_at": at, "comment_html": text,
            "comment_stripped": _stripped(text), "access": body.get("access") or "INTERNAL",
            "attachments": [], "external_source": body.get("external_source"),
            "external_id": body.get("external_id"), "created_by": by, "updated_by": by,
            "actor": by, "project": p.id, "workspace": workspace, "issue": item,
            "deleted_at": None, "edited_at": None, "parent": None, "is_member": True}


def _activity(p: _Project, workspace: str, item: Fields, key: str, was: Any, now: Any,
              by: str) -> Record:
    """One change as issue_activities_task records it: a state by its names, its ids beside."""
    at = item["updated_at"]
    record = {"id": _uuid(), "created_at": at, "updated_at": at, "deleted_at": None,
              "verb": "updated", "field": key, "old_value": was, "new_value": now,
              "old_identifier": None, "new_identifier": None, "comment": f"updated the {key}",
              "attachments": [], "epoch": int(datetime.fromisoformat(at).timestamp()),
              "project": p.id, "workspace": workspace, "issue": item["id"],
              "issue_comment": None, "actor": by}
    if key == "state":
        old, new = p.state(str(was)), p.state(str(now))
        record.update(old_value=old["name"] if old else None,
                      new_value=new["name"] if new else None,
                      old_identifier=was, new_identifier=now)
    elif not isinstance(now, str | type(None)):
        record.update(old_value=json.dumps(was), new_value=json.dumps(now))
    return record


def _page_of(results: list[Record], per_page: int, page: int) -> Record:
    total, start = len(results), page * per_page
    chunk = results[start : start + per_page]
    return {"grouped_by": None, "sub_grouped_by": None, "total_count": total,
            "next_cursor": f"{per_page}:{page + 1}:0", "prev_cursor": f"{per_page}:{page - 1}:1",
            "next_page_results": start + per_page < total, "prev_page_results": page > 0,
            "count": len(chunk), "total_pages": math.ceil(total / per_page),
            "total_results": total, "extra_stats": None, "results": chunk}


def _payload(event: str, action: str, hook: str, workspace: str, data: Record,
             activity: Activity) -> Record:
    changed, old, new, actor = activity
    return {"event": event, "action": action, "webhook_id": hook, "workspace_id": workspace,
            "data": data,
            "activity": {"field": changed, "new_value": new, "old_value": old,
                         "actor": dict(actor), "old_identifier": None, "new_identifier": None}}


def _headers(event: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "Autopilot",
            "X-Plane-Delivery": _uuid(), "X-Plane-Event": event}
# fmt: on


class PlaneFake(FakeServer):
    """`token` is the one API key it accepts, belonging to orch's user (`me`); `person` is the
    user whose changes the helpers make. `actions` spells webhook actions as activity does
    ("activity": created/updated) or mapped from HTTP verbs ("http": create/update)."""

    def __init__(
        self,
        token: str,
        workspace: str = "team",
        *,
        per_page_max: int = 100,
        rate_limit: int | None = None,
        clock: Callable[[], float] = time.time,
        actions: Literal["activity", "http"] = "activity",
    ) -> None:
        super().__init__()
        self.token = token
        self.slug = workspace
        self.workspace_id = _uuid()
        self.per_page_max = per_page_max
        self.rate_limit = rate_limit  # requests a minute per API key, or none
        self.actions = actions
        self.me = _user("orch", "Orch", "Bot")
        self.person = _user("pat", "Pat", "Person")
        self.item_listings = 0  # how often a project's items were listed (orch's reconciler)
        self.deliveries: list[Delivery] = []  # sent, in order, with the status received
        self.dropped: list[Delivery] = []  # never sent (drop_webhooks)
        self._clock = clock
        self._projects: dict[str, _Project] = {}
        self._hooks: list[_Hook] = []
        self._calls: list[float] = []  # when the API key's requests in the last minute came
        self._data = threading.RLock()
        self._last_stamp = datetime.min.replace(tzinfo=UTC)
        self._outbox: queue.Queue[Delivery | None] = queue.Queue()
        self._sending = threading.Condition()
        self._pending, self._to_drop = 0, 0  # deliveries queued; new ones to drop
        self._held: list[Delivery] | None = None
        self._sender: threading.Thread | None = None

    # -- the workspace -------------------------------------------------------------------------

    def add_project(
        self, name: str, identifier: str, states: Sequence[tuple[str, str]] = DEFAULT_STATES
    ) -> str:
        with self._data:
            pid = _uuid()
            stamp = self._stamp()
            made = [_state(pid, self.workspace_id, stamp, n, *st) for n, st in enumerate(states)]
            self._projects[pid] = _Project(pid, name, identifier, made)
            return pid

    def add_item(
        self, project_id: str, name: str, description_html: str = "", state: str = "Backlog"
    ) -> Record:
        """A person files a work item; its REST shape is returned."""
        with self._data:
            p = self._projects[project_id]
            p.sequence += 1
            made = (self._stamp(), name, description_html, p.state_named(state)["id"])
            item = _item(p, self.workspace_id, *made, self.person["id"])
            p.items[item["id"]] = item
            p.comments[item["id"]] = []
            p.activities[item["id"]] = []
            self._emit("issue", "created", self._expanded(p, item), (None, None, None, self.person))
            return dict(item)

    def person_moves(self, project_id: str, item_id: str, state: str, via: str = "ui") -> None:
        """A person moves the item: from the web app (`ui`) the delivery's field is `state_id`,
        through the API (`api`) it is `state`, as Plane sends them."""
        with self._data:
            p = self._projects[project_id]
            new = {"state": p.state_named(state)["id"]}
            self._change(p, p.items[item_id], new, self.person, "state_id" if via == "ui" else "")

    def person_edits(
        self, project_id: str, item_id: str, *, name: str = "", description_html: str = ""
    ) -> None:
        """A person edits the item's fields ("": unchanged): one delivery per field changed."""
        with self._data:
            p = self._projects[project_id]
            edits = {"name": name or None, "description_html": description_html or None}
            changes = {k: v for k, v in edits.items() if v is not None}
            self._change(p, p.items[item_id], changes, self.person)

    def person_comments(self, project_id: str, item_id: str, comment_html: str) -> Record:
        with self._data:
            p, body = self._projects[project_id], {"comment_html": comment_html}
            return dict(self._comment(p, item_id, body, self.person))

    def state_of(self, project_id: str, item_id: str) -> str:
        with self._data:
            p = self._projects[project_id]
            state = p.state(p.items[item_id]["state"])
            return state["name"] if state is not None else ""

    def comments_of(self, project_id: str, item_id: str) -> list[Record]:
        with self._data:
            return [dict(c) for c in self._projects[project_id].comments[item_id]]

    # -- webhooks ------------------------------------------------------------------------------

    def subscribe(
        self, url: str, secret: str, events: Sequence[str] = ("issue", "issue_comment")
    ) -> str:
        with self._data:
            hook = _Hook(_uuid(), url, secret, frozenset(events))
            self._hooks.append(hook)
            return hook.id

    def settle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every delivery queued so far was sent; False if some are still going."""
        with self._sending:
            return self._sending.wait_for(lambda: self._pending == 0, timeout_s)

    def hold_webhooks(self) -> None:
        """Keep deliveries back until `release_webhooks`."""
        with self._sending:
            if self._held is None:
                self._held = []

    def release_webhooks(self, order: Literal["sent", "reversed"] = "sent") -> None:
        with self._sending:
            held, self._held = self._held or [], None
        for delivery in reversed(held) if order == "reversed" else held:
            self._enqueue(delivery)

    def drop_webhooks(self, n: int = 1) -> None:
        """The next `n` deliveries are never sent (Plane gave up on them)."""
        with self._sending:
            self._to_drop += n

    def redeliver(self, n: int = -1, *, new_id: bool = False) -> None:
        """Send `deliveries[n]` again: the same body and signature, and the same delivery id
        unless `new_id` (a Celery retry of webhook_send_task makes a new one)."""
        with self._sending:
            again = self.deliveries[n]
        headers = dict(again.headers)
        if new_id:
            headers["X-Plane-Delivery"] = _uuid()
        self._enqueue(replace(again, headers=headers, status=0))

    def start(self) -> PlaneFake:
        super().start()
        self._sender = threading.Thread(target=self._send_all, name="PlaneFake-hooks", daemon=True)
        self._sender.start()
        return self

    def stop(self) -> None:
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(timeout=10)
            self._sender = None
        super().stop()

    def _emit(self, event: str, action: str, data: Record, activity: Activity) -> None:
        verb = _HTTP_ACTIONS.get(action, action) if self.actions == "http" else action
        for hook in self._hooks:
            if event not in hook.events:
                continue
            body = json.dumps(_payload(event, verb, hook.id, self.workspace_id, data, activity))
            headers = _headers(event)
            if hook.secret:
                digest = hmac.new(hook.secret.encode(), body.encode(), hashlib.sha256)
                headers["X-Plane-Signature"] = digest.hexdigest()
            self._enqueue(Delivery(hook.url, headers, body.encode()), fresh=True)

    def _enqueue(self, delivery: Delivery, fresh: bool = False) -> None:
        """Queue it for the sender, unless it is a new one to drop or hold back."""
        with self._sending:
            if fresh and self._to_drop > 0:
                self._to_drop -= 1
                self.dropped.append(delivery)
                return
            if fresh and self._held is not None:
                self._held.append(delivery)
                return
            self._pending += 1
        self._outbox.put(delivery)

    def _send_all(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            while (delivery := self._outbox.get()) is not None:
                try:
                    d = delivery
                    status = client.post(d.url, content=d.body, headers=d.headers).status_code
                except httpx.HTTPError:
                    status = 0
                with self._sending:
                    self.deliveries.append(replace(delivery, status=status))
                    self._pending -= 1
                    self._sending.notify_all()

    # -- the REST API ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        what = f"{request.method} {request.path}"
        key = request.headers.get("x-api-key")
        if key is None:
            self.violate(f"{what} without an X-Api-Key header")
        if key != self.token:
            return json_response(401, {"error": "Given API token is not valid"})
        limited, quota = self._throttle()
        if limited is not None:
            return limited
        try:
            if not request.path.endswith("/"):
                self._refuse(404, f"{what}: Plane's API paths end in /")
            with self._data:
                answer = self._route(request, what)
        except _Refused as refused:
            answer = refused.args[0]
        answer.headers.update(quota)
        return answer

    def _route(self, request: Request, what: str) -> Response:
        method = request.method.lower()
        if request.path == "/api/v1/users/me/" and method == "get":
            if request.query:
                self.violate(f"{what}: takes no query, got {sorted(request.query)}")
            return self._answer(200, dict(self.me), UserLite)
        match = _IN_PROJECT.match(request.path)
        slug, pid, rest = match.groups() if match else ("", "", "")
        routed = [(name, m) for pattern, name in _ROUTES if (m := pattern.match(rest))]
        if not routed:
            self._refuse(404, f"{what}: the fake serves no such endpoint")
        name, found = routed[0]
        handler = getattr(self, f"_{name}_{method}", None)
        if handler is None:
            self._refuse(405, f"{what}: the endpoint does not take {request.method}")
        p = _found(self._projects.get(pid) if slug == self.slug else None)
        answer: Response = handler(request, what, p, *found.groups())
        return answer

    def _project_get(self, request: Request, what: str, p: _Project) -> Response:
        self._query(request, what, RetrieveQueryParams)
        value = {"id": p.id, "name": p.name, "identifier": p.identifier, "description": ""}
        return self._answer(200, {**value, "workspace": self.workspace_id}, Project)

    def _states_get(self, request: Request, what: str, p: _Project) -> Response:
        query = self._query(request, what, PaginatedQueryParams)
        page = self._page(what, query, [dict(s) for s in p.states])
        return self._answer(200, page, PaginatedStateResponse)

    def _items_get(self, request: Request, what: str, p: _Project) -> Response:
        query = self._query(request, what, WorkItemQueryParams)
        self.item_listings += 1
        order = query.get("order_by") or "-created_at"  # a field the items lack: the fake fails
        found = sorted(p.items.values(), key=lambda i: i[order.lstrip("-")])
        found = found[::-1] if order.startswith("-") else found
        expand = _expansions(query)
        page = self._page(what, query, [self._item_json(p, i, expand) for i in found])
        return self._answer(200, page, PaginatedWorkItemResponse)

    def _item_get(self, request: Request, what: str, p: _Project, item_id: str) -> Response:
        query = self._query(request, what, RetrieveQueryParams)
        item = _found(p.items.get(item_id))
        return self._answer(200, self._item_json(p, item, _expansions(query)), WorkItemDetail)

    def _item_patch(self, request: Request, what: str, p: _Project, item_id: str) -> Response:
        body = self._body(request, what, UpdateWorkItem)
        item = _found(p.items.get(item_id))
        if body.get("state") is not None and p.state(body["state"]) is None:
            error = ["State is not valid please pass a valid state_id"]
            return json_response(400, {"non_field_errors": error})
        self._change(p, item, body, self.me)
        return self._answer(200, self._item_json(p, item, set()), WorkItem)

    def _comments_get(self, request: Request, what: str, p: _Project, item_id: str) -> Response:
        query = self._query(request, what, PaginatedQueryParams)
        newest_first = [dict(c) for c in reversed(_found(p.comments.get(item_id)))]
        page = self._page(what, query, newest_first)
        return self._answer(200, page, PaginatedWorkItemCommentResponse)

    def _activities_get(self, request: Request, what: str, p: _Project, item_id: str) -> Response:
        query = self._query(request, what, PaginatedQueryParams)
        oldest_first = [dict(a) for a in _found(p.activities.get(item_id))]
        page = self._page(what, query, oldest_first)
        return self._answer(200, page, PaginatedWorkItemActivityResponse)

    def _comments_post(self, request: Request, what: str, p: _Project, item_id: str) -> Response:
        body = self._body(request, what, CreateWorkItemComment)
        _found(p.items.get(item_id))
        ext = ("external_source", "external_id")
        everywhere = [c for comments in p.comments.values() for c in comments]  # the project's
        clash = [c for c in everywhere if all(body.get(k) and body[k] == c[k] for k in ext)]
        if clash:
            error = "Work item comment with the same external id and external source already exists"
            return json_response(409, {"error": error, "id": clash[0]["id"]})
        if not body.get("comment_html") and body.get("comment_json") is None:
            self.violate(f"{what}: a comment with no comment_html says nothing")
            return json_response(400, {"comment_html": ["This field is required."]})
        return self._answer(201, dict(self._comment(p, item_id, body, self.me)), WorkItemComment)

    # -- inside --------------------------------------------------------------------------------

    def _comment(self, p: _Project, item_id: str, body: Fields, actor: Fields) -> Record:
        stamp = self._stamp()
        made = _comment(p, self.workspace_id, stamp, item_id, body, actor["id"])
        p.comments[item_id].append(made)
        self._emit("issue_comment", "created", dict(made), (None, None, None, actor))
        return made

    def _query(self, request: Request, what: str, model: type[BaseModel]) -> Record:
        """The query as the SDK's model for it allows it, or Plane's 400 (a violation)."""
        unknown = sorted(set(request.query) - set(model.model_fields))
        unknown += sorted(k for k, v in request.query.items() if len(v) > 1)
        if unknown:
            self._refuse(400, f"{what}: query parameters {unknown} not in {model.__name__}")
        values: Record = {k: v[0] for k, v in request.query.items()}
        return self._valid(what, values, model, "query")

    def _body(self, request: Request, what: str, model: type[BaseModel]) -> Record:
        kind = request.headers.get("content-type", "")
        if not kind.startswith("application/json"):
            self._refuse(415, f"{what}: a body of type {kind!r}, not application/json")
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._refuse(400, f"{what}: a body that is not a JSON object")
        unknown = sorted(set(body) - set(model.model_fields))
        if unknown:
            self._refuse(400, f"{what}: fields {unknown} not in {model.__name__}")
        return self._valid(what, body, model, "body")

    def _valid(self, what: str, values: Record, model: type[BaseModel], part: str) -> Record:
        try:
            model.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            wrong = f"{where}: {first['msg']}"
            self._refuse(400, f"{what}: {part} fails the SDK's {model.__name__} at {wrong}")
        return values

    def _refuse(self, status: int, violation: str) -> NoReturn:
        self.violate(violation)
        raise _Refused(json_response(status, {"error": violation}))

    def _page(self, what: str, query: Fields, results: list[Record]) -> Record:
        """One page as BasePaginator.paginate answers it."""
        per_page = int(query.get("per_page") or self.per_page_max)
        if per_page > self.per_page_max:
            self._refuse(400, f"{what}: per_page={per_page} is over {self.per_page_max}")
        raw = str(query.get("cursor") or f"{per_page}:0:0")
        cursor = re.fullmatch(r"\d+(?:\.\d+)?:(\d+):[01]", raw)  # value:offset:is_prev
        if cursor is None:
            self._refuse(400, f"{what}: cursor {raw!r} is not value:offset:is_prev")
        page = int(cursor[1])
        return _page_of(results, per_page, page)

    def _answer(self, status: int, value: Any, model: type[BaseModel]) -> Response:
        try:
            model.model_validate(value)
        except ValidationError as exc:  # the fake's own mistake: a test fails on it
            self.violate(f"the fake's answer does not parse as the SDK's {model.__name__}: {exc}")
        return json_response(status, value)

    def _throttle(self) -> tuple[Response | None, dict[str, str]]:
        """ApiKeyRateThrottle: a sliding minute of this key's requests, on the fake's clock."""
        if self.rate_limit is None:
            return None, {}
        with self._data:
            now = self._clock()
            self._calls = [t for t in self._calls if t > now - 60]
            if len(self._calls) >= self.rate_limit:
                wait = max(1, math.ceil(60 - (now - self._calls[0])))
                detail = f"Request was throttled. Expected available in {wait} seconds."
                return json_response(429, {"detail": detail}, {"Retry-After": str(wait)}), {}
            self._calls.append(now)
            remaining = max(0, self.rate_limit - len(self._calls))
        reset = str(int(now + 60))
        return None, {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": reset}

    def _item_json(self, p: _Project, item: Fields, expand: set[str]) -> Record:
        value = dict(item)
        if "state" in expand:
            value["state"] = _state_lite(p.state(item["state"]))
        return value

    def _expanded(self, p: _Project, item: Fields) -> Record:
        """The item as IssueExpandSerializer gives it to a webhook: the state as an object."""
        return {**item, "state": _state_lite(p.state(item["state"])), "labels": [], "assignees": []}

    def _change(
        self, p: _Project, item: Record, new: Fields, actor: Fields, field: str = ""
    ) -> None:
        """Apply what differs, then send one delivery per changed field (model_activity), the
        state's under `field` if given (the web app sends `state_id`)."""
        changed = [(k, item.get(k), v) for k, v in new.items() if item.get(k) != v]
        for key, _, value in changed:
            item[key] = value
        if not changed:
            return
        item["description_stripped"] = _stripped(item["description_html"])
        item["updated_at"], item["updated_by"] = self._stamp(), actor["id"]
        for key, was, now in changed:
            p.activities.setdefault(item["id"], []).append(
                _activity(p, self.workspace_id, item, key, was, now, actor["id"])
            )
            name = field if key == "state" and field else key
            self._emit("issue", "updated", self._expanded(p, item), (name, was, now, actor))

    def _stamp(self) -> str:
        """Now, as Plane writes it; strictly later than the last, so every change shows."""
        with self._data:
            now = max(datetime.now(UTC), self._last_stamp + timedelta(microseconds=1))
            self._last_stamp = now
        return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _state_lite(state: Fields | None) -> Record | None:
    if state is None:
        return None
    return {k: state[k] for k in ("id", "name", "color", "group")}


def _expansions(query: Fields) -> set[str]:
    return {e.strip() for e in str(query.get("expand") or "").split(",") if e.strip()}


def _stripped(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text or ""))
