"""The pure compiler: (network policy, container inventory) -> the desired nftables table.

No I/O here. :func:`compile_ruleset` returns plain data (:class:`Ruleset`);
:func:`render_commands` turns it into libnftables JSON commands that replace
the whole table in one batch; :func:`normalise_listing` turns the JSON of
``nft -j list table inet <t>`` into the same comparable shape as
:meth:`Ruleset.normalised`, so drift is a plain dict comparison.

The rules never mention a container: containers live in named sets, so the
rule count depends only on the policy (a few rules per egress entry), never
on how many containers run. Adding a container is adding set elements.

What the table says (``C`` = any container interface, set ``cont_if``):

- ``input``: from ``C`` only replies to connections the host opened
  (established/related, and only from the container the connection is
  with: ``iifname . ct reply saddr`` in the anti-spoofing set) and IPv6
  neighbour discovery (hop limit 255, so it
  is link-local by construction) are accepted; everything else from ``C`` to
  any host address is dropped. That covers the host side of the veth, other
  host interfaces, and 127.0.0.0/8 or ::1 reached through the veth when
  ``route_localnet`` is on, because all of them are delivered locally.
- ``forward``: from ``C``: anything DNAT-ed (ports the host publishes),
  anything to another ``C``, anything with a source address that is not
  the container's own (anti-spoofing via ``ifname . addr`` sets), and
  anything to a link-local address (169.254.0.0/16, fe80::/10: metadata
  services; no egress grant covers them) is dropped;
  established/related traffic passes only for flows the container itself
  opened (``ct original saddr`` is its address on that interface); each egress entry
  accepts new connections from the interfaces in its own set to its
  destinations and ports; everything else from or to ``C`` is dropped.
- ``postrouting`` (nat): egress from ``C`` is masqueraded.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netns.policy import EgressRule, NetworkPolicy

__all__ = [
    "ChainDef",
    "ContainerEntry",
    "RuleDef",
    "Ruleset",
    "SetDef",
    "compile_ruleset",
    "container_elements",
    "egress_set_names",
    "normalise_listing",
    "render_commands",
    "render_element",
    "subjects_for",
]

JSON = Any
Element = str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContainerEntry:
    """One container as the compiler sees it."""

    name: str
    host_ifname: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    subjects: frozenset[str]  # "agent:<name>" plus "role:<r>" it holds


@dataclass(frozen=True, slots=True)
class SetDef:
    """A named set. ``type`` is an nft type or a tuple for a concatenation."""

    name: str
    type: str | tuple[str, ...]
    flags: tuple[str, ...] = ()
    elements: frozenset[Element] = frozenset()


@dataclass(frozen=True, slots=True)
class ChainDef:
    """A base chain."""

    name: str
    type: str
    hook: str
    prio: int
    policy: str = "accept"


@dataclass(frozen=True, slots=True)
class RuleDef:
    """A rule: its chain, its expression list (libnftables' canonical JSON), a comment."""

    chain: str
    expr_json: str  # json.dumps(expr, sort_keys=True): hashable and comparable
    comment: str

    @property
    def expr(self) -> list[JSON]:
        """The expression list as JSON data."""
        result: list[JSON] = json.loads(self.expr_json)
        return result


@dataclass(frozen=True, slots=True)
class Ruleset:
    """The whole desired table."""

    table: str
    sets: tuple[SetDef, ...]
    chains: tuple[ChainDef, ...]
    rules: tuple[RuleDef, ...] = field(default=())

    def normalised(self) -> dict[str, Any]:
        """The comparable shape shared with :func:`normalise_listing`."""
        return {
            "sets": {
                s.name: {
                    "type": list(s.type) if isinstance(s.type, tuple) else s.type,
                    "flags": sorted(s.flags),
                    "elements": sorted(_element_key(e) for e in s.elements),
                }
                for s in self.sets
            },
            "chains": {
                c.name: {
                    "type": c.type,
                    "hook": c.hook,
                    "prio": c.prio,
                    "policy": c.policy,
                    # We never set table flags: see normalise_listing.
                    "table_flags": [],
                }
                for c in self.chains
            },
            "rules": {
                c.name: [[r.expr_json, r.comment] for r in self.rules if r.chain == c.name]
                for c in self.chains
            },
        }


def _element_key(e: Element) -> str:
    return " . ".join(e) if isinstance(e, tuple) else e


# --- expression helpers (the canonical form `nft -j list` prints) ----------


def _meta(key: str) -> JSON:
    return {"meta": {"key": key}}


def _payload(proto: str, fld: str) -> JSON:
    return {"payload": {"protocol": proto, "field": fld}}


def _match(left: JSON, right: JSON, op: str = "==") -> JSON:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(chain: str, comment: str, *expr: JSON) -> RuleDef:
    return RuleDef(chain, json.dumps(list(expr), sort_keys=True), comment)


def _owned(ifkey: str, direction: str, proto: str, src_set: str) -> JSON:
    """``<ifkey> . ct <direction> <proto> saddr`` in ``src_set``: the flow is that container's."""
    ct = {"ct": {"key": f"{proto} saddr", "dir": direction}}
    return _match({"concat": [_meta(ifkey), ct]}, src_set)


_FROM_C = _match(_meta("iifname"), "@cont_if")
_TO_C = _match(_meta("oifname"), "@cont_if")
_NOT_TO_C = _match(_meta("oifname"), "@cont_if", "!=")
_ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], "in")

