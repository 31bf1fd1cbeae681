"""The fake Plane is Plane as orch meets it: what Plane's own SDK sends is accepted and what it
answers parses; what the SDK's models reject is refused and flagged; webhooks come signed, one
per changed field, and can be held back, reordered, dropped and sent again."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from plane.client import PlaneClient
from plane.models.query_params import WorkItemQueryParams
from plane.models.work_items import CreateWorkItemComment, UpdateWorkItem

from orch.fakes.plane import PlaneFake
from orch.fakes.server import FakeServer, Request, Response

TOKEN = "plane-key-fake"
SECRET = "plane-hook-secret"


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver(FakeServer):
    """A webhook endpoint: it keeps what it receives, raw."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self._got = threading.Lock()

    def handle(self, request: Request) -> Response:
        with self._got:
            self.received.append(Received(dict(request.headers), request.body))
        return Response(200)

    def payloads(self) -> list[Any]:
        with self._got:
            return [json.loads(r.body) for r in self.received]


@dataclass
class World:
    fake: PlaneFake
    receiver: Receiver
    project: str
    api: httpx.Client

    def path(self, rest: str = "") -> str:
        return f"/api/v1/workspaces/{self.fake.slug}/projects/{self.project}/{rest}"


@pytest.fixture
def world() -> Iterator[World]:
    with Receiver() as receiver, PlaneFake(TOKEN) as fake:
        fake.subscribe(f"{receiver.url}/hooks/plane", SECRET)
        headers = {"X-Api-Key": TOKEN}
        with httpx.Client(base_url=fake.url, headers=headers, timeout=10) as api:
            yield World(fake, receiver, fake.add_project("Orch", "ORCH"), api)


def test_the_signature_verifies_over_the_raw_body(world: World) -> None:
    item = world.fake.add_item(world.project, "Signed")
    world.fake.person_moves(world.project, item["id"], "To Analyse")
    assert world.fake.settle()
    assert len(world.receiver.received) == 2  # created, then the state
    for got in world.receiver.received:
        expected = hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(got.headers["x-plane-signature"], expected)
        assert got.headers["content-type"] == "application/json"
        assert got.headers["user-agent"] == "Autopilot"
        assert got.headers["x-plane-event"] == "issue"
        assert uuid.UUID(got.headers["x-plane-delivery"]).version == 4
    assert [d.status for d in world.fake.deliveries] == [200, 200]


def test_a_delivery_is_shaped_as_plane_sends_it(world: World) -> None:
    item = world.fake.add_item(world.project, "Shaped")
    world.fake.person_moves(world.project, item["id"], "Approved", via="ui")
    world.fake.person_moves(world.project, item["id"], "Rejected", via="api")
    assert world.fake.settle()
    created, by_ui, by_api = world.receiver.payloads()
    assert (created["event"], created["action"], created["activity"]["field"]) == (
        "issue",
        "created",
        None,
    )
    assert (by_ui["action"], by_ui["activity"]["field"]) == ("updated", "state_id")
    assert by_api["activity"]["field"] == "state"
    assert by_ui["data"]["state"]["name"] == "Approved"  # an object, not a uuid
    assert set(by_ui["data"]["state"]) == {"id", "name", "color", "group"}
    assert by_ui["activity"]["new_value"] == by_ui["data"]["state"]["id"]
    assert by_ui["activity"]["actor"]["id"] == world.fake.person["id"]
    assert by_ui["data"]["project"] == world.project and by_ui["data"]["id"] == item["id"]
    assert by_ui["workspace_id"] == world.fake.workspace_id


