"""For the shipped policy and any generated policy the engine accepts:

- no agent principal is allowed any operator-class action, on any channel, for any resource;
- no agent is allowed anything on another agent's resource;
- the request-space proof (``prove``) finds no violation.
"""

from __future__ import annotations

from hypothesis import assume, given

from enforcer.policy import AccessRequest, AuthorityClass, Policy, load_policy
from enforcer.policy.proof import prove
from enforcer.policy.syntax import CHANNELS, agent_name, resource_owner
from tests.policy.helpers import SHIPPED
from tests.policy.strategies import (
    AGENT_NAMES,
    RESOURCES,
    accepted_policy,
    plausible_policy_csvs,
)

AGENTS = (*(f"agent:{n}" for n in AGENT_NAMES), "agent:zed")


def resources_for(policy: Policy) -> set[str]:
    """Fixed resources plus witnesses of every line's pattern, for every agent name."""
    out = set(RESOURCES)
    for g in policy.lines:
        for n in (*AGENT_NAMES, "zed"):
            obj = g.obj.replace("{self}", n)
            lit = obj.removesuffix("*")
            out.update({obj, lit, lit + "x", lit + "/x", lit + "zed/x"})
    return out


def assert_agents_confined(policy: Policy) -> None:
    resources = resources_for(policy)
    operator_actions = [
        a for a, s in policy.catalogue.items() if s.authority is AuthorityClass.OPERATOR
    ]
    for principal in AGENTS:
        me = agent_name(principal)
        for chan in CHANNELS:
            for resource in resources:
                for act in operator_actions:
                    d = policy.decide(AccessRequest(principal, chan, resource, act))
                    assert not d.allowed, (principal, chan, resource, act, d.rule)
                owner = resource_owner(resource)
                if owner is not None and owner != me:
                    for act in policy.catalogue:
                        d = policy.decide(AccessRequest(principal, chan, resource, act))
                        assert not d.allowed, (principal, chan, resource, act, d.rule)
    assert prove(policy).violations == ()


def test_the_shipped_policy_confines_agents() -> None:
    assert_agents_confined(load_policy(SHIPPED))


@given(plausible_policy_csvs())
def test_any_policy_the_engine_accepts_confines_agents(csv: str) -> None:
    policy = accepted_policy(csv)
    assume(policy is not None)
    assert policy is not None
    assert_agents_confined(policy)