BASE_SETS = ("cont_if", "cont_src4", "cont_src6")


def egress_set_names(rule: EgressRule) -> dict[str, str]:
    """Names of the sets of one egress entry (``if``, ``v4``, ``v6``, ``ports``)."""
    i = rule.index
    return {"if": f"eg{i}_if", "v4": f"eg{i}_v4", "v6": f"eg{i}_v6", "ports": f"eg{i}_ports"}


def subjects_for(name: str, roles: Iterable[str]) -> frozenset[str]:
    """The policy subjects a container answers to: ``agent:<name>`` and its ``role:`` s."""
    out = {f"agent:{name}"}
    for r in roles:
        out.add(r if r.startswith("role:") else f"role:{r}")
    return frozenset(out)


def container_elements(policy: NetworkPolicy, c: ContainerEntry) -> dict[str, set[Element]]:
    """The set elements one container contributes, by set name (pure)."""
    out: dict[str, set[Element]] = {
        "cont_if": {c.host_ifname},
        "cont_src4": {(c.host_ifname, str(c.ipv4))},
        "cont_src6": {(c.host_ifname, str(c.ipv6))},
    }
    for rule in policy.egress:
        if rule.principal in c.subjects:
            out.setdefault(egress_set_names(rule)["if"], set()).add(c.host_ifname)
    return out


def _nets(rule: EgressRule, version: int) -> list[str]:
    nets = [n for n in rule.to if n.version == version]
    # Interval sets refuse overlapping elements: collapse first.
    collapsed = ipaddress.collapse_addresses(nets)  # type: ignore[type-var]
    return sorted(str(n) for n in collapsed)


