"""Load-time invariants: each breach is refused naming the line that breaks it."""

from __future__ import annotations

import pytest

from enforcer.policy import PolicyError
from tests.policy.helpers import MINIMAL_CSV, bare_policy


def refusal(extra: str) -> str:
    """The one problem a policy with ``extra`` appended (as line 3) is refused for."""
    with pytest.raises(PolicyError) as e:
        bare_policy(MINIMAL_CSV + extra + "\n")
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # operator actions never reach an agent, directly or through any role
        (
            "p, role:agent, gateway, question:*, question.answer",
            "grants operator-class action question.answer to role:agent "
            "(agent:* holds it (policy.csv:1)): agents may hold only agent-self actions",
        ),
        ("p, agent:bob, gateway, *, policy.reload", "to agent:bob (agent:bob is an agent)"),
        ("p, role:agent, gateway, session, session.login", "grants public-class action"),
        ("p, role:agent, priv, agent:{self}/container, priv.container.stop", "system-class"),
        # no socket entry point for anything but agent-self
        (
            "p, operator, socket, question:*, question.answer",
            "operator-class action question.answer on the socket channel: "
            "only agent-self actions may be granted on socket",
        ),
        ("p, anonymous, socket, health, health.read", "public-class action health.read on the"),
        # agent-self only on socket
        (
            "p, role:agent, gateway, agent:{self}/questions, question.ask",
            "agent-self-class action question.ask on channel gateway: "
            "agent-self actions may be granted only on socket",
        ),
        # only one's own resources
        (
            "p, role:agent, socket, agent:*, state.read",
            "agent grant on resource 'agent:*', which is not the agent's own",
        ),
        ("p, role:agent, socket, *, state.read", "resource '*', which is not the agent's own"),
        ("p, role:agent, socket, agent:{self}*, state.read", "'agent:{self}*', which is not"),
        ("p, agent:bob, socket, agent:alice/state/*, state.read", "'agent:alice/state/*'"),
        ("p, agent:bob, socket, agent:bob*, state.read", "'agent:bob*', which is not"),
        ("p, role:agent, socket, agent:bob/state/*, state.read", "'agent:bob/state/*'"),
        # classes go to their own principals only
        ("p, operator, socket, agent:alpha/state/*, state.read", "no agent holds"),
        ("p, operator, priv, agent:*, priv.state.read", "system actions are for service:core"),
        ("p, anonymous, gateway, policy, policy.reload", "operator actions are for the operator"),
        ("p, service:core, gateway, policy, policy.read", "operator actions are for the operator"),
        ("p, operator, gateway, {self}, agent.read", "{self} only means something"),
    ],
)
def test_a_breach_is_refused_naming_the_line(line: str, message: str) -> None:
    problem = refusal(line)
    assert problem.startswith("policy.csv:3: "), problem
    assert message in problem


def test_a_role_held_by_anonymous_cannot_carry_operator_actions() -> None:
    with pytest.raises(PolicyError) as e:
        bare_policy(
            MINIMAL_CSV + "g, anonymous, role:operator\np, role:operator, gateway, *, agent.list\n"
        )
    # reported at the grant, naming who holds the role and through which line
    (problem,) = e.value.problems
    assert problem.startswith("policy.csv:4: operator-class action agent.list")
    assert "which anonymous holds (policy.csv:3)" in problem


def test_an_operator_role_taken_by_agents_is_refused_at_every_grant() -> None:
    csv = MINIMAL_CSV + "g, role:agent, role:operator\np, role:operator, gateway, *, agent.list\n"
    with pytest.raises(PolicyError) as e:
        bare_policy(csv)
    assert e.value.problems[0].startswith("policy.csv:4: grants operator-class action agent.list")
    assert "agent:* holds it" in e.value.problems[0]


def test_every_breach_is_reported_not_only_the_first() -> None:
    csv = MINIMAL_CSV + (
        "p, role:agent, gateway, *, agent.list\np, operator, socket, policy, policy.read\n"
    )
    with pytest.raises(PolicyError) as e:
        bare_policy(csv)
    assert [p.split(":")[1] for p in e.value.problems] == ["3", "4"]
    assert "(and 1 more problem(s))" in e.value.reason


def test_own_resource_grants_are_accepted() -> None:
    policy = bare_policy(
        MINIMAL_CSV
        + "p, role:agent, socket, agent:{self}/state/*, state.read\n"
        + "p, agent:bob, socket, agent:bob/notes/*, state.write\n"
        + "p, agent:bob, socket, agent:{self}, agent.whoami\n"
    )
    assert len(policy.lines) == 3
