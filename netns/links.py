"""Namespaces, veth pairs, addresses and routes, through pyroute2 (netlink) only.

No ``ip`` subprocess anywhere. Per container: a named network namespace
(``<prefix><name>``), a veth pair whose host side is named predictably and
whose inside end is renamed ``eth0``, one /30 (IPv4) and one /126 (IPv6) with
the host side taking the first address and the container the second, a
default route via the host side, loopback up inside.

The only sysctls written are per-interface ones on our own host-side veths
(``net.ipv4.conf.<if>.forwarding``, ``net.ipv6.conf.<if>.force_forwarding``),
so the host's global forwarding settings are never changed. The uplink
interface(s) still need forwarding for replies to come back in production
(see docs/architecture.md, "Network layer API").
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from enforcer.errors import HiveError

__all__ = [
    "IFNAMSIZ",
    "LinkError",
    "LinkFacts",
    "Slot",
    "create_container_links",
    "host_ifname",
    "link_exists",
    "link_is_up",
    "link_problems",
    "list_namespaces",
    "namespace_exists",
    "read_link_facts",
    "remove_container_links",
    "repair_container_links",
    "set_link_up",
    "slot_addresses",
    "write_sysctl",
]

IFNAMSIZ = 15  # usable characters of an interface name
IFA_F_NODAD = 0x02  # no duplicate address detection: our /126 has exactly two ends
NETNS_DIR = Path("/var/run/netns")


class LinkError(HiveError):
    """A netlink operation failed."""

    status = 503
    code = "netns"


@dataclass(frozen=True, slots=True)
class Slot:
    """The addresses of slot ``index`` in the configured subnets."""

    index: int
    host_ipv4: ipaddress.IPv4Address
    ipv4: ipaddress.IPv4Address
    host_ipv6: ipaddress.IPv6Address
    ipv6: ipaddress.IPv6Address


def slot_addresses(v4: ipaddress.IPv4Network, v6: ipaddress.IPv6Network, index: int) -> Slot:
    """Pure: slot ``index`` is the ``index``-th /30 and /126 of the subnets."""
    if index < 0 or (index + 1) * 4 > v4.num_addresses or (index + 1) * 4 > v6.num_addresses:
        raise LinkError(f"address pool exhausted (slot {index} outside {v4} / {v6})")
    b4 = v4.network_address + 4 * index
    b6 = v6.network_address + 4 * index
    return Slot(index, b4 + 1, b4 + 2, b6 + 1, b6 + 2)


def host_ifname(name: str, ifprefix: str = "hv-") -> str:
    """Predictable host-side name: ``<ifprefix><name>``, or truncated + hash if too long.

    The hashed form joins the truncated name and the hash with ``_``, a
    character no agent name contains (``[a-z][a-z0-9-]*``): with ``-`` there,
    the hashed name of ``abcdefghijklm`` was the plain name of the valid
    agent ``abcde-2c47bd``, and two containers would share one interface
    (and one entry of ``cont_if``). Plain and hashed names never meet now.
    """
    full = ifprefix + name
    if len(full) <= IFNAMSIZ:
        return full
    digest = hashlib.blake2s(name.encode(), digest_size=3).hexdigest()
    return (full[: IFNAMSIZ - len(digest) - 1] + "_" + digest)[:IFNAMSIZ]


def write_sysctl(path: str, value: str) -> bool:
    """Write ``/proc/sys/<path>``; ``False`` if that knob does not exist on this kernel."""
    try:
        Path("/proc/sys", path).write_text(value)
    except FileNotFoundError:
        return False
    return True


def namespace_exists(ns: str) -> bool:
    """Whether the named namespace exists."""
    return ns in netns.listnetns()


def list_namespaces(prefix: str) -> list[str]:
    """Named namespaces starting with ``prefix``."""
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def link_exists(ifname: str) -> bool:
    """Whether a host link of that name exists."""
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def link_is_up(ifname: str) -> bool:
    """Whether the host link is administratively up."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return False
        link = ipr.link("get", index=idx[0])[0]
        return bool(link["flags"] & 1)


