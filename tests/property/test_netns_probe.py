"""Property: for any containers and egress policy, the probed matrix equals the truth table.

Real namespaces, veths and nftables (root). Each example builds 2-4
containers and an outside namespace, so examples are few.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from netns.probe import Prober
from tests.conftest import require_root
from tests.netns.helpers import fresh_names, make_policy, managed

NAMES = ("ant", "bee", "cat", "dog")
ROLES = ("agent", "builder")
PORTS = (80, 443, 8081)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """Containers with roles, and egress entries naming them, their roles or nobody."""
    n = draw(st.integers(2, 4))
    containers = {
        name: draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True)) for name in NAMES[:n]
    }
    subjects = [f"agent:{c}" for c in containers] + [f"role:{r}" for r in ROLES]
    rules = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "principal": st.sampled_from(subjects),
                    # "outside" is the probe's namespace; "doc" never matches it.
                    "to": st.lists(
                        st.sampled_from(["any4", "any6", "outside4", "outside6", "doc"]),
                        min_size=1,
                        max_size=3,
                        unique=True,
                    ),
                    "ports": st.lists(st.sampled_from(PORTS), max_size=2, unique=True),
                    "protocol": st.sampled_from(["tcp", "tcp", "udp"]),
                }
            ),
            max_size=3,
        )
    )
    return containers, rules


def _toml(rules: list[dict[str, Any]], out4: str, out6: str) -> str:
    cidr = {
        "any4": "0.0.0.0/0",
        "any6": "::/0",
        "outside4": f"{ipaddress.ip_network(out4)[2]}/32",
        "outside6": f"{ipaddress.ip_network(out6)[2]}/128",
        "doc": "192.0.2.0/24",
    }
    out = []
    for r in rules:
        to = ", ".join(f'"{cidr[str(t)]}"' for t in r["to"])
        out.append(
            f'[[egress]]\nprincipal = "{r["principal"]}"\nto = [{to}]\n'
            f'protocol = "{r["protocol"]}"\nports = {list(r["ports"])}\n'
        )
    return "\n".join(out)


@settings(max_examples=5, deadline=None)
@given(scenarios())
def test_probed_matrix_equals_the_truth_table(
    scenario: tuple[dict[str, list[str]], list[dict[str, Any]]],
) -> None:
    require_root()
    containers, rules = scenario
    names = fresh_names()
    policy = make_policy(names, _toml(rules, names.outside_v4, names.outside_v6))
    with managed(names, policy) as m:
        for name, roles in containers.items():
            m.up(name, roles)
        result = Prober(
            m, outside_v4=names.outside_v4, outside_v6=names.outside_v6, outside_ports=PORTS
        ).run()
        assert result.ok, "\n" + result.table()
