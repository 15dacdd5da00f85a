"""The access matrix and the diff between two versions."""

from __future__ import annotations

from enforcer.policy import load_policy
from enforcer.policy.diff import diff_policies
from enforcer.policy.matrix import access_matrix
from tests.policy.helpers import MINIMAL_CSV, SHIPPED, bare_policy


def test_the_matrix_shows_what_roles_and_principals_hold() -> None:
    m = access_matrix(load_policy(SHIPPED))
    assert m.subjects[:4] == ("operator", "anonymous", "service:core", "agent:*")
    agent = {(a.action, a.channel) for a in m.cells["agent:*"]}
    assert ("question.ask", "socket") in agent
    assert all(ch == "socket" for _, ch in agent)
    assert {a.action for a in m.cells["operator"]} >= {"question.answer", "session.login"}
    assert m.cells["anonymous"]
    assert all(a.channel == "gateway" for a in m.cells["anonymous"])


def test_the_diff_names_who_gained_and_who_lost() -> None:
    old = bare_policy(MINIMAL_CSV + "p, role:operator, gateway, policy, policy.read\n")
    new = bare_policy(MINIMAL_CSV + "p, role:agent, socket, agent:{self}/status, status.report\n")
    d = diff_policies(old, new)
    changes = {(c.subject, c.sign, c.action) for c in d.changes}
    assert ("agent:*", "+", "status.report") in changes
    assert ("role:agent", "+", "status.report") in changes
    assert ("operator", "-", "policy.read") in changes
    assert ("role:operator", "-", "policy.read") in changes
    assert diff_policies(old, old).changes == ()
