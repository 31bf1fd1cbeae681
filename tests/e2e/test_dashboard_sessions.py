"""The dashboard's sessions and live events over HTTP, against a real `orch serve`: a token
traded for a cookie scripts cannot read and other sites do not send, a CSRF token on every
change, sessions that end with their token, and a change stream fed by the store."""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orch.demo import sample

from .conftest import orch, write_config
from .test_api_access import Site, client, serve
from .test_serve import start_serve, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from serve(tmp_path, (("vic", "viewer"), ("ann", "operator")))


@contextlib.contextmanager
def signed_in(site: Site, name: str) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a session cookie (and no bearer token), and the session's CSRF token."""
    with httpx.Client(base_url=site.url, timeout=10) as browser:
        answer = browser.post("/session", json={"token": site.tokens[name]})
        assert answer.status_code == 200, answer.text
        page = browser.get("/")
        assert page.status_code == 200
        match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
        assert match
        yield browser, match.group(1)


def test_signing_in_sets_a_strict_http_only_cookie(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=10) as browser:
        wrong = browser.post("/session", json={"token": "not-a-token"})
        answer = browser.post("/session", json={"token": site.tokens["ann"]})

    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    assert answer.json() == {"name": "ann", "role": "operator"}
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("orch_session=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert site.tokens["ann"] not in cookie


def test_a_change_through_a_session_needs_its_csrf_token(site: Site) -> None:
    with signed_in(site, "ann") as (browser, csrf):
        ticket = {"repo": "sample", "title": "From the dashboard"}
        missing = browser.post("/api/v1/tasks", json=ticket)
        wrong = browser.post("/api/v1/tasks", json=ticket, headers={"X-CSRF-Token": "x" + csrf})
        right = browser.post("/api/v1/tasks", json=ticket, headers={"X-CSRF-Token": csrf})
        read = browser.get("/api/v1/tasks")

    assert (missing.status_code, wrong.status_code) == (403, 403)
    assert "CSRF" in missing.json()["error"]
    assert right.status_code == 201, right.text
    assert right.json()["history"][0]["actor"] == "ann"
    assert [t["key"] for t in read.json()["tasks"]] == [right.json()["key"]]


def test_revoking_the_token_ends_its_sessions(site: Site) -> None:
    with signed_in(site, "ann") as (browser, _):
        revoked = orch("--config", str(site.config), "token", "revoke", "ann")
        assert revoked.returncode == 0, revoked.stderr
        page = browser.get("/")
        fragment = browser.get("/fragments/board")

    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2F"
    assert fragment.status_code == 401


def test_signing_out_ends_the_session_only_with_its_csrf_token(site: Site) -> None:
    with signed_in(site, "vic") as (browser, csrf):
        forged = browser.post("/session/end", json={})
        still = browser.get("/")
        ended = browser.post("/session/end", json={}, headers={"X-CSRF-Token": csrf})
        after = browser.get("/")

    assert forged.status_code == 403
    assert still.status_code == 200
    assert ended.status_code == 200
    assert after.status_code == 303


def test_pages_load_nothing_from_another_site_and_forbid_inline_script(site: Site) -> None:
    with signed_in(site, "ann") as (browser, _):
        page = browser.get("/")
        login = browser.get("/login")
        assets = [browser.get(path) for path in ("/static/dashboard.js", "/static/dashboard.css")]

    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    for html in (page.text, login.text):
        references = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert references
        assert all(r.startswith(("/", "#", "data:")) for r in references), references
        assert "<script>" not in html
    assert [a.status_code for a in assets] == [200, 200]


def test_sign_in_returns_only_to_a_path_on_this_site(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=10) as browser:
        pages = {
            target: browser.get("/login", params={"next": target}).text
            for target in (
                "/tasks/SAM-1",
                "https://evil.example/",
                "//evil.example/x",
                "/\t/evil.example",
                "/\n/evil.example",
                "/\\evil.example",
            )
        }

    assert 'data-next="/tasks/SAM-1"' in pages.pop("/tasks/SAM-1")
    for target, page in pages.items():
        assert 'data-next="/"' in page, target


class Events:
    """Reads a server-sent event stream on a thread of its own, into a queue."""

    def __init__(self, site: Site, name: str | None) -> None:
        self.queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._client = client(site, name)
        self._client.timeout = httpx.Timeout(10, read=None)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._stop = threading.Event()
        self.ended = threading.Event()
        self._thread.start()

    def _read(self) -> None:
        try:
            self._follow()
        finally:
            self.ended.set()

    def _follow(self) -> None:
        try:
            with self._client.stream("GET", "/events") as stream:
                name = ""
                for line in stream.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.queue.put((name, line[6:]))
        except httpx.HTTPError:
            return

    def next(self, timeout: float = 30) -> tuple[str, str]:
        return self.queue.get(timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def test_the_event_stream_says_when_the_store_changes_and_is_quiet_when_nothing_does(
    site: Site,
) -> None:
    events = Events(site, "vic")
    try:
        kind, first = events.next()
        assert kind == "change"
        with pytest.raises(queue.Empty):
            events.next(timeout=2)  # an idle orch writes nothing a person would see

        with client(site, "ann") as api:
            assert api.post("/api/v1/tasks", json={"repo": "sample", "title": "x"}).is_success

        kind, later = events.next()
        assert kind == "change"
        assert int(later) > int(first)
    finally:
        events.close()


def test_a_change_made_by_another_process_reaches_the_event_stream(site: Site) -> None:
    events = Events(site, "vic")
    try:
        events.next()
        # the CLI writes the SQLite store itself; serve hears of it only through the file
        made = orch("--config", str(site.config), "token", "create", "--name", "eve")
        assert made.returncode == 0, made.stderr

        assert events.next()[0] == "change"
    finally:
        events.close()


def test_serve_stops_on_sigterm_while_a_dashboard_follows_its_events(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    proc = start_serve(write_config(tmp_path, remote))
    try:
        assert proc.stdout is not None
        match = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
        assert match
        events = Events(Site(match.group(0), tmp_path / "orch.yaml", {}), None)
        assert events.next()[0] == "change"

        proc.send_signal(signal.SIGTERM)

        assert proc.wait(timeout=60) == 0  # the open stream ended with the server
        events.close()
    finally:
        stop(proc)


def test_revoking_its_token_ends_an_open_event_stream(site: Site) -> None:
    events = Events(site, "vic")
    try:
        assert events.next()[0] == "change"

        revoked = orch("--config", str(site.config), "token", "revoke", "vic")
        assert revoked.returncode == 0, revoked.stderr

        assert events.ended.wait(timeout=30), "the stream went on after its token was revoked"
    finally:
        events.close()
