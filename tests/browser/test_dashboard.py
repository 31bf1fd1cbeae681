"""The dashboard in a real browser: Debian's Chromium, headless, against a real `orch serve`.

A person signs in with a token, files a ticket, watches it move on the board without reloading,
answers its checkpoints, STOPs another; a viewer is shown no actions and refused one; a page on
another site cannot act with the signed-in session."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from e2e.conftest import write_config
from e2e.test_api_access import make_token, serving
from e2e.test_serve import wait_for
from orch.demo import sample

from .conftest import Site, screenshot, sign_in

pytestmark = pytest.mark.slow

LIVE = 60_000  # ms: how long a live update may take to show while the pipeline runs


def file_ticket(page: Page, title: str) -> str:
    page.click("summary:has-text('File a ticket')")
    page.fill("#nt-title", title)
    page.click("button:has-text('File ticket')")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-go")
    page.wait_for_url(re.compile(r".*/tasks/SAM-\d+$"))
    return page.url.rsplit("/", 1)[1]


def status(page: Page) -> str:
    return page.locator("article[data-status]").get_attribute("data-status") or ""


def api(site: Site, name: str) -> httpx.Client:
    return httpx.Client(
        base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {site.tokens[name]}"}
    )


def test_an_operator_files_a_ticket_watches_it_live_and_answers_its_checkpoints(
    site: Site, page: Page
) -> None:
    sign_in(page, site, "ann")
    key = file_ticket(page, "Add a greeting")
    page.evaluate("window.notReloaded = true")

    badge = page.locator("article [data-field=status]")
    expect(badge).to_have_text("waiting", timeout=LIVE)
    expect(page.locator(".waiting").first).to_contain_text("approve-plan")
    expect(page.locator("#log")).to_contain_text('"type": "result"', timeout=LIVE)
    screenshot(page, "task-waiting")

    # approved from the keyboard: the button, then the confirmation's Confirm
    page.locator("button[data-act=approve]").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator(".waiting").first).to_contain_text("confirm-deploy", timeout=LIVE)
    assert page.evaluate("window.notReloaded") is True  # it moved on this page, live

    page.goto(site.url + "/")
    page.evaluate("window.notReloaded = true")
    waiting = page.locator("[data-column=waiting]")
    expect(waiting.locator(f"[data-task={key}]")).to_be_visible()
    screenshot(page, "board")
    with api(site, "ann") as client:
        confirmed = client.post(f"/api/v1/tasks/{key}/approve", json={})
        assert confirmed.status_code == 200, confirmed.text
    expect(page.locator(f"[data-column=done] [data-task={key}]")).to_be_visible(timeout=LIVE)
    expect(waiting.locator(f"[data-task={key}]")).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True

    page.goto(f"{site.url}/tasks/{key}")
    expect(page.locator("article [data-field=status]")).to_have_text("done")
    expect(page.locator("section[aria-labelledby=effects-title]")).to_contain_text("merge")
    screenshot(page, "task-done")
    with api(site, "ann") as client:
        history = client.get(f"/api/v1/tasks/{key}").json()["history"]
    assert [h["actor"] for h in history if h["reason"].endswith("approved by ann")] == [
        "ann",
        "ann",
    ]


def test_an_operator_stops_a_task_and_sees_it_cancelled(site: Site, page: Page) -> None:
    sign_in(page, site, "ann")
    key = file_ticket(page, "Something to stop")
    expect(page.locator("article [data-field=status]")).to_have_text("waiting", timeout=LIVE)

    page.fill("#stop-reason", "not needed after all")
    page.click("button[data-act=stop]")
    expect(page.locator("#confirm-text")).to_contain_text(f"STOP {key}?")
    page.click("#confirm-go")

    expect(page.locator("article [data-field=status]")).to_have_text("cancelled", timeout=LIVE)
    expect(page.locator("button[data-act=stop]")).to_have_count(0)
    page.goto(site.url + "/")
    expect(page.locator(f"[data-column=cancelled] [data-task={key}]")).to_be_visible()


def test_a_cancelled_confirmation_sends_nothing(site: Site, page: Page) -> None:
    sign_in(page, site, "ann")
    key = file_ticket(page, "Keep me")
    expect(page.locator("article [data-field=status]")).to_have_text("waiting", timeout=LIVE)

    page.click("button[data-act=stop]")
    page.keyboard.press("Escape")

    expect(page.locator("#confirm")).to_be_hidden()
    with api(site, "ann") as client:
        task = client.get(f"/api/v1/tasks/{key}").json()
    assert (task["status"], task["cancel"]) == ("waiting", None)


def test_a_viewer_is_shown_no_action_and_refused_one(site: Site, page: Page) -> None:
    with api(site, "ann") as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Look only"})
        key = key.json()["key"]
    sign_in(page, site, "vic")
    page.goto(f"{site.url}/tasks/{key}")
    expect(page.locator("article [data-field=status]")).to_have_text("waiting", timeout=LIVE)
    expect(page.locator("section.actions")).to_have_count(0)
    page.goto(site.url + "/")
    expect(page.locator("summary:has-text('File a ticket')")).to_have_count(0)

    # the page's own session, CSRF token and all, asks anyway
    answer = page.evaluate(
        """async (key) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(`/api/v1/tasks/${key}/stop`, {method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                body: "{}"});
            return [r.status, (await r.json()).error];
        }""",
        key,
    )

    assert answer[0] == 403
    assert "viewer" in answer[1]
    with api(site, "ann") as client:
        assert client.get(f"/api/v1/tasks/{key}").json()["cancel"] is None


@dataclass
class OtherSite:
    url: str
    pages: dict[str, str]


@pytest.fixture
def other_site() -> Iterator[OtherSite]:
    """Another origin, serving the pages a test puts in `pages`."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OtherSite(f"http://127.0.0.1:{server.server_address[1]}", pages)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_page_on_another_site_cannot_act_with_the_signed_in_session(
    site: Site, page: Page, other_site: OtherSite
) -> None:
    with api(site, "ann") as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Target"})
        key = key.json()["key"]
    sign_in(page, site, "ann")
    cookie = next(c for c in page.context.cookies() if c["name"] == "orch_session")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert page.evaluate("document.cookie") == ""  # no script can read the session

    stop_url = f"{site.url}/api/v1/tasks/{key}/stop"
    other_site.pages["/evil"] = (
        f'<form id="f" method="post" action="{stop_url}">'
        '<input name="reason" value="forged"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    page.goto(other_site.url + "/evil")
    page.wait_for_url(stop_url)  # the browser sent the form, and shows orch's answer
    assert "refused" in page.content()

    anonymous = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        answer = anonymous.request.post(stop_url, data={"reason": "no token"})
        assert answer.status == 401
    finally:
        anonymous.close()
    with api(site, "ann") as client:
        task = client.get(f"/api/v1/tasks/{key}").json()
    assert task["cancel"] is None
    assert task["status"] != "cancelled"
    assert [e for e in task["events"] if e["kind"] == "stop"] == []


def test_the_board_and_a_task_page_fit_a_phone_screen(site: Site, browser: Browser) -> None:
    with api(site, "ann") as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "On the go"})
        key = key.json()["key"]
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        phone = context.new_page()
        sign_in(phone, site, "ann")
        expect(phone.locator(f"[data-task={key}]")).to_be_visible()
        wide = "document.documentElement.scrollWidth <= window.innerWidth"
        assert phone.evaluate(wide) is True
        screenshot(phone, "board-phone")

        phone.goto(f"{site.url}/tasks/{key}")
        expect(phone.locator("article [data-field=status]")).to_have_text("waiting", timeout=LIVE)
        assert phone.evaluate(wide) is True
        screenshot(phone, "task-phone")
    finally:
        context.close()


