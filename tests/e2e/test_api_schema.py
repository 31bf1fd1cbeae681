"""What a running `orch serve` says of its API, and whether the API keeps to it: each route's
statuses in /openapi.json, the documentation pages served whole from the package, and
schemathesis sending generated requests (bounded, derandomized) to every operation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .test_api_access import Site, serve

pytestmark = pytest.mark.slow

ADMIN = "schemathesis-admin"
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from serve(tmp_path_factory.mktemp("schema"), ((ADMIN, "admin"),))


@pytest.fixture(scope="module")
def document(site: Site) -> dict[str, Any]:
    answer = httpx.get(f"{site.url}/openapi.json", timeout=10)  # documentation: no token
    assert answer.status_code == 200
    return dict(answer.json())


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def expected_statuses(path: str, operation: dict[str, Any]) -> set[str]:
    """What any route may answer, from what it takes: a token, a path parameter, a body."""
    expected = set()
    if operation.get("security") != []:
        expected |= {"401", "403", "503"}
    if "{" in path:
        expected |= {"404", "422"}  # an unknown one; one with a NUL
    if "requestBody" in operation:
        expected |= {"400", "413", "415", "422"}  # one not UTF-8; too big; not JSON; invalid
    return expected


def test_the_document_lists_every_status_each_route_can_return(document: dict[str, Any]) -> None:
    listed = {(method, path) for method, path, _ in operations(document)}
    assert {
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/tasks/{key}"),
        ("POST", "/api/v1/tasks"),
        ("POST", "/api/v1/tasks/{key}/retry"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/{name}"),
        ("GET", "/api/v1/settings"),
    } <= listed
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token made with `orch token create --name NAME --role ROLE`.",
    }
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["type"] == "string"
    assert "detail" in error["properties"]

    for method, path, operation in operations(document):
        responses = operation["responses"]
        where = f"{method} {path}"
        assert [s for s in responses if s.startswith("2")], f"{where} lists no success"
        missing = expected_statuses(path, operation) - set(responses)
        assert not missing, f"{where} does not list {sorted(missing)}"
        if operation.get("security") != []:
            assert operation["security"] == [{"bearer": []}], where
        for status, response in responses.items():
            if not status.startswith("2"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, f"{where} {status}"

    paths = document["paths"]
    assert paths["/api/v1/health"]["get"]["security"] == []
    assert "401" not in paths["/api/v1/health"]["get"]["responses"]
    # a conflict is listed where one can happen: an answer given already, a name taken
    for method, path in (
        ("post", "/api/v1/tasks/{key}/approve"),
        ("post", "/api/v1/tasks/{key}/reject"),
        ("post", "/api/v1/tasks/{key}/retry"),
        ("post", "/api/v1/tokens"),
    ):
        assert "409" in paths[path][method]["responses"], f"{method} {path}"
    assert "201" in paths["/api/v1/tokens"]["post"]["responses"]


class _References(HTMLParser):
    """What a page loads: each src and href, and the spec URLs the viewers fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href", "spec-url", "data-spec-url"):
            if found.get(name):
                self.urls.append(str(found[name]))
        self._in_script = tag == "script" and not found.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_everything_from_this_server(site: Site, page: str) -> None:
    with httpx.Client(base_url=site.url, timeout=10) as anyone:  # documentation: no token
        answer = anyone.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "default-src 'self';" in policy
        external = [
            u
            for u in re.findall(r"""https?://[^\s"'<>)]+""", answer.text)
            if not u.startswith(site.url)
        ]
        assert external == []
        references = _References()
        references.feed(answer.text)
        # the policy runs no inline script: the page must need none
        assert references.inline_scripts == 0
        assert any(u.endswith(".js") for u in references.urls)
        assert any(u.endswith("/openapi.json") for u in references.urls)
        for url in references.urls:
            absolute = urljoin(f"{site.url}{page}", url)
            assert urlsplit(absolute).netloc == urlsplit(site.url).netloc, url
            loaded = anyone.get(absolute)
            assert loaded.status_code == 200, url
            assert loaded.content, url
        assert anyone.get("/docs/assets/no-such-file.js").status_code == 404


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 100  # per operation and pass: three passes, at most 300 requests a route


@pytest.fixture(scope="module")
def known(site: Site) -> dict[str, str]:
    """Path parameters naming what exists: a task at work, and a token to revoke."""
    with httpx.Client(base_url=site.url, timeout=10, headers=bearer(site)) as admin:
        filed = admin.post("/api/v1/tasks", json={"repo": "sample", "title": "Add a helper"})
        assert filed.status_code == 201, filed.text
        made = admin.post("/api/v1/tokens", json={"name": "doomed", "role": "viewer"})
        assert made.status_code == 201, made.text
    return {"key": filed.json()["key"], "name": "doomed"}


def bearer(site: Site) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.tokens[ADMIN]}"}


@pytest.mark.parametrize(
    ("mode", "on_known"),
    [
        (GenerationMode.POSITIVE, False),
        (GenerationMode.NEGATIVE, False),
        (GenerationMode.POSITIVE, True),
    ],
    ids=["valid", "invalid", "valid-on-a-real-task"],
)
def test_generated_requests_get_the_answers_the_document_promises(
    site: Site, known: dict[str, str], mode: GenerationMode, on_known: bool
) -> None:
    """Each operation, sent requests that keep to its schema (valid) or break it (invalid),
    and the operations on a task or a token sent valid requests naming one that exists, with
    an admin's token: no answer is a server error, or one the document does not promise."""
    config = schemathesis.Config.from_dict(
        {"seed": 20261205, "headers": bearer(site), "generation": {"database": "none"}}
    )
    schema = schemathesis.openapi.from_url(f"{site.url}/openapi.json", config=config)
    failures: dict[str, str] = {}
    tried = sent = 0
    answered: set[tuple[str, int]] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        fixed = {k: v for k, v in known.items() if f"{{{k}}}" in operation.path}
        if on_known and not fixed:
            continue

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def send(case: Case) -> None:
            nonlocal sent
            sent += 1
            response = case.call_and_validate(
                base_url=site.url, headers=bearer(site), checks=CHECKS, timeout=10
            )
            answered.add((case.operation.label, response.status_code))

        try:
            send()
        except Unsatisfiable:
            # nothing in this operation's schema can be broken (no body, no constrained
            # parameter): there is no invalid request to send
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # every operation is tried; the failures are told together
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
        tried += 1
    assert tried >= (6 if on_known else 14) and sent > tried
    accepted = {label for label, status in answered if status < 300}
    if on_known:  # the requests reached what exists, not only "no such task"
        assert {"GET /api/v1/tasks/{key}", "DELETE /api/v1/tokens/{name}"} <= accepted
    elif mode is GenerationMode.POSITIVE:
        assert {"GET /api/v1/state", "GET /api/v1/settings"} <= accepted
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())


def test_documentation_needs_no_token_where_the_api_does(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=10) as anyone:
        for page in ("/openapi.json", "/docs", "/redoc"):
            assert anyone.get(page).status_code == 200, page
        assert anyone.get("/api/v1/state").status_code == 401
