"""The compiled index: decisions, the line that allowed them, and explanations."""

from __future__ import annotations

from enforcer.policy import AccessRequest, load_policy
from tests.policy.helpers import MINIMAL_CSV, SHIPPED, bare_policy

SHIPPED_POLICY = load_policy(SHIPPED)


def req(principal: str, channel: str, resource: str, action: str) -> AccessRequest:
    return AccessRequest(principal, channel, resource, action)


def test_an_agent_reaches_its_own_state_and_not_another_agents() -> None:
    own = SHIPPED_POLICY.decide(
        req("agent:alpha", "socket", "agent:alpha/state/n.md", "state.read")
    )
    other = SHIPPED_POLICY.decide(
        req("agent:alpha", "socket", "agent:beta/state/n.md", "state.read")
    )
    assert own.allowed
    assert own.rule is not None
    assert own.rule.line == 53
    assert not other.allowed
    assert other.rule is None


def test_agents_first_seen_at_run_time_get_exactly_the_agent_role() -> None:
    for n in range(50):
        name = f"agent:late-{n}"
        assert SHIPPED_POLICY.decide(req(name, "socket", f"{name}/status", "status.report")).allowed
        assert not SHIPPED_POLICY.decide(
            req(name, "socket", "agent:x/status", "status.report")
        ).allowed


def test_a_prefix_match_does_not_leak_into_a_longer_agent_name() -> None:
    d = SHIPPED_POLICY.decide(req("agent:al", "socket", "agent:alpha/state/x", "state.read"))
    assert not d.allowed


def test_malformed_principals_are_denied_everything() -> None:
    for principal in ("role:agent", "agent:*", "agent:", "Operator", "agent:Bad"):
        d = SHIPPED_POLICY.decide(req(principal, "socket", f"{principal}/status", "status.report"))
        assert not d.allowed
        assert (
            "is not a principal"
            in SHIPPED_POLICY.explain(req(principal, "socket", "x", "y")).reason
        )


def test_the_decision_names_the_first_matching_line() -> None:
    policy = bare_policy(
        MINIMAL_CSV
        + "p, role:operator, gateway, policy, policy.read\np, operator, gateway, *, policy.read\n"
    )
    d = policy.decide(req("operator", "gateway", "policy", "policy.read"))
    assert d.rule is not None
    assert d.rule.line == 3
    d = policy.decide(req("operator", "gateway", "other", "policy.read"))
    assert d.rule is not None
    assert d.rule.line == 4


def test_an_empty_policy_denies_everything() -> None:
    policy = bare_policy("")
    assert policy.lines == ()
    for r in (
        req("operator", "gateway", "policy", "policy.read"),
        req("agent:a", "socket", "agent:a", "agent.whoami"),
        req("service:core", "priv", "agent:a/container", "priv.container.start"),
    ):
        assert not policy.decide(r).allowed


def test_explain_names_the_line_and_the_role_it_came_through() -> None:
    d = SHIPPED_POLICY.explain(
        req("agent:alpha", "socket", "agent:alpha/questions", "question.ask")
    )
    assert d.allowed
    assert d.reason.startswith("allowed by policy.csv:47: p, role:agent, socket")
    assert "as role:agent (via policy.csv:10)" in d.reason


def test_explain_says_why_nothing_allowed_a_request() -> None:
    wrong_resource = SHIPPED_POLICY.explain(
        req("agent:alpha", "socket", "agent:beta/state/x", "state.read")
    )
    assert "'agent:alpha/state/*' (policy.csv:53)" in wrong_resource.reason
    assert "'agent:beta/state/x' matches none" in wrong_resource.reason
    no_grant = SHIPPED_POLICY.explain(req("agent:alpha", "socket", "question:1", "question.answer"))
    assert "no line grants question.answer on socket to agent:alpha" in no_grant.reason
    assert "role:operator on gateway (policy.csv:29)" in no_grant.reason
    unknown = SHIPPED_POLICY.explain(req("operator", "gateway", "x", "nuke"))
    assert "unknown action 'nuke'" in unknown.reason
    assert "unknown channel" in SHIPPED_POLICY.explain(req("operator", "tcp", "x", "x")).reason


def test_explain_and_decide_agree_on_the_shipped_tests() -> None:
    for case in SHIPPED_POLICY.tests:
        a, b = SHIPPED_POLICY.decide(case.request), SHIPPED_POLICY.explain(case.request)
        assert (a.allowed, a.rule) == (b.allowed, b.rule)
