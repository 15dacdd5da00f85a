"""Shared helpers of the network-layer tests: unique names, policies, cleanup."""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from netns import links
from netns.apply import Nft
from netns.manager import NetnsManager
from netns.policy import NetworkPolicy, parse_network_policy

__all__ = ["Names", "fresh_names", "leftovers", "make_policy", "managed", "sweep"]


@dataclass(frozen=True)
class Names:
    """Unique names for one test: table, namespace and interface prefixes, subnets."""

    token: str
    table: str
    prefix: str
    ifprefix: str
    ipv4: str
    ipv6: str
    outside_v4: str
    outside_v6: str


def fresh_names() -> Names:
    """Names no other test (or the production `hive` table) uses."""
    t = secrets.token_hex(3)
    a, b = int(t[:2], 16), int(t[2:4], 16)
    return Names(
        token=t,
        table=f"hivet{t}",
        prefix=f"hvt{t}-",
        ifprefix=f"t{t}",
        ipv4=f"10.{100 + a % 100}.{b}.0/24",
        ipv6=f"fd00:{t[:4]}:{t[4:]}::/112",
        outside_v4=f"198.18.{a}.{(b % 64) * 4}/30",
        outside_v6=f"2001:db8:{t[:4]}:{t[4:]}::/126",
    )


def make_policy(names: Names, egress_toml: str = "") -> NetworkPolicy:
    """A network policy on the test's own subnets, with the given [[egress]] entries."""
    return parse_network_policy(
        f'[addressing]\nipv4 = "{names.ipv4}"\nipv6 = "{names.ipv6}"\n'
        f"agent_ui_port = 8000\n\n{egress_toml}"
    )


def leftovers(names: Names) -> dict[str, list[str]]:
    """Everything of this test still on the host (should be empty after cleanup)."""
    with IPRoute() as ipr:
        ifs = [
            str(link.get_attr("IFLA_IFNAME"))
            for link in ipr.link("dump")
            if str(link.get_attr("IFLA_IFNAME")).startswith(names.ifprefix)
        ]
        v4 = ipaddress.ip_network(names.ipv4)
        addrs = [
            str(a.get_attr("IFA_ADDRESS"))
            for a in ipr.addr("dump")
            if ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) in v4
        ]
    return {
        "namespaces": links.list_namespaces(names.prefix),
        "links": ifs,
        "addresses": addrs,
        "tables": [names.table] if Nft(names.table).exists() else [],
    }


def sweep(names: Names) -> None:
    """Remove whatever of this test is left (namespaces, links, table)."""
    for ns in links.list_namespaces(names.prefix):
        with suppress(links.LinkError):
            links.remove_container_links(ns, "")
    with IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = str(link.get_attr("IFLA_IFNAME"))
            if name.startswith(names.ifprefix):
                with suppress(Exception):
                    ipr.link("del", index=link["index"])
    Nft(names.table).delete_table()


@contextmanager
def managed(names: Names, policy: NetworkPolicy) -> Iterator[NetnsManager]:
    """A manager on unique names; everything it made is removed even on failure."""
    d = Path(tempfile.mkdtemp(prefix="hvn-", dir="/tmp"))
    m = NetnsManager(
        policy,
        table=names.table,
        prefix=names.prefix,
        ifprefix=names.ifprefix,
        state_path=d / "netns.json",
    )
    try:
        yield m
    finally:
        try:
            m.destroy()
        finally:
            sweep(names)
            shutil.rmtree(d, ignore_errors=True)


# The egress grant most netns tests use: every agent may reach port 80 outside.
HTTP_EGRESS = '[[egress]]\nprincipal = "role:agent"\nto = ["0.0.0.0/0", "::/0"]\nports = [80]\n'