def test_one_delivery_per_changed_field(world: World) -> None:
    item = world.fake.add_item(world.project, "Fields", "<p>old</p>")
    approved = next(s for s in states(world) if s["name"] == "Approved")
    answer = world.api.patch(
        world.path(f"work-items/{item['id']}/"),
        json={"name": "Fields, renamed", "state": approved["id"], "priority": "none"},
    )
    assert answer.status_code == 200
    world.fake.person_edits(world.project, item["id"], name="Again", description_html="<p>n</p>")
    assert world.fake.settle()
    updates = [p for p in world.receiver.payloads() if p["action"] == "updated"]
    fields = [p["activity"]["field"] for p in updates]
    assert fields == ["name", "state", "name", "description_html"]  # priority did not change
    actors = [p["activity"]["actor"]["id"] for p in updates]
    assert actors[:2] == [world.fake.me["id"]] * 2  # the API key's own user
    assert actors[2:] == [world.fake.person["id"]] * 2
    assert world.fake.violations == []


def test_actions_can_be_spelled_as_http_verbs_map_them(world: World) -> None:
    world.fake.actions = "http"
    item = world.fake.add_item(world.project, "Verbs")
    world.fake.person_moves(world.project, item["id"], "STOP")
    assert world.fake.settle()
    assert [p["action"] for p in world.receiver.payloads()] == ["create", "update"]


def test_webhooks_can_be_held_reordered_dropped_and_sent_again(world: World) -> None:
    item = world.fake.add_item(world.project, "Order")
    assert world.fake.settle()
    world.fake.hold_webhooks()
    for state in ("To Analyse", "Analysing", "Approved"):
        world.fake.person_moves(world.project, item["id"], state)
    assert world.fake.settle() and len(world.receiver.received) == 1
    world.fake.release_webhooks(order="reversed")
    assert world.fake.settle()
    # each carries the item as it was when it changed: a late one is stale
    names = [p["data"]["state"]["name"] for p in world.receiver.payloads()[1:]]
    assert names == ["Approved", "Analysing", "To Analyse"]
    news = [p["activity"]["new_value"] for p in world.receiver.payloads()[1:]]
    ids = {s["name"]: s["id"] for s in states(world)}
    assert news == [ids["Approved"], ids["Analysing"], ids["To Analyse"]]

    world.fake.drop_webhooks(1)
    world.fake.person_moves(world.project, item["id"], "Done")
    assert world.fake.settle()
    assert len(world.receiver.received) == 4 and len(world.fake.dropped) == 1

    world.fake.redeliver(-1)
    world.fake.redeliver(-1, new_id=True)
    assert world.fake.settle()
    first, same, fresh = world.receiver.received[-3:]
    assert first.body == same.body == fresh.body
    assert same.headers["x-plane-delivery"] == first.headers["x-plane-delivery"]
    assert fresh.headers["x-plane-delivery"] != first.headers["x-plane-delivery"]


def test_plane_sdk_requests_are_accepted_and_its_models_parse_the_answers(world: World) -> None:
    for n in range(5):
        world.fake.add_item(world.project, f"item {n}")
    sdk = PlaneClient(base_url=world.fake.url, api_key=TOKEN)
    slug = world.fake.slug
    assert sdk.users.get_me().id == world.fake.me["id"]
    listed = sdk.states.list(slug, world.project)
    approved = next(s for s in listed.results if s.name == "Approved")
    page = sdk.work_items.list(slug, world.project, params=WorkItemQueryParams(per_page=2))
    assert (page.count, page.total_results, page.total_pages) == (2, 5, 3)
    assert (page.next_cursor, page.next_page_results, page.prev_page_results) == (
        "2:1:0",
        True,
        False,
    )
    last = sdk.work_items.list(
        slug, world.project, params=WorkItemQueryParams(per_page=2, cursor="2:2:0")
    )
    assert (last.count, last.next_page_results, last.prev_page_results) == (1, False, True)
    first = page.results[0]
    assert first.id is not None
    updated = sdk.work_items.update(
        slug, world.project, first.id, UpdateWorkItem(state=approved.id)
    )
    assert updated.state == approved.id
    comment = CreateWorkItemComment(
        comment_html="<p>hi</p>", external_source="orch", external_id="k"
    )
    made = sdk.work_items.comments.create(slug, world.project, first.id, comment)
    assert made.external_id == "k" and made.created_by == world.fake.me["id"]
    assert sdk.projects.retrieve(slug, world.project).identifier == "ORCH"
    assert world.fake.violations == []


