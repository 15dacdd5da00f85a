"""A real agent UI works inside the operator's sandboxed frame, through the gateway.

The per-agent page embeds the agent's UI in ``<iframe sandbox="allow-scripts
allow-forms">``: an opaque origin, to which Chromium sends no
``SameSite=Strict`` cookie. The agent's page (``tests/webui/agent_ui.py``)
loads its own stylesheet, script and image, fetches its own API and opens its
own event stream, all by relative URLs, and shows what loaded; the test reads
that through the frame, and checks the agent server's own records.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.webui.conftest import login, shoot
from tests.webui.stack import WebStack

pytestmark = pytest.mark.browser

_CHECKS = ("script", "stylesheet", "image", "fetch", "eventsource")
_VIEW_URL = re.compile(r"(/agent/alpha/@[A-Za-z0-9_-]{44})/$")


def _status(url: str) -> int:
    """GET ``url`` with no cookie at all (what the sandboxed frame is), the status."""
    request = urllib.request.Request(url, headers={"Sec-Fetch-Mode": "no-cors"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # loopback, our gateway
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_a_sandboxed_agent_ui_loads_its_own_assets_api_and_events(
    page: Any, web_stack: WebStack
) -> None:
    seen_before = len(web_stack.collected("alpha")["headers"])
    login(page, web_stack, "/agents/alpha")
    iframe = page.locator("#agent-frame")
    # Still sandboxed, still without allow-same-origin.
    assert iframe.get_attribute("sandbox") == "allow-scripts allow-forms"
    frame = page.frame_locator("#agent-frame")
    frame.locator("#checks[data-done='yes']").wait_for(timeout=15_000)
    results = {name: frame.locator(f"#{name}").inner_text() for name in _CHECKS}
    for name in _CHECKS:
        assert frame.locator(f"#{name}").get_attribute("data-ok") == "yes", results
    shoot(page, "agent-ui-assets")

    # The frame lives under its view capability, as an opaque origin.
    (inner,) = [f for f in page.frames if "/agent/alpha/" in f.url]
    match = _VIEW_URL.search(inner.url)
    assert match is not None, inner.url
    prefix = match.group(1)
    assert inner.evaluate("window.origin") == "null"
    read_cookie = "(() => { try { return document.cookie; } catch (e) { return e.name; } })()"
    assert inner.evaluate(read_cookie) in {"SecurityError", ""}

    # The agent's own server saw every request, through the gateway's prefix,
    # and never the operator's cookie.
    seen = [
        h
        for h in web_stack.collected("alpha")["headers"][seen_before:]
        if h["path"] != "/collected"  # the test's own direct reads
    ]
    assert {"/", "/app.css", "/app.js", "/pixel.png", "/api/hello", "/events"} <= {
        h["path"] for h in seen
    }
    for headers in seen:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert lowered["x-forwarded-prefix"] == prefix
        assert "cookie" not in lowered
        assert "authorization" not in lowered

    # The capability is the session's: it ends when the operator logs out.
    assert _status(web_stack.url(prefix + "/app.css")) == 200
    assert _status(web_stack.url("/agent/beta/@" + prefix.rpartition("@")[2] + "/")) == 403
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/login"))
    assert _status(web_stack.url(prefix + "/app.css")) == 403


def test_agent_content_is_never_the_top_level_page(page: Any, web_stack: WebStack) -> None:
    # Opening the frame's address on its own (a new tab, a bookmark, a
    # shift-click out of the frame) shows the agent's framing page, never the
    # agent's page alone on the operator's origin, where it could pose as the
    # operator's own login form.
    login(page, web_stack, "/")
    page.goto(web_stack.url("/agent/alpha/"))
    page.wait_for_url(web_stack.url("/agents/alpha"))
    page.frame_locator("#agent-frame").locator("#checks[data-done='yes']").wait_for(timeout=15_000)
    (framed,) = [f for f in page.frames if "/agent/alpha/@" in f.url]
    page.goto(framed.url)  # the capability address itself, at top level
    page.wait_for_url(web_stack.url("/agents/alpha"))
    # Logging in towards the agent's space lands on its framing page as well.
    page.context.clear_cookies()
    page.goto(web_stack.url("/login?next=/agent/alpha/"))
    page.get_by_label("Operator token").fill(web_stack.token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(web_stack.url("/agents/alpha"))
