"""The live refresh cannot be turned against the operator by an agent's events.

Found by an attack review, in Chromium against the real stack:

- an agent asking for an approval at the right moment must not move its own
  Approve button under the operator's resting pointer (pending approvals are
  newest first, and a refresh re-renders the list);
- an agent sending events without pause must not hold back everyone else's
  updates (the refresh waited for a quiet moment that never came).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.webui.conftest import login
from tests.webui.stack import WebStack

pytestmark = pytest.mark.browser


def _pending(stack: WebStack) -> set[int]:
    return {a["id"] for a in stack.operator("GET", "/api/approvals?status=pending")["approvals"]}


def test_an_approval_arriving_under_the_pointer_is_not_approved_by_the_operators_click(
    page: Any, web_stack: WebStack
) -> None:
    for old in _pending(web_stack):
        web_stack.operator("POST", f"/api/approvals/{old}/deny", {})
    wanted = web_stack.request_approval("beta", "net.egress", "pypi.org:443 (fetch wheels)")
    login(page, web_stack, "/approvals")
    box = page.locator(f"#approval-{wanted} button.approve").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # the operator is about to approve beta's request
    # Another agent asks right now, with a card the same size as beta's.
    sneaky = web_stack.request_approval("alpha", "net.egress", "evil.example:443 (exfil!!)")
    page.wait_for_timeout(800)  # the event arrives, the refresh would run
    page.mouse.click(x, y)
    page.wait_for_load_state()
    page.wait_for_timeout(500)
    decided = {
        a["id"]: a["status"]
        for a in web_stack.operator("GET", "/api/approvals?status=all")["approvals"]
    }
    assert decided[sneaky] == "pending", decided
    assert decided[wanted] == "approved", decided
    # Once the pointer moves on, the new request shows up.
    page.goto(web_stack.url("/approvals"))
    page.locator(f"#approval-{sneaky}").wait_for()


def test_one_agents_stream_of_events_does_not_hold_back_other_updates(
    page: Any, web_stack: WebStack
) -> None:
    login(page, web_stack, "/")
    stop = threading.Event()

    async def chatter() -> None:
        assert web_stack.core is not None
        async with web_stack.core.agent("alpha") as agent:
            while not stop.is_set():
                await agent.post("/v1/status", json={"state": "working", "detail": "tick"})
                await asyncio.sleep(0.1)

    running = asyncio.run_coroutine_threadsafe(chatter(), web_stack.loop)
    try:
        time.sleep(0.5)
        before = int(page.locator("#nav-q").inner_text())
        web_stack.ask("beta", "Beta needs you: approve the DB migration?", ["yes", "no"])
        deadline = time.monotonic() + 4
        after = before
        while time.monotonic() < deadline and after == before:
            time.sleep(0.2)
            after = int(page.locator("#nav-q").inner_text())
    finally:
        stop.set()
        running.result(10)
    assert after == before + 1, f"the open count stayed {before} -> {after} while alpha chattered"
