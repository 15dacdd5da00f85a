"""The policy's network section (``policies/network.toml``), parsed into plain data.

Pure: no sockets, no netlink. The policy loader calls
:func:`parse_network_policy`; ``netns.ruleset`` compiles the result.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from enforcer.errors import BadRequest
from enforcer.names import AGENT_NAME

__all__ = ["EgressRule", "NetworkPolicy", "NetworkPolicyError", "parse_network_policy"]

_SUBJECT = re.compile(rf"^(agent:{AGENT_NAME}|role:[a-z][a-z0-9-]{{0,30}})$")
_PROTOCOLS = ("tcp", "udp")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkPolicyError(BadRequest):
    """The network section is invalid; the reason names the file and entry."""

    code = "bad_network_policy"


@dataclass(frozen=True, slots=True)
class EgressRule:
    """Containers of ``principal`` (an agent or a role) may reach ``to`` on ``ports``."""

    principal: str
    to: tuple[IPNetwork, ...]
    protocol: str
    ports: tuple[int, ...]
    description: str
    index: int  # position in the file, 0-based: names the nftables sets


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Addressing and egress grants. Host and peer access is never grantable."""

    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network
    agent_ui_port: int
    egress: tuple[EgressRule, ...]


def _fail(source: str, where: str, msg: str) -> NetworkPolicyError:
    return NetworkPolicyError(f"{source}: {where}: {msg}")


def _expect_keys(source: str, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(source, where, f"unknown key(s) {', '.join(unknown)}")


def parse_network_policy(text: str, source: str = "network.toml") -> NetworkPolicy:
    """Parse and validate the network section; raise :class:`NetworkPolicyError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise NetworkPolicyError(f"{source}: invalid TOML: {e}") from e
    except RecursionError as e:  # tomllib recurses per nesting level
        raise NetworkPolicyError(f"{source}: invalid TOML: nested too deeply") from e
    _expect_keys(source, "top level", data, {"addressing", "egress"})
    addr = data.get("addressing", {})
    if not isinstance(addr, dict):
        raise _fail(source, "[addressing]", "must be a table")
    _expect_keys(source, "[addressing]", addr, {"ipv4", "ipv6", "agent_ui_port"})
    try:
        v4 = ipaddress.IPv4Network(addr.get("ipv4", "10.203.0.0/16"))
        v6 = ipaddress.IPv6Network(addr.get("ipv6", "fd00:4869:7665::/48"))
    except (ValueError, TypeError) as e:
        raise _fail(source, "[addressing]", f"bad subnet: {e}") from e
    if v4.prefixlen > 24 or v6.prefixlen > 112:
        raise _fail(source, "[addressing]", "subnets too small (need at least /24 and /112)")
    port = addr.get("agent_ui_port", 8000)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise _fail(source, "[addressing]", "agent_ui_port must be an integer 1-65535")
    rules = []
    raw_rules = data.get("egress", [])
    if not isinstance(raw_rules, list):
        raise _fail(source, "egress", "must be an array of tables ([[egress]])")
    for i, raw in enumerate(raw_rules):
        where = f"[[egress]] #{i + 1}"
        if not isinstance(raw, dict):
            raise _fail(source, where, "must be a table")
        _expect_keys(source, where, raw, {"principal", "to", "protocol", "ports", "description"})
        principal = raw.get("principal")
        if not isinstance(principal, str) or not _SUBJECT.match(principal):
            raise _fail(
                source, where, f"principal must be agent:<name> or role:<name>, got {principal!r}"
            )
        to_raw = raw.get("to")
        if not isinstance(to_raw, list) or not to_raw:
            raise _fail(source, where, "to must be a non-empty list of CIDRs")
        nets: list[IPNetwork] = []
        for cidr in to_raw:
            try:
                net = ipaddress.ip_network(str(cidr), strict=True)
            except ValueError as e:
                raise _fail(source, where, f"bad CIDR {cidr!r}: {e}") from e
            # Host and container addresses are blocked before egress rules are
            # consulted, so a broad CIDR cannot open them; say so for clarity.
            nets.append(net)
        protocol = raw.get("protocol", "tcp")
        if protocol not in _PROTOCOLS:
            raise _fail(source, where, f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
        ports_raw = raw.get("ports", [])
        if not isinstance(ports_raw, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports_raw
        ):
            raise _fail(source, where, "ports must be a list of integers 1-65535 (empty: all)")
        desc = raw.get("description", "")
        if not isinstance(desc, str):
            raise _fail(source, where, "description must be a string")
        rules.append(
            EgressRule(principal, tuple(nets), protocol, tuple(sorted(set(ports_raw))), desc, i)
        )
    return NetworkPolicy(v4, v6, port, tuple(rules))
