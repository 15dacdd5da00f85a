"""The Casbin reference: pycasbin fed our validated lines agrees on the shipped cases."""

from __future__ import annotations

from enforcer.policy import load_policy
from enforcer.policy.reference import CasbinReference, res_match
from tests.policy.helpers import SHIPPED


def test_res_match_substitutes_self_only_for_agents() -> None:
    assert res_match("agent:bob", "agent:bob/state/x", "agent:{self}/state/*")
    assert not res_match("agent:bob", "agent:bobby/state/x", "agent:{self}/state/*")
    assert not res_match("operator", "agent:{self}/state/x", "agent:{self}/state/*")
    assert res_match("operator", "question:1", "question:*")
    assert not res_match("operator", "question", "question:*")


def test_casbin_and_fast_casbin_agree_with_every_shipped_case() -> None:
    policy = load_policy(SHIPPED)
    plain = CasbinReference(policy.lines, policy.roles)
    fast = CasbinReference(policy.lines, policy.roles, fast=True)
    for case in policy.tests:
        ok, rule = plain.enforce_ex(case.request)
        assert ok == case.expect_allow == fast.enforce(case.request)
        assert rule == policy.decide(case.request).rule