def compile_ruleset(
    policy: NetworkPolicy, inventory: Sequence[ContainerEntry], table: str = "hive"
) -> Ruleset:
    """Compile the whole table. The rules depend on ``policy`` only, never on ``inventory``."""
    elements: dict[str, set[Element]] = {n: set() for n in BASE_SETS}
    for rule in policy.egress:
        elements[egress_set_names(rule)["if"]] = set()
    for c in inventory:
        for name, elems in container_elements(policy, c).items():
            elements[name] |= elems

    sets: list[SetDef] = [
        SetDef("cont_if", "ifname", (), frozenset(elements["cont_if"])),
        SetDef("cont_src4", ("ifname", "ipv4_addr"), (), frozenset(elements["cont_src4"])),
        SetDef("cont_src6", ("ifname", "ipv6_addr"), (), frozenset(elements["cont_src6"])),
    ]
    chains = (
        ChainDef("input", "filter", "input", 0),
        ChainDef("forward", "filter", "forward", 0),
        ChainDef("postrouting", "nat", "postrouting", 100),
    )
    rules: list[RuleDef] = [
        # A reply is accepted only on the interface of the container the host
        # opened the connection to: conntrack alone would accept a reply (or
        # a "related" ICMP error) forged by one container for another
        # container's or the outside's flow with the host.
        _rule(
            "input",
            "replies to connections the host opened ipv4",
            _FROM_C,
            _ESTABLISHED,
            _owned("iifname", "reply", "ip", "@cont_src4"),
            {"accept": None},
        ),
        _rule(
            "input",
            "replies to connections the host opened ipv6",
            _FROM_C,
            _ESTABLISHED,
            _owned("iifname", "reply", "ip6", "@cont_src6"),
            {"accept": None},
        ),
        _rule(
            "input",
            "ipv6 neighbour discovery on the veth",
            _FROM_C,
            _match(
                _payload("icmpv6", "type"), {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}
            ),
            _match(_payload("ip6", "hoplimit"), 255),
            {"accept": None},
        ),
        _rule("input", "no host address is reachable from a container", _FROM_C, {"drop": None}),
        _rule(
            "forward",
            "no DNAT-published host port",
            _FROM_C,
            _match({"ct": {"key": "status"}}, "dnat", "in"),
            {"drop": None},
        ),
        _rule("forward", "no container reaches another", _FROM_C, _TO_C, {"drop": None}),
        _rule(
            "forward",
            "anti-spoofing ipv4",
            _FROM_C,
            _match({"concat": [_meta("iifname"), _payload("ip", "saddr")]}, "@cont_src4", "!="),
            {"drop": None},
        ),
        _rule(
            "forward",
            "anti-spoofing ipv6",
            _FROM_C,
            _match({"concat": [_meta("iifname"), _payload("ip6", "saddr")]}, "@cont_src6", "!="),
            {"drop": None},
        ),
        # Link-local destinations are the host's own link, never the outside
        # world an egress grant speaks of - a cloud's metadata service
        # (169.254.169.254: the host's credentials) lives there. A grant of
        # 0.0.0.0/0 must not reach it, so no grant can.
        _rule(
            "forward",
            "no link-local destination ipv4 (metadata services)",
            _FROM_C,
            _match(_payload("ip", "daddr"), {"prefix": {"addr": "169.254.0.0", "len": 16}}),
            {"drop": None},
        ),
        _rule(
            "forward",
            "no link-local destination ipv6",
            _FROM_C,
            _match(_payload("ip6", "daddr"), {"prefix": {"addr": "fe80::", "len": 10}}),
            {"drop": None},
        ),
    ]
    # Packets a container sends are judged by the egress rules below on every
    # packet, not only the first: there is no "established" shortcut out of a
    # container, so revoking a grant (a reload, a removed element) stops a
    # flow that is already open. Inbound, replies pass only for the container
    # that opened the flow (``ct original saddr`` is its own address): no
    # forged "related" ICMP about another container's flow, nothing that
    # entered while the table was missing.
    for key, proto in (("4", "ip"), ("6", "ip6")):
        rules.append(
            _rule(
                "forward",
                f"replies to allowed egress ipv{key}",
                _TO_C,
                _ESTABLISHED,
                _owned("oifname", "original", proto, f"@cont_src{key}"),
                {"accept": None},
            )
        )
    for rule in policy.egress:
        names = egress_set_names(rule)
        sets.append(SetDef(names["if"], "ifname", (), frozenset(elements[names["if"]])))
        if rule.ports:
            sets.append(
                SetDef(names["ports"], "inet_service", (), frozenset(str(p) for p in rule.ports))
            )
            l4: JSON = _match(_payload(rule.protocol, "dport"), "@" + names["ports"])
        else:
            l4 = _match(_meta("l4proto"), rule.protocol)
        for version, key, proto, typ in (
            (4, "v4", "ip", "ipv4_addr"),
            (6, "v6", "ip6", "ipv6_addr"),
        ):
            nets = _nets(rule, version)
            if not nets:
                continue
            sets.append(SetDef(names[key], typ, ("interval",), frozenset(nets)))
            comment = f"egress #{rule.index + 1} {rule.principal} ipv{version}"
            rules.append(
                _rule(
                    "forward",
                    comment,
                    _match(_meta("iifname"), "@" + names["if"]),
                    _NOT_TO_C,
                    _match(_payload(proto, "daddr"), "@" + names[key]),
                    l4,
                    {"accept": None},
                )
            )
    rules += [
        _rule("forward", "nothing else leaves a container", _FROM_C, {"drop": None}),
        _rule("forward", "nothing else enters a container", _TO_C, {"drop": None}),
        _rule(
            "postrouting",
            "egress leaves with the host's address",
            _FROM_C,
            _NOT_TO_C,
            {"masquerade": None},
        ),
    ]
    return Ruleset(table, tuple(sets), chains, tuple(rules))


# --- rendering -------------------------------------------------------------


def render_element(s: SetDef, e: Element) -> JSON:
    """One element as libnftables JSON for set ``s``."""
    if isinstance(e, tuple):
        return {"concat": list(e)}
    if "interval" in s.flags:
        net = ipaddress.ip_network(e)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    if s.type == "inet_service":
        return int(e)
    return e


def _set_obj(table: str, s: SetDef) -> JSON:
    obj: dict[str, Any] = {
        "family": "inet",
        "table": table,
        "name": s.name,
        "type": list(s.type) if isinstance(s.type, tuple) else s.type,
    }
    if s.flags:
        obj["flags"] = list(s.flags)
    return obj


