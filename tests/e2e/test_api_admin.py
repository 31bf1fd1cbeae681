"""The admin's routes on a running `orch serve`: tokens made, listed and revoked through the API,
and the settings in force shown without their secrets; refused to every other role."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orch.demo import sample

from .conftest import write_config
from .test_api_access import Site, client, make_token, serving

pytestmark = pytest.mark.slow

ADMIN_ROUTES = [
    ("GET", "/api/v1/tokens", None),
    ("POST", "/api/v1/tokens", {"name": "eve", "role": "admin"}),
    ("DELETE", "/api/v1/tokens/root", None),
    ("GET", "/api/v1/settings", None),
]
AGENT_KEY = "sk-live-0123456789"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    _, remote = sample.create(tmp_path)
    helper = {
        "kind": "command",
        "command": ["true"],
        "env": {"MODEL_API_KEY": AGENT_KEY, "MODEL_BASE_URL": "https://models.example/v1"},
    }
    config = write_config(tmp_path, remote, agents={"default": {"kind": "scripted"}, "h": helper})
    roles = (("vic", "viewer"), ("ann", "operator"), ("root", "admin"))
    yield from serving(config, {name: make_token(config, name, role) for name, role in roles})


def test_only_an_admin_manages_tokens_and_reads_the_settings(site: Site) -> None:
    for name in ("vic", "ann"):
        with client(site, name) as other:
            for method, path, body in ADMIN_ROUTES:
                refused = other.request(method, path, json=body)
                assert refused.status_code == 403, (name, method, path)
                assert refused.json()["error"].endswith("this needs admin")
    with client(site) as anonymous:
        for method, path, body in ADMIN_ROUTES:
            assert anonymous.request(method, path, json=body).status_code == 401, (method, path)
    with client(site, "root") as admin:
        listed = admin.get("/api/v1/tokens").json()["tokens"]
        # nothing was made or revoked by the refused requests
        assert sorted((t["name"], t["role"], t["revoked_at"]) for t in listed) == [
            ("ann", "operator", None),
            ("root", "admin", None),
            ("vic", "viewer", None),
        ]
        assert admin.get("/api/v1/settings").status_code == 200


def test_a_token_made_through_the_api_works_at_once_and_its_secret_is_shown_once(
    site: Site,
) -> None:
    with client(site, "root") as admin:
        made = admin.post("/api/v1/tokens", json={"name": "ops", "role": "operator"})
        assert made.status_code == 201
        body = made.json()
        assert (body["name"], body["role"], body["revoked_at"]) == ("ops", "operator", None)
        secret = body["secret"]
        assert secret.startswith("orch_")

        listing = admin.get("/api/v1/tokens")
        assert secret not in listing.text
        assert hashlib.sha256(secret.encode()).hexdigest() not in listing.text
        for shown in listing.json()["tokens"]:
            assert set(shown) == {"name", "role", "created_at", "revoked_at"}

        taken = admin.post("/api/v1/tokens", json={"name": "ops", "role": "viewer"})
        assert taken.status_code == 409
        not_a_name = admin.post("/api/v1/tokens", json={"name": "a b", "role": "viewer"})
        assert not_a_name.status_code == 422
        assert not_a_name.json()["detail"][0]["loc"] == ["body", "name"]

    with httpx.Client(
        base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {secret}"}
    ) as ops:
        filed = ops.post("/api/v1/tasks", json={"repo": "sample", "title": "Add a helper"})
        assert filed.status_code == 201
        assert filed.json()["history"][0]["actor"] == "ops"
        assert ops.get("/api/v1/tokens").status_code == 403  # an operator, not an admin


def test_a_token_revoked_through_the_api_is_refused_from_then_on(site: Site) -> None:
    with client(site, "vic") as viewer:
        assert viewer.get("/api/v1/state").status_code == 200
    with client(site, "root") as admin:
        revoked = admin.delete("/api/v1/tokens/vic")
        assert (revoked.status_code, revoked.json()) == (200, {"name": "vic", "revoked": True})
        again = admin.delete("/api/v1/tokens/vic")
        assert (again.status_code, again.json()) == (200, {"name": "vic", "revoked": False})
        unknown = admin.delete("/api/v1/tokens/nobody")
        assert unknown.status_code == 404
        assert "nobody" in unknown.json()["error"]
        listed = {t["name"]: t for t in admin.get("/api/v1/tokens").json()["tokens"]}
        assert listed["vic"]["revoked_at"] is not None
        assert listed["ann"]["revoked_at"] is None
    with client(site, "vic") as viewer:
        assert viewer.get("/api/v1/state").status_code == 401


def test_the_settings_are_shown_without_their_secrets(site: Site) -> None:
    with client(site, "root") as admin:
        shown = admin.get("/api/v1/settings")
    assert shown.status_code == 200
    settings = shown.json()
    assert AGENT_KEY not in shown.text
    assert settings["agents"]["h"]["env"] == {
        "MODEL_API_KEY": "<redacted>",
        "MODEL_BASE_URL": "<redacted>",
    }
    assert settings["agents"]["h"]["command"] == ["true"]
    assert settings["store"]["url"] == f"sqlite:///{site.config.parent / 'orch.db'}"
    assert settings["repos"][0]["name"] == "sample"
    assert settings["repos"][0]["key_prefix"] == "SAM"
    for secret in site.tokens.values():
        assert secret not in shown.text
