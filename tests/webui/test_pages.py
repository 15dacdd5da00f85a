"""The operator's pages in a real browser, through the real gateway and core.

Each test asserts on what the page shows and on the core's own data (its
operator API on core.sock, or its store).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.webui.conftest import login, shoot
from tests.webui.stack import WebStack
from webui.network_view import PROBE_FILE

pytestmark = pytest.mark.browser


def _question(stack: WebStack, qid: int) -> dict[str, Any]:
    for q in stack.operator("GET", "/api/questions?status=all")["questions"]:
        if q["id"] == qid:
            return dict(q)
    raise AssertionError(f"no question {qid}")


def _approval(stack: WebStack, aid: int) -> dict[str, Any]:
    for a in stack.operator("GET", "/api/approvals?status=all")["approvals"]:
        if a["id"] == aid:
            return dict(a)
    raise AssertionError(f"no approval {aid}")


def test_login_page_then_dashboard_lists_every_agent(page: Any, web_stack: WebStack) -> None:
    page.goto(web_stack.url("/"))
    # Anonymous: the gateway sends the browser to its login page.
    assert "/login" in page.url
    shoot(page, "login")
    page.get_by_label("Operator token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "That token is not right."
    login(page, web_stack)
    web_stack.ask("beta", "Which dataset should I use?", ["small", "full"])
    page.reload()
    rows = page.locator("table.agents tbody tr")
    names = [rows.nth(i).locator("th").inner_text() for i in range(rows.count())]
    assert names == [a["name"] for a in web_stack.operator("GET", "/api/agents")["agents"]]
    assert {"alpha", "beta"} <= set(names)
    beta = page.locator("#agent-beta")
    assert beta.locator(".badge").inner_text() == "running"
    assert beta.locator("td[data-label='Open questions']").inner_text() == "1"
    assert "never" not in beta.locator("td[data-label='Last activity']").inner_text()
    # Landmarks and labels a screen reader relies on.
    assert page.get_by_role("navigation", name="Main").is_visible()
    assert page.get_by_role("main").count() == 1
    assert page.get_by_role("button", name="Restart beta").is_visible()
    shoot(page, "dashboard")


def test_answer_a_question_inline_on_the_agent_page(page: Any, web_stack: WebStack) -> None:
    qid = web_stack.ask("alpha", "May I delete the cache?", ["yes", "no"])
    free = web_stack.ask("alpha", "What should the report be called?")
    login(page, web_stack, "/agents/alpha")
    frame = page.frame_locator("#agent-frame")
    assert frame.locator("#agent-title").inner_text() == "alpha's own UI"
    iframe = page.locator("#agent-frame")
    assert iframe.get_attribute("sandbox") == "allow-scripts allow-forms"
    card = page.locator(f"#question-{qid}")
    assert "May I delete the cache?" in card.inner_text()
    shoot(page, "agent")
    card.get_by_role("button", name="no", exact=True).click()
    page.wait_for_url(re.compile(r"/agents/alpha\?notice=answered"))
    assert page.get_by_role("status").filter(has_text="Answer sent.").is_visible()
    assert page.locator(f"#question-{qid}").count() == 0
    assert _question(web_stack, qid)["answer"] == "no"
    # A free-text answer, typed, submitted with the keyboard's Enter on the button.
    page.get_by_label("Your answer").fill("weekly-summary.md")
    page.locator(f"#question-{free}").get_by_role("button", name="Send answer").press("Enter")
    page.wait_for_url(re.compile(r"notice=answered"))
    assert _question(web_stack, free)["answer"] == "weekly-summary.md"
    # The agent learns the answer over its own socket.
    assert web_stack.agent("alpha", "GET", f"/v1/questions/{qid}")["answer"] == "no"


def test_approve_and_deny_with_a_reason(page: Any, web_stack: WebStack) -> None:
    yes = web_stack.request_approval("beta", "net.egress", "pypi.org:443")
    no = web_stack.request_approval("beta", "fs.delete", "/data")
    login(page, web_stack, "/approvals")
    shoot(page, "approvals")
    page.locator(f"#approval-{yes}").get_by_role("button", name="Approve").click()
    page.wait_for_url(re.compile(r"notice=approved"))
    deny_card = page.locator(f"#approval-{no}")
    deny_card.get_by_label("Reason (optional)").fill("not on production data")
    deny_card.get_by_role("button", name="Deny").click()
    page.wait_for_url(re.compile(r"notice=denied"))
    assert _approval(web_stack, yes)["status"] == "approved"
    denied = _approval(web_stack, no)
    assert (denied["status"], denied["reason"]) == ("denied", "not on production data")
    decided = page.locator("#decided-approvals")
    assert "not on production data" in decided.locator(f"#approval-{no}").inner_text()
    assert page.locator("#pending-approvals").locator(f"#approval-{yes}").count() == 0


def test_questions_page_lists_open_and_answered(page: Any, web_stack: WebStack) -> None:
    qid = web_stack.ask("beta", "Retry the failed job?", ["retry", "skip"])
    login(page, web_stack, "/questions")
    assert page.locator("#open-questions").locator(f"#question-{qid}").is_visible()
    shoot(page, "questions")
    page.locator(f"#question-{qid}").get_by_role("button", name="retry").click()
    page.wait_for_url(re.compile(r"/questions\?notice=answered"))
    answered = page.locator("#answered-questions").locator(f"#question-{qid}")
    assert "retry" in answered.inner_text()
    assert _question(web_stack, qid)["status"] == "answered"


def test_restart_an_agent(page: Any, web_stack: WebStack) -> None:
    before = web_stack.backend.pids["beta"]
    login(page, web_stack, "/agents/beta")
    page.get_by_role("button", name="Restart beta").click()
    page.wait_for_url(re.compile(r"/agents/beta\?notice=restart"))
    assert page.locator("#agent-status .badge").inner_text() == "running"
    assert web_stack.backend.pids["beta"] != before
    assert web_stack.operator("GET", "/api/agents/beta")["running"] == "running"
    journal = web_stack.operator("GET", "/api/agents/beta/journal")["entries"]
    assert journal[0]["kind"] == "container.restart"
    assert journal[0]["detail"] == {"by": "operator"}
    # The restarted agent's own UI is back in its frame.
    assert (
        page.frame_locator("#agent-frame").locator("#agent-title").inner_text() == "beta's own UI"
    )


def test_stop_start_and_destroy_with_confirmation(page: Any, web_stack: WebStack) -> None:
    web_stack.add_agent("gamma")
    login(page, web_stack)
    row = page.locator("#agent-gamma")
    row.get_by_role("button", name="Stop gamma", exact=True).click()
    page.wait_for_url(re.compile(r"notice=stop"))
    assert page.locator("#agent-gamma .badge").inner_text() == "stopped"
    assert web_stack.operator("GET", "/api/agents/gamma")["running"] == "stopped"
    page.locator("#agent-gamma").get_by_role("button", name="Start gamma", exact=True).click()
    page.wait_for_url(re.compile(r"notice=start"))
    assert web_stack.operator("GET", "/api/agents/gamma")["running"] == "running"
    page.locator("#agent-gamma").get_by_role("link", name=re.compile("Destroy gamma")).click()
    page.wait_for_url(web_stack.url("/agents/gamma/destroy"))
    assert page.get_by_role("heading", level=1).inner_text() == "Destroy agent gamma?"
    shoot(page, "destroy-confirm")
    # Cancel changes nothing; confirming destroys.
    page.get_by_role("link", name="Cancel").click()
    assert "gamma" in [a["name"] for a in web_stack.operator("GET", "/api/agents")["agents"]]
    page.goto(web_stack.url("/agents/gamma/destroy"))
    page.get_by_role("button", name="Destroy gamma").click()
    page.wait_for_url(re.compile(r"/\?notice=destroy"))
    assert page.locator("#agent-gamma").count() == 0
    assert "gamma" not in [a["name"] for a in web_stack.operator("GET", "/api/agents")["agents"]]


def test_policy_matrix_and_an_explanation(page: Any, web_stack: WebStack) -> None:
    login(page, web_stack, "/policy")
    live = web_stack.operator("GET", "/api/policy")
    assert page.locator("#policy-revision").inner_text() == live["revision"]
    assert page.locator("#last-refusal").inner_text() == "none"
    headers = page.locator("table.matrix thead th").all_inner_texts()
    assert {"operator", "anonymous", "agent:*", "role:operator", "role:agent"} <= set(headers)
    # Operator-class rows are marked.
    op_row = page.locator("table.matrix tbody tr.op").filter(has_text="question.answer")
    assert op_row.count() == 1
    shoot(page, "policy")
    # Click a cell: operator may answer questions - the line that says so appears.
    page.get_by_role(
        "link", name="operator — question.answer: granted. Explain", exact=True
    ).click()
    explain = page.locator("#explain")
    explain.locator(".policy-line").first.wait_for()
    text = explain.inner_text()
    assert "granted" in text
    assert "p, role:operator, gateway, question:*, question.answer" in text
    assert re.search(r"policy\.csv:\d+", text)
    # An agent may not: denied, with the engine's reason.
    page.get_by_role("link", name="agent:* — question.answer: denied. Explain", exact=True).click()
    page.locator("#explain .verdict.deny").wait_for()
    assert "not granted" in page.locator("#explain .verdict").inner_text()
    assert "deny" in page.locator("#explain").inner_text()
    shoot(page, "policy-explained")


def test_policy_cell_links_work_without_javascript(browser: Any, web_stack: WebStack) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        pg = context.new_page()
        login(pg, web_stack, "/policy")
        pg.get_by_role(
            "link", name="role:agent — state.write: granted. Explain", exact=True
        ).click()
        assert "subject=role%3Aagent" in pg.url or "subject=role:agent" in pg.url
        assert (
            "p, role:agent, socket, agent:{self}/state/*, state.write"
            in pg.locator("#explain").inner_text()
        )
    finally:
        context.close()


def test_audit_shows_decisions_filters_and_the_probe_heat_map(
    page: Any, web_stack: WebStack
) -> None:
    probe_file = web_stack.config.state_dir / PROBE_FILE
    probe_file.unlink(missing_ok=True)
    login(page, web_stack, "/audit")
    assert "No probe data is available" in page.locator("#network").inner_text()
    shoot(page, "audit-no-probe")
    cells = [
        {"source": "host", "target": "ui:alpha4", "address": "10.0.0.2", "port": 8000,
         "expected": True, "outcome": "open"},
        {"source": "alpha", "target": "host:lo4", "address": "127.0.0.1", "port": 1,
         "expected": False, "outcome": "timeout"},
        {"source": "alpha", "target": "ui:beta4", "address": "10.0.0.6", "port": 8000,
         "expected": False, "outcome": "open"},
    ]  # fmt: skip
    probe_file.write_text(
        json.dumps(
            {
                "at": time.time(),
                "probe": {"ok": False, "cells": cells, "mismatches": 1},
                "drift": {"table": "hive", "in_sync": False, "lines": ["set cont_if: missing"]},
            }
        )
    )
    page.reload()
    network = page.locator("#network")
    assert "1 mismatch(es)" in network.inner_text()
    assert "live ruleset drifted" in network.inner_text()
    assert network.locator("td.cell.mismatch").count() == 1
    assert network.locator("td.cell.reach").count() == 1
    # Filters: only denials (one is made now), then only agents' allowed requests.
    assert web_stack.anonymous("GET", "/api/agents") == 403
    page.get_by_label("Decision", exact=True).select_option("deny")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.decisions tbody tr")
    assert rows.count() >= 1
    assert "anonymous" in rows.first.inner_text()
    assert set(page.locator("table.decisions tbody tr td:first-child").all_inner_texts()) == {
        "deny"
    }
    page.goto(web_stack.url("/audit?principal=agent:*&decision=allow"))
    principals = page.locator("table.decisions tbody tr td:nth-child(2)").all_inner_texts()
    assert principals
    assert all(p.startswith("agent:") for p in principals)
    ring = web_stack.decisions()
    assert any(d["principal"].startswith("agent:") and d["decision"] == "allow" for d in ring)
    page.goto(web_stack.url("/audit"))
    shoot(page, "audit")


def test_live_update_shows_a_new_question_without_reload(page: Any, web_stack: WebStack) -> None:
    login(page, web_stack, "/questions")
    page.wait_for_timeout(300)  # let the event stream connect
    qid = web_stack.ask("alpha", "Live? (asked while the page is open)")
    page.locator(f"#question-{qid}").wait_for(timeout=8000)
    assert "Updated" in page.locator("#live-status").inner_text()
    page.locator(f"#question-{qid}").get_by_label("Your answer").fill("yes, live")
    page.locator(f"#question-{qid}").get_by_role("button", name="Send answer").click()
    page.wait_for_url(re.compile(r"notice=answered"))
    assert _question(web_stack, qid)["answer"] == "yes, live"