def render_commands(rs: Ruleset) -> list[JSON]:
    """libnftables JSON commands replacing table ``inet <rs.table>`` in one batch.

    ``add`` before ``delete`` makes the delete valid when the table is missing;
    both and the recreation run as one transaction, so the kernel never shows
    a moment without the table.
    """
    t = {"family": "inet", "name": rs.table}
    cmds: list[JSON] = [{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}]
    for s in rs.sets:
        cmds.append({"add": {"set": _set_obj(rs.table, s)}})
        if s.elements:
            cmds.append(
                {
                    "add": {
                        "element": {
                            "family": "inet",
                            "table": rs.table,
                            "name": s.name,
                            "elem": [
                                render_element(s, e) for e in sorted(s.elements, key=_element_key)
                            ],
                        }
                    }
                }
            )
    for c in rs.chains:
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": "inet",
                        "table": rs.table,
                        "name": c.name,
                        "type": c.type,
                        "hook": c.hook,
                        "prio": c.prio,
                        "policy": c.policy,
                    }
                }
            }
        )
    for r in rs.rules:
        cmds.append(
            {
                "add": {
                    "rule": {
                        "family": "inet",
                        "table": rs.table,
                        "chain": r.chain,
                        "expr": r.expr,
                        "comment": r.comment,
                    }
                }
            }
        )
    return cmds


# --- normalising a live listing -------------------------------------------


def _normalise_elem(raw: JSON, interval: bool) -> str:
    if isinstance(raw, dict) and "elem" in raw:  # element with options (timeout, ...)
        raw = raw["elem"]["val"]
    if isinstance(raw, dict) and "concat" in raw:
        return " . ".join(str(x) for x in raw["concat"])
    if isinstance(raw, dict) and "prefix" in raw:
        p = raw["prefix"]
        return str(ipaddress.ip_network(f"{p['addr']}/{p['len']}"))
    if isinstance(raw, dict) and "range" in raw:
        lo, hi = (ipaddress.ip_address(x) for x in raw["range"])
        nets = list(ipaddress.summarize_address_range(lo, hi))
        return ",".join(str(n) for n in nets)
    if interval:
        return str(ipaddress.ip_network(str(raw)))
    return str(raw)


def normalise_listing(listing: JSON) -> dict[str, Any] | None:
    """``nft -j list table`` output -> the shape of :meth:`Ruleset.normalised`.

    Handles, counters' values and metainfo are dropped; ``None`` if the
    listing holds no table.

    The table's own flags are part of every base chain's entry
    (``table_flags``): ``flags dormant`` unhooks every base chain of the
    table while sets, chains and rules list exactly as before, so a dormant
    table is the drift "every chain off", not something to compare apart.
    """
    items = listing.get("nftables", []) if isinstance(listing, dict) else []
    tables = [i["table"] for i in items if "table" in i]
    if not tables:
        return None
    table_flags = _flag_list(tables[0].get("flags", []))
    sets: dict[str, Any] = {}
    chains: dict[str, Any] = {}
    rules: dict[str, list[list[str]]] = {}
    for item in items:
        if "set" in item:
            s = item["set"]
            flags = sorted(s.get("flags", []))
            elems: list[str] = []
            for raw in s.get("elem", []):
                elems.extend(_normalise_elem(raw, "interval" in flags).split(","))
            sets[s["name"]] = {"type": s["type"], "flags": flags, "elements": sorted(elems)}
        elif "chain" in item:
            c = item["chain"]
            chains[c["name"]] = {
                "type": c.get("type"),
                "hook": c.get("hook"),
                "prio": c.get("prio"),
                "policy": c.get("policy"),
                "table_flags": table_flags,
            }
            rules.setdefault(c["name"], [])
        elif "rule" in item:
            r = item["rule"]
            expr = [_strip_counter(e) for e in r["expr"]]
            rules.setdefault(r["chain"], []).append(
                [json.dumps(expr, sort_keys=True), r.get("comment", "")]
            )
    return {"sets": sets, "chains": chains, "rules": rules}


def _flag_list(raw: JSON) -> list[str]:
    # libnftables prints one flag as a string, several as an array.
    return sorted([raw] if isinstance(raw, str) else [str(f) for f in raw or []])


def _strip_counter(e: JSON) -> JSON:
    if isinstance(e, dict) and "counter" in e:
        return {"counter": None}
    return e
