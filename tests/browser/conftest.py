"""A running `orch serve` with tokens, and Debian's Chromium driven by Playwright, headless.

The browser is the system's (`/usr/bin/chromium`, or $ORCH_CHROMIUM): Playwright never downloads
one. Screenshots go to build/screenshots (or $ORCH_SCREENSHOTS), one set per run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from e2e.test_api_access import Site, serve

CHROMIUM = os.environ.get("ORCH_CHROMIUM", "/usr/bin/chromium")
# Chromium's own calls home are refused on a closed network, and slow every start
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(
    os.environ.get("ORCH_SCREENSHOTS", Path(__file__).resolve().parents[2] / "build/screenshots")
)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from serve(tmp_path, (("vic", "viewer"), ("ann", "operator")))


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page, site: Site, name: str) -> None:
    page.goto(site.url + "/")
    page.wait_for_url(re.compile(r".*/login\?next=%2F$"))
    page.fill("#token", site.tokens[name])
    page.press("#token", "Enter")
    page.wait_for_url(site.url + "/")


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
