"""policy.csv: parsed by us, every malformed line refused naming file:line."""

from __future__ import annotations

import pytest

from enforcer.policy.catalogue import parse_catalogue
from enforcer.policy.lines import MAX_ROLE_DEPTH, RoleGraph, parse_policy_csv
from tests.policy.helpers import shipped_texts

CAT = parse_catalogue(shipped_texts()["catalogue.toml"])[0]


def problems(csv: str) -> list[str]:
    _grants, links, found = parse_policy_csv(csv, CAT)
    return found + RoleGraph(links).problems()


def test_the_shipped_policy_parses_cleanly_with_line_numbers() -> None:
    grants, links, found = parse_policy_csv(shipped_texts()["policy.csv"], CAT)
    assert found == []
    assert links[0].member == "agent:*"
    assert links[0].src.line == 10
    assert all(g.src.file == "policy.csv" for g in grants)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("p2, operator, gateway, policy, policy.read", "unknown line type 'p2'"),
        ("e, operator, role:x", "unknown line type 'e'"),
        ("p, operator, gateway, policy", "a p line has 4 fields"),
        ("g, operator", "a g line has 2 fields"),
        ("p, operator, , policy, policy.read", "empty field"),
        ('p, "operator", gateway, policy, policy.read', "quotes are not supported"),
        ("p, agent:*, socket, agent:{self}, agent.whoami", "agent:* cannot be a p subject"),
        ("p, admin, gateway, policy, policy.read", "malformed subject 'admin'"),
        ("p, agent:Bob, socket, agent:{self}, agent.whoami", "malformed subject 'agent:Bob'"),
        ("p, operator, http, policy, policy.read", "unknown channel 'http'"),
        ("p, operator, gateway, agent:*/state, agent.read", "'*' is allowed only as the last"),
        ("p, operator, gateway, agent:{name}, agent.read", "the only placeholder is {self}"),
        ("p, operator, gateway, a b, agent.read", "unexpected character"),
        ("p, operator, gateway, policy, policy.destroy", "unknown action 'policy.destroy'"),
        ("g, operator, admin", "malformed role 'admin'"),
        ("g, agent:*, operator", "malformed role 'operator'"),
        ("g, role:*, role:x", "malformed member 'role:*'"),
        ("g, role:x, role:x", "role:x cannot hold itself"),
    ],
)
def test_a_malformed_line_is_refused_naming_file_and_line(line: str, message: str) -> None:
    found = problems(f"# comment\n\n{line}\n")
    assert len(found) == 1
    assert found[0].startswith("policy.csv:3: ")
    assert message in found[0]


def test_duplicate_lines_are_refused_naming_the_first() -> None:
    csv = (
        "p, operator, gateway, policy, policy.read\ng, operator, role:o\n"
        "p, operator, gateway, policy, policy.read\ng,operator,role:o\n"
    )
    assert problems(csv) == [
        "policy.csv:3: duplicate of line 1",
        "policy.csv:4: duplicate of line 2",
    ]


def test_a_role_cycle_is_refused_naming_its_lines() -> None:
    csv = "g, role:a, role:b\ng, role:b, role:c\ng, role:c, role:a\n"
    (found,) = problems(csv)
    assert "role cycle" in found
    assert "policy.csv:1, policy.csv:2, policy.csv:3" in found


def test_a_role_chain_deeper_than_casbin_searches_is_refused() -> None:
    chain = [f"g, role:r{i}, role:r{i + 1}" for i in range(MAX_ROLE_DEPTH + 1)]
    (found,) = problems("g, operator, role:r0\n" + "\n".join(chain) + "\n")
    assert found.startswith("policy.csv:1: role chain from operator is 10 deep")
    assert problems("\n".join(chain[:MAX_ROLE_DEPTH]) + "\n") == []


def test_agents_hold_the_roles_of_the_agent_pattern() -> None:
    graph = RoleGraph(
        parse_policy_csv("g, agent:*, role:agent\ng, role:agent, role:base\n", CAT)[1]
    )
    assert set(graph.subjects_of("agent:zed")) == {"agent:zed", "role:agent", "role:base"}
    assert set(graph.subjects_of("operator")) == {"operator"}
