"""Fixtures of the web UI's browser tests: one stack and one Chromium per module.

Debian's ``chromium`` (``/usr/bin/chromium``) drives the pages headless through
Playwright's synchronous API (Playwright's own browser download is never
used). Screenshots go to ``artifacts/screenshots/`` (git-ignored); when a test
fails, its page is captured as ``FAILED-<test>.png`` and kept.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webui.stack import WebStack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root in CI; the page sandbox under test is Blink's, not this
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
WIDTHS = (1280, 390)

_FAILED: pytest.StashKey[bool] = pytest.StashKey()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def web_stack() -> Iterator[WebStack]:
    """The real core and gateway, agents alpha and beta (running, with their own UIs)."""
    stack = WebStack().start()
    try:
        stack.add_agent("alpha")
        stack.add_agent("beta")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's), shared by a module's tests."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; captured if the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    try:
        yield pg
    finally:
        if request.node.stash.get(_FAILED, False):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            try:
                pg.screenshot(path=str(SCREENSHOTS / f"FAILED-{name}.png"), full_page=True)
            except Exception as e:  # the page may be gone; the failure itself matters more
                print(f"could not capture the failing page: {e}")
        context.close()


def login(page: Any, stack: WebStack, next_path: str = "/") -> None:
    """Log in through the gateway's login form, as an operator would."""
    page.goto(stack.url(f"/login?next={next_path}"))
    page.get_by_label("Operator token").fill(stack.token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(stack.url(next_path))


def shoot(page: Any, name: str) -> None:
    """Screenshots of the current page at 1280 and 390 px wide (then back to 1280)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
