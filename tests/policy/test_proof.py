"""prove(): the request-space proof finds nothing in the shipped policy and catches breaches."""

from __future__ import annotations

from enforcer.policy import load_policy
from enforcer.policy.proof import prove
from tests.policy.helpers import MINIMAL_CSV, SHIPPED, bare_policy


def test_the_shipped_policy_has_no_violation_and_agents_only_own_socket_grants() -> None:
    report = prove(load_policy(SHIPPED))
    assert report.ok
    assert report.requests_checked > 10_000
    assert {g.resource_class for g in report.agent_grants} == {"own"}
    assert {g.channel for g in report.agent_grants} == {"socket"}
    assert {g.action for g in report.agent_grants} >= {"question.ask", "state.write"}


def test_a_breach_the_invariants_would_refuse_is_caught_with_a_counterexample() -> None:
    # invariants=False builds what the loader would refuse, to show the proof is independent.
    policy = bare_policy(
        MINIMAL_CSV
        + "p, role:agent, socket, agent:{self}*, state.read\n"
        + "p, role:agent, gateway, *, question.answer\n",
        invariants=False,
    )
    report = prove(policy)
    assert not report.ok
    prefix = [v for v in report.violations if v.rule and v.rule.line == 3]
    assert prefix
    assert all(v.request.action == "state.read" for v in prefix)
    assert any(v.request.resource.startswith("agent:azz-other") for v in prefix)
    answer = [v for v in report.violations if v.rule and v.rule.line == 4]
    assert any("operator-class action question.answer" in v.what for v in answer)
    assert all(v.request.principal.startswith("agent:") for v in answer)
