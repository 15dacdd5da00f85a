"""The pure compiler: rule count independent of N, containers live only in sets."""

from __future__ import annotations

import ipaddress

from netns.policy import parse_network_policy
from netns.ruleset import ContainerEntry, compile_ruleset, render_commands, subjects_for

POLICY = parse_network_policy(
    """
[[egress]]
principal = "role:agent"
to = ["0.0.0.0/0", "::/0"]
ports = [80, 443]

[[egress]]
principal = "agent:c1"
to = ["10.0.0.0/8", "10.1.0.0/16"]
protocol = "udp"
"""
)


def _containers(n: int) -> list[ContainerEntry]:
    return [
        ContainerEntry(
            f"c{i}",
            f"hv-c{i}",
            ipaddress.IPv4Address(0x0ACB0002 + 4 * i),
            ipaddress.IPv6Address(f"fd00::{4 * i + 2:x}"),
            subjects_for(f"c{i}", ["agent"] if i % 2 == 0 else []),
        )
        for i in range(n)
    ]


def test_rule_count_does_not_depend_on_the_number_of_containers() -> None:
    counts = {n: len(compile_ruleset(POLICY, _containers(n)).rules) for n in (0, 1, 10, 1000)}
    assert len(set(counts.values())) == 1, counts
    # and the rules are literally the same: containers appear only in sets
    assert (
        compile_ruleset(POLICY, _containers(0)).rules
        == compile_ruleset(POLICY, _containers(1000)).rules
    )


def test_containers_appear_in_the_interface_and_antispoofing_sets() -> None:
    rs = compile_ruleset(POLICY, _containers(3))
    sets = {s.name: s.elements for s in rs.sets}
    assert sets["cont_if"] == {"hv-c0", "hv-c1", "hv-c2"}
    assert ("hv-c1", "10.203.0.6") in sets["cont_src4"]
    assert ("hv-c1", "fd00::6") in sets["cont_src6"]


def test_egress_sets_hold_exactly_the_containers_the_policy_names() -> None:
    rs = compile_ruleset(POLICY, _containers(3))
    sets = {s.name: s.elements for s in rs.sets}
    assert sets["eg0_if"] == {"hv-c0", "hv-c2"}  # role:agent
    assert sets["eg1_if"] == {"hv-c1"}  # agent:c1
    assert sets["eg0_ports"] == {"80", "443"}
    assert sets["eg1_v4"] == {"10.0.0.0/8"}  # overlapping CIDRs collapsed
    assert "eg1_v6" not in sets
    assert "eg1_ports" not in sets


def test_no_policy_means_no_accepting_forward_rule_except_replies() -> None:
    rs = compile_ruleset(parse_network_policy(""), _containers(2))
    accepts = [r for r in rs.rules if r.chain == "forward" and '"accept"' in r.expr_json]
    assert all("established" in r.expr_json for r in accepts)


def test_every_command_names_only_our_table() -> None:
    cmds = render_commands(compile_ruleset(POLICY, _containers(2), table="hivetabc"))
    for cmd in cmds:
        for body in cmd.values():
            for kind, obj in body.items():
                assert obj["family"] == "inet"
                assert (obj["name"] if kind == "table" else obj["table"]) == "hivetabc"
