"""The dashboard tells a crashed agent (failed) from one the operator stopped."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import pytest

from tests.webui.conftest import login, shoot
from tests.webui.stack import WebStack

pytestmark = pytest.mark.browser


def _running(stack: WebStack, name: str, want: str) -> None:
    """Wait (bounded) until the operator API reports ``want`` for ``name``."""
    deadline = time.monotonic() + 10
    while True:
        agents = {a["name"]: a["running"] for a in stack.operator("GET", "/api/agents")["agents"]}
        if agents.get(name) == want:
            return
        assert time.monotonic() < deadline, (name, agents.get(name), want)
        time.sleep(0.05)


def test_a_crashed_or_killed_agent_shows_failed_and_a_stopped_one_stopped(
    page: Any, web_stack: WebStack
) -> None:
    # One agent whose program exits with an error right away.
    command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    web_stack.operator(
        "POST", "/api/agents", {"name": "crashy", "uid": os.getuid(), "command": command}
    )
    web_stack.operator("POST", "/api/agents/crashy/start")
    _running(web_stack, "crashy", "failed")
    # One killed while it should run; one stopped by the operator.
    os.kill(web_stack.backend.pids["alpha"], signal.SIGKILL)
    _running(web_stack, "alpha", "failed")
    web_stack.operator("POST", "/api/agents/beta/stop")
    _running(web_stack, "beta", "stopped")

    login(page, web_stack, "/")
    assert page.locator("#agent-crashy .badge").inner_text() == "failed"
    assert page.locator("#agent-alpha .badge").inner_text() == "failed"
    assert page.locator("#agent-beta .badge").inner_text() == "stopped"
    shoot(page, "dashboard-failed")
    page.goto(web_stack.url("/agents/alpha"))
    assert page.locator("#agent-status .badge").inner_text() == "failed"

    # Restarting it from the dashboard brings it back.
    page.goto(web_stack.url("/"))
    page.get_by_role("button", name="Restart alpha").click()
    page.wait_for_url(lambda url: "notice=" in url)
    _running(web_stack, "alpha", "running")
    assert page.locator("#agent-alpha .badge").inner_text() == "running"
