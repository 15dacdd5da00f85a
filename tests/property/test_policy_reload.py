"""Through any sequence of valid and invalid policy versions, the live decisions
always equal those of the last valid version (deny-all before the first one)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from enforcer.policy import AccessRequest, Policy, PolicyEngine
from tests.policy.helpers import bare_texts, write_policy
from tests.policy.strategies import accepted_policy, plausible_policy_csvs, requests

BREAKERS = (
    "g, agent:*, role:zz\np, role:zz, gateway, *, agent.list",  # operator action to agents
    "p, operator, socket, policy, policy.read",  # operator action on a socket
    "g, agent:*, role:zz\np, role:zz, socket, agent:*, state.read",  # others' resources
    "p9, operator, gateway, policy, policy.read",  # a line type the model lacks
    "g, role:r1, role:r2\ng, role:r2, role:r1",  # a role cycle
)
FAILING_CASE = (
    '[[case]]\nprincipal = "anonymous"\nchannel = "gateway"\nresource = "policy"\n'
    'action = "policy.reload"\nexpect = "allow"\n'
)


@st.composite
def versions(draw: st.DrawFn) -> tuple[str, str, Policy | None]:
    """(policy.csv, tests.toml, the policy if the engine must accept it, else None)."""
    policy = accepted_policy(draw(plausible_policy_csvs(max_lines=10)))
    if policy is None:
        policy = accepted_policy("")
    assert policy is not None
    texts = [lk.src.text for lk in policy.roles] + [g.src.text for g in policy.lines]
    csv = "\n".join(texts) if policy else ""
    if draw(st.booleans()):
        accepted = accepted_policy(csv + "\n")
        return csv + "\n", "", accepted
    kind = draw(st.sampled_from([*BREAKERS, "failing-case"]))
    if kind == "failing-case":
        return csv + "\n", FAILING_CASE, None
    return csv + "\n" + kind + "\n", "", None


@given(st.lists(versions(), min_size=1, max_size=6), st.lists(requests(), min_size=5, max_size=25))
def test_live_decisions_follow_the_last_valid_version(
    sequence: list[tuple[str, str, Policy | None]], reqs: list[AccessRequest]
) -> None:
    with tempfile.TemporaryDirectory(prefix="hb-pol-") as tmp:
        directory = Path(tmp)
        engine: PolicyEngine | None = None
        last_valid: Policy | None = None
        for csv, tests, expected in sequence:
            write_policy(directory, bare_texts(csv, tests))
            if engine is None:
                engine = PolicyEngine(directory)
                result_ok = engine.current is not None
            else:
                result_ok = engine.reload().ok
            assert result_ok == (expected is not None)
            if expected is not None:
                last_valid = expected
            for r in reqs:
                live = engine.decide(r)
                if last_valid is None:
                    assert not live.allowed
                    assert live.revision == "none"
                else:
                    want = last_valid.decide(r)
                    assert (live.allowed, live.rule) == (want.allowed, want.rule)
                    assert live.revision == last_valid.revision
