"""A hostile agent UI, inside the operator's logged-in browser, can change nothing.

The agent ``mallory`` serves a page (``tests/webui/hostile.html``) that the
operator opens on mallory's per-agent page, where it runs in the sandboxed
frame. It tries every way it has to act as the operator - fetch and form POSTs
(with and without credentials, with a guessed CSRF token and without) to the
answer / approve / deny / lifecycle / reload / logout endpoints, both the pages
and the API - and to read the session: ``document.cookie``, the parent page,
``top.location``, storage, responses of operator pages; it navigates the top
window, posts a message to the parent and opens a popup to the dashboard. It
also reads its own view capability from its address and tries it on another
agent's UI and on the core. It reports what it saw to its own server's
collector.

The control test runs the same requests from the operator's own page, with the
session's real CSRF token, and they do change state: the requests are real
attacks, and it is the boundary - not a malformed request - that stops them.
"""

from __future__ import annotations

import re
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
    # Its view capability opens its own space, and nothing else.
    assert re.fullmatch(r"/agent/mallory/@[A-Za-z0-9_-]{44}/", seen["cap location"])
    assert seen["cap own space"] == "status 200"
    cap = seen["cap location"].split("@")[1].rstrip("/")
    for what, result in seen.items():
        if what.startswith(("cap read ", "cap post ")):
            assert result.startswith("error"), (what, result)
    for headers in web_stack.collected("alpha")["headers"]:
        assert cap not in str(headers), headers  # alpha's UI never got a request with it
    # The session still works (the attempted logout did not end it).
    page.goto(web_stack.url("/questions"))
    assert page.get_by_role("heading", level=1).inner_text() == "Questions"
    page.goto(web_stack.url("/agents/mallory"))
    shoot(page, "agent-hostile")


# The hostile page's requests, as it sends them (hostile.html), from a page given as
# JSON: {path, body, csrf}. Run here by the operator's own page (same origin).
_SAME_REQUEST = """async ([path, body, csrf]) => {
  const origin = location.protocol + "//" + location.host;
  const r = await fetch(origin + path, {method: "POST", credentials: "include",
    body: body + "&csrf_token=" + csrf,
    headers: {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf}});
  return r.status;
}"""


def test_control_the_same_requests_from_the_operators_page_do_change_state(
    page: Any, web_stack: WebStack
) -> None:
    qid = web_stack.ask("beta", "Control: may I proceed?", ["yes", "no"])
    aid = web_stack.request_approval("beta", "net.egress", "control.example:443")
    login(page, web_stack, "/agents/beta")
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "hive_csrf")
    # With the guessed token the hostile page uses, even the operator's own page is refused.
    guessed = page.evaluate(_SAME_REQUEST, [f"/questions/{qid}/answer", "answer=pwned", "guess"])
    assert guessed == 403
    assert _question_status(web_stack, qid) == ("open", None)
    # With the session's token, from the operator's origin: the very same requests act.
    page.evaluate(_SAME_REQUEST, [f"/questions/{qid}/answer", "answer=pwned", csrf])
    page.evaluate(_SAME_REQUEST, [f"/approvals/{aid}/approve", "reason=pwned", csrf])
    assert _question_status(web_stack, qid) == ("answered", "pwned")
    approvals = web_stack.operator("GET", "/api/approvals?status=all")["approvals"]
    assert next(a for a in approvals if a["id"] == aid)["status"] == "approved"


def _question_status(stack: WebStack, qid: int) -> tuple[str, str | None]:
    for q in stack.operator("GET", "/api/questions?status=all")["questions"]:
        if q["id"] == qid:
            return q["status"], q.get("answer")
    raise AssertionError(f"no question {qid}")
