"""Who may use a running `orch serve`, and what a request may carry: tokens made with `orch
token create`, each role held to what it may do, and the requests no caller of this API sends
(a cross-site form post, an oversized body, text orch cannot keep) refused before they act."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orch.demo import sample

from .conftest import orch, write_config
from .test_serve import start_serve, stop, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Site:
    url: str
    config: Path
    tokens: dict[str, str]  # name -> secret


def make_token(config: Path, name: str, role: str) -> str:
    made = orch("--config", str(config), "token", "create", "--name", name, "--role", role)
    assert made.returncode == 0, made.stderr
    assert f"token {name} ({role}) created" in made.stderr
    return made.stdout.strip()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from serve(tmp_path, (("vic", "viewer"), ("ann", "operator"), ("root", "admin")))


@pytest.fixture
def open_site(tmp_path: Path) -> Iterator[Site]:
    """No token made: the API is open, on a loopback address."""
    yield from serve(tmp_path, ())


def serve(tmp_path: Path, roles: tuple[tuple[str, str], ...]) -> Iterator[Site]:
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote)
    yield from serving(config, {name: make_token(config, name, role) for name, role in roles})


def serving(config: Path, tokens: dict[str, str]) -> Iterator[Site]:
    """`orch serve` with `config` on a free port of 127.0.0.1, until the caller is done."""
    proc = start_serve(config)
    try:
        assert proc.stdout is not None
        match = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
        assert match, proc.stderr.read() if proc.stderr else ""
        yield Site(match.group(0), config, tokens)
    finally:
        stop(proc)


def client(site: Site, name: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {site.tokens[name]}"} if name else {}
    return httpx.Client(base_url=site.url, timeout=10, headers=headers)


def test_every_route_but_health_needs_a_live_token_and_a_role_that_allows_it(site: Site) -> None:
    with client(site) as anonymous:
        assert anonymous.get("/api/v1/health").status_code == 200
        for path in ("/api/v1/state", "/api/v1/tasks", "/api/v1/tasks/SAM-1"):
            refused = anonymous.get(path)
            assert refused.status_code == 401, path
            assert "bearer token is required" in refused.json()["error"]
        filed = anonymous.post("/api/v1/tasks", json={"repo": "sample", "title": "x"})
        assert filed.status_code == 401
        forged = anonymous.get("/api/v1/state", headers={"Authorization": "Bearer orch_guess"})
        assert (forged.status_code, forged.json()) == (401, {"error": "unknown or revoked token"})
        assert forged.headers["www-authenticate"] == "Bearer"

    with client(site, "vic") as viewer:
        assert viewer.get("/api/v1/state").status_code == 200
        refused = viewer.post("/api/v1/tasks", json={"repo": "sample", "title": "x"})
        assert refused.status_code == 403
        assert refused.json() == {"error": "vic is a viewer; this needs operator"}
        assert viewer.post("/api/v1/tasks/SAM-1/stop").status_code == 403
        assert viewer.get("/api/v1/tasks").json() == {"tasks": []}  # nothing was filed

    with client(site, "ann") as operator:
        created = operator.post("/api/v1/tasks", json={"repo": "sample", "title": "Add a helper"})
        assert created.status_code == 201
        key = created.json()["key"]
        assert created.json()["history"][0]["actor"] == "ann"

        def waiting() -> bool:
            return bool(operator.get(f"/api/v1/tasks/{key}").json()["status"] == "waiting")

        wait_for(waiting, "the task waiting for its plan's approval")
        # the token's holder is the actor, whatever the body claims
        approved = operator.post(f"/api/v1/tasks/{key}/approve", json={"actor": "someone else"})
        assert approved.json()["recorded"] is True
        assert "approved by ann" in operator.post(f"/api/v1/tasks/{key}/reject").json()["error"]

    for name in ("ann", "vic", "root"):
        revoked = orch("--config", str(site.config), "token", "revoke", name)
        assert (revoked.returncode, revoked.stdout.strip()) == (0, f"token {name} revoked")
    with client(site, "ann") as operator:
        assert operator.get("/api/v1/state").status_code == 401
    with client(site) as anonymous:
        # every token revoked: the API stays closed, it does not open again
        assert anonymous.get("/api/v1/state").status_code == 401
    listed = orch("--config", str(site.config), "token", "list", "--json")
    assert listed.stdout.count('"revoked_at": null') == 0 and "orch_" not in listed.stdout
    assert listed.stdout.count('"name"') == 3


def test_a_cross_site_form_post_and_a_foreign_origin_change_nothing(site: Site) -> None:
    with client(site, "root") as admin:
        form = admin.post(
            "/api/v1/tasks",
            content="repo=sample&title=x",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": "http://evil.example",
            },
        )
        assert form.status_code == 403
        assert "http://evil.example" in form.json()["error"]
        plain = admin.post(
            "/api/v1/tasks",
            content="repo=sample&title=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert plain.status_code == 415
        fetched = admin.post(
            "/api/v1/tasks",
            json={"repo": "sample", "title": "x"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert fetched.status_code == 403
        assert admin.get("/api/v1/tasks").json() == {"tasks": []}
        # the same site, by its own page: accepted
        own = admin.post(
            "/api/v1/tasks",
            json={"repo": "sample", "title": "From the dashboard"},
            headers={"Origin": site.url, "Sec-Fetch-Site": "same-origin"},
        )
        assert own.status_code == 201


def test_an_open_api_answers_only_to_a_loopback_host_name(open_site: Site) -> None:
    with client(open_site) as anyone:
        assert anyone.get("/api/v1/state").status_code == 200
        # a page whose name was rebound to 127.0.0.1 sends its own name as Host and Origin
        rebound = anyone.post(
            "/api/v1/tasks",
            json={"repo": "sample", "title": "x"},
            headers={"Host": "evil.example:8000", "Origin": "http://evil.example:8000"},
        )
        assert rebound.status_code == 403
        assert "loopback host" in rebound.json()["error"]
        read = anyone.get("/api/v1/tasks", headers={"Host": "evil.example"})
        assert read.status_code == 403
        assert anyone.get("/api/v1/tasks", headers={"Host": "localhost"}).json() == {"tasks": []}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"repo": "sample", "title": "a\\u0000b"}', "NUL"),
        ('{"repo": "sample", "title": "a\\ud800b"}', "lone surrogate"),
        ('{"repo": "sample", "title": "x", "body": NaN}', "NaN is not a number JSON allows"),
        ('{"repo": "sample", "title": "x", "body": 1e999}', "too large a number"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        (b'{"repo": "sample", "title": "\xff"}', "not UTF-8"),
    ],
)
def test_text_orch_cannot_keep_and_numbers_json_does_not_allow_are_refused(
    site: Site, body: str | bytes, why: str
) -> None:
    with client(site, "root") as admin:
        refused = admin.post(
            "/api/v1/tasks", content=body, headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 422
        assert why in refused.json()["error"]
        assert admin.get("/api/v1/tasks").json() == {"tasks": []}


def test_an_oversized_body_and_an_invalid_one_are_answered_in_the_error_shape(site: Site) -> None:
    with client(site, "root") as admin:
        huge = admin.post(
            "/api/v1/tasks", json={"repo": "sample", "title": "x", "body": "a" * 300_000}
        )
        assert (huge.status_code, huge.json()) == (
            413,
            {"error": "the body is over 262144 bytes"},
        )
        chunked = admin.post(
            "/api/v1/tasks",
            content=iter([b" " * 100_000] * 3),  # no length declared: counted as it arrives
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413
        assert admin.get("/api/v1/tasks/SAM%00").status_code == 422
        invalid = admin.post("/api/v1/tasks", json={"repo": "sample"})
        assert invalid.status_code == 422
        assert invalid.json()["error"] == "the request is not valid"
        assert invalid.json()["detail"][0]["loc"] == ["body", "title"]
        infinite = admin.post(
            "/api/v1/tasks/SAM-9/retry",
            content='{"budget_usd": 1e999}',
            headers={"Content-Type": "application/json"},
        )
        assert infinite.status_code == 422
        assert "too large a number" in infinite.json()["error"]
        negative = admin.post("/api/v1/tasks/SAM-9/retry", json={"budget_usd": -1})
        assert negative.status_code == 422
        assert negative.json()["detail"][0]["loc"] == ["body", "budget_usd"]


def test_serve_refuses_to_listen_beyond_this_machine_without_a_token(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote)
    refused = orch("--config", str(config), "serve", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0" in refused.stderr
    assert "orch token create" in refused.stderr