def create_container_links(ns: str, ifname: str, slot: Slot) -> None:
    """Create namespace, veth, addresses and routes; every link stays DOWN.

    The caller brings links up with :func:`set_link_up` once isolation is in
    place. On failure, whatever was created is removed before raising.
    """
    try:
        netns.create(ns)
    except OSError as e:
        raise LinkError(f"cannot create namespace {ns}: {e}") from e
    try:
        with IPRoute() as ipr:
            peer_tmp = ifname[: IFNAMSIZ - 2] + "-i"
            ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer_tmp, "net_ns_fd": ns})
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=idx, address=str(slot.host_ipv4), prefixlen=30)
            ipr.addr(
                "add", index=idx, address=str(slot.host_ipv6), prefixlen=126, flags=IFA_F_NODAD
            )
        with IPRoute(netns=ns, flags=0) as ipn:
            lo = ipn.link_lookup(ifname="lo")[0]
            ipn.link("set", index=lo, state="up")
            inner = ipn.link_lookup(ifname=peer_tmp)[0]
            ipn.link("set", index=inner, ifname="eth0")
            ipn.addr("add", index=inner, address=str(slot.ipv4), prefixlen=30)
            ipn.addr("add", index=inner, address=str(slot.ipv6), prefixlen=126, flags=IFA_F_NODAD)
            ipn.link("set", index=inner, state="up")  # no carrier until the host side is up
            ipn.route("add", dst="default", gateway=str(slot.host_ipv4))
            ipn.route("add", dst="default", gateway=str(slot.host_ipv6), family=10)
        # Forwarding for this interface only (its egress, if the policy allows any).
        write_sysctl(f"net/ipv4/conf/{ifname}/forwarding", "1")
        write_sysctl(f"net/ipv6/conf/{ifname}/force_forwarding", "1")
    except (NetlinkError, OSError, IndexError) as e:
        remove_container_links(ns, ifname)
        raise LinkError(f"cannot set up links of {ns}: {e}") from e