def test_a_duplicate_external_id_is_a_409(world: World) -> None:
    item = world.fake.add_item(world.project, "Twice")
    body = {"comment_html": "<p>x</p>", "external_source": "orch", "external_id": "k-1"}
    path = world.path(f"work-items/{item['id']}/comments/")
    first = world.api.post(path, json=body)
    again = world.api.post(path, json=body)
    assert (first.status_code, again.status_code) == (201, 409)
    assert again.json()["id"] == first.json()["id"]
    assert world.fake.violations == []


def test_requests_the_sdk_models_reject_are_refused_and_flagged(world: World) -> None:
    item = world.fake.add_item(world.project, "Strict")
    comments = world.path(f"work-items/{item['id']}/comments/")
    refused = [
        world.api.post(comments, json={"external_id": "k", "external_source": "orch"}),
        world.api.post(comments, json={"comment_html": "<p>x</p>", "access": "PUBLIC"}),
        world.api.get(world.path("work-items/"), params={"per_page": "0"}),
        world.api.get(world.path("work-items/"), params={"per_page": "101"}),
        world.api.get(world.path("work-items/"), params={"cursor": "next"}),
        world.api.get(world.path("states/"), params={"page": "2"}),
        world.api.patch(world.path(f"work-items/{item['id']}/"), json={"status": "done"}),
        world.api.patch(world.path(f"work-items/{item['id']}/"), json={"priority": "asap"}),
        world.api.patch(world.path(f"work-items/{item['id']}/"), content=b"name=x"),
        world.api.get(world.path("work-items").rstrip("/")),
    ]
    assert [r.status_code for r in refused] == [400, 400, 400, 400, 400, 400, 400, 400, 415, 404]
    assert len(world.fake.violations) == len(refused)
    assert "comment_html" in world.fake.violations[0]
    assert "per_page" in world.fake.violations[2]
    assert world.fake.comments_of(world.project, item["id"]) == []


def test_a_wrong_key_is_refused_as_plane_does(world: World) -> None:
    answer = httpx.get(f"{world.fake.url}/api/v1/users/me/", headers={"X-Api-Key": "nope"})
    assert answer.status_code == 401
    assert answer.json() == {"error": "Given API token is not valid"}
    assert world.fake.violations == []  # a wrong key is the client's right


def test_a_state_of_another_project_is_refused(world: World) -> None:
    other = world.fake.add_project("Other", "OTH")
    item = world.fake.add_item(world.project, "Cross")
    foreign = states(world, other)[0]["id"]
    answer = world.api.patch(world.path(f"work-items/{item['id']}/"), json={"state": foreign})
    assert answer.status_code == 400
    assert "State is not valid" in answer.text
    assert world.fake.state_of(world.project, item["id"]) == "Backlog"


def test_the_rate_limit_is_announced_then_enforced(world: World) -> None:
    now = [1_800_000_000.0]
    with PlaneFake(TOKEN, rate_limit=2, clock=lambda: now[0]) as fake:
        url = f"{fake.url}/api/v1/users/me/"
        answers = [httpx.get(url, headers={"X-Api-Key": TOKEN}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert [a.headers.get("X-RateLimit-Remaining") for a in answers[:2]] == ["1", "0"]
        assert answers[1].headers["X-RateLimit-Reset"] == str(int(now[0] + 60))
        assert answers[2].headers["Retry-After"] == "60"
        now[0] += 60
        assert httpx.get(url, headers={"X-Api-Key": TOKEN}).status_code == 200
        assert fake.violations == []


def states(world: World, project: str = "") -> list[dict[str, Any]]:
    path = f"/api/v1/workspaces/{world.fake.slug}/projects/{project or world.project}/states/"
    results: list[dict[str, Any]] = world.api.get(path).json()["results"]
    return results
