"""A hostile agent UI, inside the operator's logged-in browser, can change nothing.

The agent ``mallory`` serves a page (``tests/webui/hostile.html``) that the
operator opens on mallory's per-agent page, where it runs in the sandboxed
frame. It tries every way it has to act as the operator - fetch and form POSTs
(with and without credentials, with a guessed CSRF token and without) to the
answer / approve / deny / lifecycle / reload / logout endpoints, both the pages
and the API - and to read the session: ``document.cookie``, the parent page,
``top.location``, storage, responses of operator pages; it navigates the top
window, posts a message to the parent and opens a popup to the dashboard. It
reports what it saw to its own server's collector.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.webui.conftest import login, shoot
from tests.webui.stack import WebStack

pytestmark = pytest.mark.browser

_OPERATOR_ACTIONS = {
    "question.answer",
    "approval.approve",
    "approval.deny",
    "container.start",
    "container.stop",
    "container.restart",
    "container.destroy",
    "policy.reload",
}


def _wait_report(stack: WebStack, agent: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for report in stack.collected(agent)["reports"]:
            if isinstance(report, dict) and report.get("done"):
                return report
        time.sleep(0.2)
    raise AssertionError("the hostile page never reported back")


def test_hostile_agent_ui_changes_nothing_and_reads_no_session(
    page: Any, web_stack: WebStack
) -> None:
    web_stack.add_agent("mallory", hostile=True)
    # Things an attacker would love to change: open questions and approvals of
    # another agent and of itself, and running agents.
    web_stack.ask("alpha", "Ship the release?", ["yes", "no"])
    web_stack.ask("mallory", "Can I have root?", ["yes"])
    web_stack.request_approval("alpha", "net.egress", "example.org:443")
    web_stack.request_approval("mallory", "fs.write", "/etc")
    before = web_stack.snapshot()
    pids = dict(web_stack.backend.pids)
    ring_before = len(web_stack.decisions())
    messages: list[dict[str, Any]] = []
    page.expose_function("__hiveTestSawMessage", lambda m: messages.append(m))
    page.add_init_script(
        "if (window.top === window) addEventListener('message', e => "
        "window.__hiveTestSawMessage({origin: e.origin, data: JSON.stringify(e.data)}));"
    )
    popups: list[Any] = []
    page.context.on("page", lambda p: popups.append(p))

    login(page, web_stack, "/agents/mallory")
    report = _wait_report(web_stack, "mallory")
    page.wait_for_timeout(500)  # any late navigation or form would have landed by now
    seen = {a["what"]: a["result"] for a in report["attempts"]}

    # Nothing changed in the core: not one row of any table.
    assert web_stack.snapshot() == before
    assert web_stack.backend.pids == pids
    assert {a["name"]: a["running"] for a in web_stack.operator("GET", "/api/agents")["agents"]} \
        == {"alpha": "running", "beta": "running", "mallory": "running"}  # fmt: skip
    # No operator action even reached the core's policy check: the gateway refused them all.
    new = web_stack.decisions()[ring_before:]
    reached = [d for d in new if d["action"] in _OPERATOR_ACTIONS]
    assert reached == []

    # It read no session and no operator content.
    # An opaque origin has no cookie jar: reading document.cookie throws.
    assert seen["document.cookie"] in {"error SecurityError", '""'}
    assert seen["window.origin"] == "null"
    for what in ("parent.document", "parent.cookie", "parent.document (late)", "localStorage"):
        assert seen[what].startswith("error"), (what, seen[what])
    assert seen["top.location.href"].startswith("error")
    for what, result in seen.items():
        if what.startswith(("fetch ", "read ")):
            # An opaque origin reading the gateway's origin: CORS refuses every
            # response (there is no CORS anywhere), so nothing comes back.
            assert result.startswith("error"), (what, result)
        if what.startswith("no-cors "):
            # Opaque at best; usually a network error (Cross-Origin-Resource-Policy).
            assert result in {"type opaque status 0", "error TypeError"}, (what, result)
    assert seen["window.open"] == "null"
    assert popups == []
    # The top window stayed where the operator was, still logged in.
    assert page.url == web_stack.url("/agents/mallory")
    assert page.get_by_role("heading", level=1).inner_text() == "Agent mallory"
    # Its message arrived marked as coming from an opaque origin ("null"): no
    # page of ours listens to messages, and nothing could mistake it for ours.
    assert messages
    assert all(m["origin"] == "null" for m in messages)
    # The agent's server never saw the operator's cookie or credentials.
    for headers in web_stack.collected("mallory")["headers"]:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert "cookie" not in lowered
        assert "authorization" not in lowered
        assert "hive_session" not in str(headers)
    # The session still works (the attempted logout did not end it).
    page.goto(web_stack.url("/questions"))
    assert page.get_by_role("heading", level=1).inner_text() == "Questions"
    page.goto(web_stack.url("/agents/mallory"))
    shoot(page, "agent-hostile")
