"""The compiled index and Casbin's own enforce agree on every generated request.

Policies are generated syntactically valid but *without* the invariants (so
the index is compared on every shape of line, not only the safe ones); both
the decision and the reported line (the first that matches) must agree.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from enforcer.policy import AccessRequest, PolicyError
from enforcer.policy.reference import CasbinReference
from tests.policy.helpers import bare_policy
from tests.policy.strategies import policy_csvs, requests


@st.composite
def policies_and_requests(draw: st.DrawFn) -> tuple[str, list[AccessRequest]]:
    csv = draw(policy_csvs(max_lines=18))
    reqs = draw(st.lists(requests(), min_size=1, max_size=40))
    return csv, reqs


@given(policies_and_requests())
def test_compiled_index_equals_casbin_enforce(case: tuple[str, list[AccessRequest]]) -> None:
    csv, reqs = case
    try:
        policy = bare_policy(csv, invariants=False)
    except PolicyError:
        assume(False)  # a role cycle: refused before any decision
        raise
    plain = CasbinReference(policy.lines, policy.roles)
    fast = CasbinReference(policy.lines, policy.roles, fast=True)
    # every line gets at least one request that it can match
    for g in policy.lines:
        for name in ("a", "zed"):
            obj = g.obj.replace("{self}", name).removesuffix("*")
            for principal in (g.sub, f"agent:{name}"):
                if principal.startswith("role:"):
                    continue
                reqs.append(AccessRequest(principal, g.chan, obj, g.act))
    for r in reqs:
        ours = policy.decide(r)
        allowed, rule = plain.enforce_ex(r)
        assert (ours.allowed, ours.rule) == (allowed, rule), r
        assert fast.enforce(r) == allowed, r