@pytest.fixture
def failing_site(tmp_path: Path) -> Iterator[Site]:
    """orch whose agent always fails: each task is parked after its last attempt."""
    _, remote = sample.create(tmp_path)
    failing = {"default": {"kind": "command", "command": ["sh", "-c", "exit 3"]}}
    config = write_config(tmp_path, remote, agents=failing)
    yield from serving(config, {"ann": make_token(config, "ann", "operator")})


def test_an_operator_runs_a_parked_task_again_with_a_raised_budget(
    failing_site: Site, page: Page
) -> None:
    with api(failing_site, "ann") as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Doomed"})
        key = key.json()["key"]
        wait_for(
            lambda: client.get(f"/api/v1/tasks/{key}").json()["status"] == "needs_operator",
            "the task parked",
        )
    sign_in(page, failing_site, "ann")
    dead_letters = page.locator("#dead-letters")
    expect(dead_letters.locator(f"a:has-text('{key}')")).to_be_visible()
    expect(dead_letters).to_contain_text("exited 3")
    page.click(f"#dead-letters a:has-text('{key}')")

    page.select_option("#retry-from", "analysis")
    page.fill("#retry-usd", "5")
    page.click("button[data-act=retry]")
    expect(page.locator("#confirm-text")).to_contain_text(f"Run {key} again?")
    page.click("#confirm-go")
    expect(page.locator("#toast")).to_contain_text("Done.")

    with api(failing_site, "ann") as client:
        retries = wait_for(
            lambda: [
                e
                for e in client.get(f"/api/v1/tasks/{key}").json()["events"]
                if e["kind"] == "retry"
            ],
            "the retry recorded",
        )
    assert [(e["actor"], e["payload"]) for e in retries] == [
        ("ann", {"stage": "analysis", "budget": {"usd": 5.0, "tokens": None}})
    ]