def set_link_up(ifname: str) -> None:
    """Bring the host side up: from here on traffic can flow."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LinkError(f"no link {ifname}")
        ipr.link("set", index=idx[0], state="up")


def remove_container_links(ns: str, ifname: str) -> None:
    """Remove the veth (both ends, with addresses and routes) and the namespace.

    Idempotent: what is already gone is skipped.
    """
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise LinkError(f"cannot delete {ifname}: {e}") from e
    if namespace_exists(ns):
        try:
            netns.remove(ns)
        except OSError as e:
            raise LinkError(f"cannot remove namespace {ns}: {e}") from e
    # A netns bind mount that lost its mount but kept its file would block re-creation.
    stale = NETNS_DIR / ns
    if stale.exists():
        os.unlink(stale)


# --- drift of a container's links: facts (netlink), problems (pure), repair ---

_IFF_UP = 0x1


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """What the kernel has of one container's links (read by :func:`read_link_facts`).

    Addresses are ``"addr/prefixlen"``; ``routes`` are the gateways of the
    default routes inside the namespace. ``paired`` says the namespace's
    ``eth0`` and the host-side veth are the two ends of one veth pair.
    """

    namespace: bool
    host_link: bool = False
    host_veth: bool = False
    host_up: bool = False
    host_addrs: frozenset[str] = frozenset()
    inner_link: bool = False
    paired: bool = False
    inner_up: bool = False
    inner_addrs: frozenset[str] = frozenset()
    lo_up: bool = False
    routes: frozenset[str] = frozenset()


def _addrs(ipr: Any, index: int) -> frozenset[str]:
    return frozenset(
        f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", index=index)
    )


def read_link_facts(ns: str, ifname: str) -> LinkFacts:
    """Read (never change) the namespace, both veth ends, addresses and routes."""
    host_idx, host_peer = 0, None
    facts: dict[str, Any] = {"namespace": namespace_exists(ns)}
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            link = ipr.link("get", index=idx[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            host_idx, host_peer = idx[0], link.get_attr("IFLA_LINK")
            facts.update(
                host_link=True,
                host_veth=info is not None and info.get_attr("IFLA_INFO_KIND") == "veth",
                host_up=bool(link["flags"] & _IFF_UP),
                host_addrs=_addrs(ipr, idx[0]),
            )
    if facts["namespace"]:
        try:
            with IPRoute(netns=ns, flags=0) as ipn:
                for link in ipn.link("dump"):
                    name = link.get_attr("IFLA_IFNAME")
                    if name == "lo":
                        facts["lo_up"] = bool(link["flags"] & _IFF_UP)
                    elif name == "eth0":
                        facts.update(
                            inner_link=True,
                            # Each end names the other's ifindex: a veth with our
                            # name whose peer lives elsewhere is not ours.
                            paired=bool(host_idx)
                            and link.get_attr("IFLA_LINK") == host_idx
                            and host_peer == link["index"],
                            inner_up=bool(link["flags"] & _IFF_UP),
                            inner_addrs=_addrs(ipn, link["index"]),
                        )
                facts["routes"] = frozenset(
                    str(r.get_attr("RTA_GATEWAY"))
                    for family in (2, 10)
                    for r in ipn.route("dump", family=family)
                    if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY")
                )
        except FileNotFoundError:
            facts["namespace"] = False  # removed while we looked
    return LinkFacts(**facts)


def link_problems(facts: LinkFacts, ifname: str, slot: Slot) -> list[str]:
    """Pure: every way ``facts`` differ from a healthy container on ``slot``."""
    out: list[str] = []
    if not facts.namespace:
        out.append("namespace missing")
    if not facts.host_link:
        out.append(f"host veth {ifname} missing")
    else:
        if not facts.host_veth:
            out.append(f"host link {ifname} is not a veth")
        if not facts.host_up:
            out.append(f"host veth {ifname} down")
        for want in (f"{slot.host_ipv4}/30", f"{slot.host_ipv6}/126"):
            if want not in facts.host_addrs:
                out.append(f"host veth {ifname} lacks address {want}")
    if not facts.namespace:
        return out
    if not facts.inner_link:
        out.append("eth0 missing inside the namespace")
    else:
        if facts.host_link and not facts.paired:
            out.append(f"eth0 inside is not the peer of {ifname}")
        if not facts.inner_up:
            out.append("eth0 inside down")
        for want in (f"{slot.ipv4}/30", f"{slot.ipv6}/126"):
            if want not in facts.inner_addrs:
                out.append(f"eth0 inside lacks address {want}")
    if not facts.lo_up:
        out.append("lo inside down")
    for gw in (str(slot.host_ipv4), str(slot.host_ipv6)):
        if gw not in facts.routes:
            out.append(f"default route via {gw} missing inside")
    return out


def repair_container_links(ns: str, ifname: str, slot: Slot) -> None:
    """Re-create whatever of a container's links is missing; the host side stays as it is.

    A namespace that is gone is created again; a veth pair that is gone, or
    whose ends are not each other's peer, is replaced (host side DOWN, like
    :func:`create_container_links`). Missing addresses and routes are added,
    inner links brought up. The caller brings a re-made host side up once the
    container's isolation is verified (fail closed).
    """
    facts = read_link_facts(ns, ifname)
    if not facts.namespace:
        # Whatever still carries our name belongs to a namespace we lost: drop it.
        remove_container_links(ns, ifname)
        create_container_links(ns, ifname, slot)
        return
    try:
        if not (facts.host_link and facts.inner_link and facts.paired and facts.host_veth):
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=ifname)
                if idx:
                    ipr.link("del", index=idx[0])
            with IPRoute(netns=ns, flags=0) as ipn:
                inner = ipn.link_lookup(ifname="eth0")
                if inner:
                    ipn.link("del", index=inner[0])
            peer_tmp = ifname[: IFNAMSIZ - 2] + "-i"
            with IPRoute() as ipr:
                ipr.link(
                    "add", ifname=ifname, kind="veth", peer={"ifname": peer_tmp, "net_ns_fd": ns}
                )
            with IPRoute(netns=ns, flags=0) as ipn:
                ipn.link("set", index=ipn.link_lookup(ifname=peer_tmp)[0], ifname="eth0")
            facts = read_link_facts(ns, ifname)
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            for addr, plen, flags in (
                (slot.host_ipv4, 30, 0),
                (slot.host_ipv6, 126, IFA_F_NODAD),
            ):
                if f"{addr}/{plen}" not in facts.host_addrs:
                    ipr.addr("add", index=idx, address=str(addr), prefixlen=plen, flags=flags)
        with IPRoute(netns=ns, flags=0) as ipn:
            ipn.link("set", index=ipn.link_lookup(ifname="lo")[0], state="up")
            inner = ipn.link_lookup(ifname="eth0")[0]
            for addr, plen, flags in ((slot.ipv4, 30, 0), (slot.ipv6, 126, IFA_F_NODAD)):
                if f"{addr}/{plen}" not in facts.inner_addrs:
                    ipn.addr("add", index=inner, address=str(addr), prefixlen=plen, flags=flags)
            ipn.link("set", index=inner, state="up")
            if str(slot.host_ipv4) not in facts.routes:
                ipn.route("replace", dst="default", gateway=str(slot.host_ipv4))
            if str(slot.host_ipv6) not in facts.routes:
                ipn.route("replace", dst="default", gateway=str(slot.host_ipv6), family=10)
        write_sysctl(f"net/ipv4/conf/{ifname}/forwarding", "1")
        write_sysctl(f"net/ipv6/conf/{ifname}/force_forwarding", "1")
    except (NetlinkError, OSError, IndexError) as e:
        raise LinkError(f"cannot repair links of {ns}: {e}") from e
