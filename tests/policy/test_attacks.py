"""Policies crafted to slip something operator-ish (or another agent's data) to an agent.

Each text is one trick a careless or hostile policy editor could try; the engine
must refuse it at load time, naming the line, or - where the text is harmless -
load it without granting any agent anything beyond its own resources.
"""

from __future__ import annotations

import pytest

from enforcer.policy import AccessRequest, PolicyError
from tests.policy.helpers import MINIMAL_CSV, bare_policy

OWN = "p, role:agent, socket, agent:{self}/state/*, state.read\n"


@pytest.mark.parametrize(
    ("csv", "words"),
    [
        # Role chains that end at the operator's role.
        (
            MINIMAL_CSV + "g, role:agent, role:helper\ng, role:helper, role:operator\n"
            "p, role:operator, gateway, question:*, question.answer\n",
            "question.answer",
        ),
        (
            MINIMAL_CSV + "g, agent:alpha, role:ops\ng, operator, role:ops\n"
            "p, role:ops, gateway, agent:*, container.stop\n",
            "agent:alpha",
        ),
        # A resource that is a prefix of another agent's.
        (MINIMAL_CSV + "p, role:agent, socket, agent:{self}*, state.read\n", "not the agent's own"),
        (MINIMAL_CSV + "p, role:agent, socket, agent:{self}-x/state/*, state.read\n", "own"),
        (MINIMAL_CSV + "p, agent:bob, socket, agent:bobby/state/*, state.read\n", "own"),
        # Unicode lookalikes, odd spacing and quoting, comments mid-line, a BOM.
        (
            MINIMAL_CSV + "p, agent:\u0430lice, socket, agent:{self}/state/*, state.read\n",
            "subject",
        ),
        (MINIMAL_CSV + "p, role:agent, socket, agent:{self}/state/*, state.read # x\n", "action"),
        (MINIMAL_CSV + 'p, "role:agent", socket, agent:{self}/state/*, state.read\n', "quotes"),
        (MINIMAL_CSV + "p, role:agent, socket, agent:{self}/state/* ,state.read,\n", "empty"),
        (MINIMAL_CSV + "p, role:agent, socket, agent:{ self}/state/*, state.read\n", "resource"),
        ("\ufeff" + MINIMAL_CSV, "line type"),
        (
            MINIMAL_CSV + "p, role:agent, so\u00adcket, agent:{self}/state/*, state.read\n",
            "channel",
        ),
        (
            MINIMAL_CSV
            + "g, agent:*, role:operator\np, role:operator, gateway, *, dashboard.view\n",
            "dashboard.view",
        ),
    ],
)
def test_a_crafted_policy_is_refused(csv: str, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        bare_policy(csv)
    assert any(words in p for p in e.value.problems), e.value.problems
    assert all("policy.csv:" in p for p in e.value.problems), e.value.problems


def test_crlf_and_spacing_change_nothing_about_who_gets_what() -> None:
    plain = bare_policy(MINIMAL_CSV + OWN)
    crlf = bare_policy(
        (MINIMAL_CSV + "p ,  role:agent,socket ,agent:{self}/state/*,state.read\t\n").replace(
            "\n", "\r\n"
        )
    )
    for principal in ("agent:alpha", "agent:alphax", "agent:beta"):
        for resource in ("agent:alpha/state/f", "agent:alphax/state/f", "agent:alpha/statex"):
            req = AccessRequest(principal, "socket", resource, "state.read")
            assert plain.decide(req).allowed == crlf.decide(req).allowed


@pytest.mark.parametrize(
    ("principal", "resource"),
    [
        ("agent:alpha", "agent:alphax/state/f"),  # prefix of another agent's name
        ("agent:alph", "agent:alpha/state/f"),
        ("agent:alpha", "agent:alpha/statex/f"),  # sibling of state/
        ("agent:alpha", "agent:alpha"),
        ("agent:alpha", "agent:beta/state/f"),
        ("agent:*", "agent:alpha/state/f"),  # the pattern is not a principal
        ("role:agent", "agent:alpha/state/f"),  # nor is a role
        ("agent:{self}", "agent:{self}/state/f"),
        ("operator", "agent:alpha/state/f"),  # agent-self actions are for agents
    ],
)
def test_self_never_stretches_to_another_resource(principal: str, resource: str) -> None:
    policy = bare_policy(MINIMAL_CSV + OWN)
    assert not policy.decide(AccessRequest(principal, "socket", resource, "state.read")).allowed