def test_a_change_between_a_page_and_its_event_stream_still_reaches_the_page(
    site: Site, page: Page
) -> None:
    with api(site, "ann") as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Race"}).json()["key"]

        def waits_at(checkpoint: str) -> bool:
            task = client.get(f"/api/v1/tasks/{key}").json()
            return task["status"] == "waiting" and task["waiting_for"] == checkpoint

        wait_for(lambda: waits_at("approve-plan"), "the plan checkpoint")
        sign_in(page, site, "ann")
        held: list[Route] = []
        # the stream opens only when the test says
        page.route("**/events", lambda route: held.append(route))
        page.goto(f"{site.url}/tasks/{key}")
        expect(page.locator(".waiting").first).to_contain_text("approve-plan")
        while not held:
            page.wait_for_timeout(20)

        assert client.post(f"/api/v1/tasks/{key}/approve", json={}).status_code == 200
        wait_for(lambda: waits_at("confirm-deploy"), "the deploy checkpoint")
        held[0].continue_()  # the last change came before the stream: nothing follows it

    expect(page.locator(".waiting").first).to_contain_text("confirm-deploy", timeout=LIVE)


@pytest.fixture
def spent_site(tmp_path: Path) -> Iterator[Site]:
    """orch whose daily budget for all repositories is nothing: no agent work may start."""
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote, budgets={"daily": {"usd": 0}})
    yield from serving(config, {"ann": make_token(config, "ann", "operator")})


def test_a_task_held_up_by_a_spent_budget_says_so_on_the_board_and_its_page(
    spent_site: Site, page: Page
) -> None:
    with api(spent_site, "ann") as client:
        key = client.post("/api/v1/tasks", json={"repo": "sample", "title": "Later"})
        key = key.json()["key"]

        def by_the_budget() -> dict[str, object] | None:
            # until a worker has claimed it, the task only waits in the queue
            held = client.get(f"/api/v1/tasks/{key}").json()["held_up"]
            return held if held and held["kind"] == "budget" else None

        held = wait_for(by_the_budget, "the task held up by the budget")
        assert str(held["text"]).startswith("budget over time: the daily budget of all")
        [budget] = client.get("/api/v1/state").json()["budgets"]
    assert budget["scope"] == "the daily budget of all repositories" and budget["spent_up"]

    sign_in(page, spent_site, "ann")
    card = page.locator(f"[data-column=analysis] [data-task={key}]")
    expect(card.locator("[data-held-up=budget]")).to_contain_text(
        "the daily budget of all repositories is spent"
    )
    expect(page.locator("[data-budget='daily:all']")).to_contain_text("$0.00")
    page.click(f"[data-task={key}] a")
    expect(page.locator("[data-field=held-up]")).to_contain_text("the stage starts again when")
    screenshot(page, "held-up")
