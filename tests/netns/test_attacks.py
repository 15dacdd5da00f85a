"""Attacks on the network boundary from inside a container, as root in its namespace.

Each test plays a hostile container: raw frames on its ``eth0`` (AF_PACKET),
spoofed sources (IP_TRANSPARENT), forged ICMP, router advertisements, ARP.
Every packet goes only to addresses this module created (our veths, our
dummy interface, our namespaces) or to loopback / link-scoped groups on our
own veth. A host-side UDP socket bound to the wildcard address on a random
port is the witness: any datagram it receives from a container is a hole.

One lab (manager, two containers, an "outside" namespace, a dummy host
interface, our own DNAT table) is shared by the module to keep it fast.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute

from netns import links
from netns.manager import ContainerNet, NetnsManager
from netns.probe import Prober, _in_netns
from tests.conftest import require_root
from tests.netns.helpers import Names, fresh_names, make_policy, managed, sweep

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
IP_TRANSPARENT, IPV6_TRANSPARENT = 19, 75
WAIT = 0.25  # how long a witness listens for a datagram that must not arrive


# --- packet crafting (pure) --------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    """An IPv4 packet with a valid header checksum."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        secrets.randbits(16),
        0x4000,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, hlim: int = 64) -> bytes:
    """An IPv6 packet."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), nh, hlim)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return (
            socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!IxxxB", length, proto)
        )
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", proto, length)


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """A UDP header and payload with a checksum over the pseudo-header."""
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = _csum(_pseudo(src, dst, 17, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp6(src: str, dst: str, typ: int, code: int, body: bytes) -> bytes:
    """An ICMPv6 message with its checksum."""
    msg = struct.pack("!BBH", typ, code, 0) + body
    c = _csum(_pseudo(src, dst, 58, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def icmp4(typ: int, code: int, body: bytes) -> bytes:
    """An ICMP message with its checksum."""
    msg = struct.pack("!BBH", typ, code, 0) + body
    return msg[:2] + struct.pack("!H", _csum(msg)) + msg[4:]


def udp_packet(src: str, dst: str, sport: int, dport: int, data: bytes, hop: int = 64) -> bytes:
    """A whole IPv4 or IPv6 UDP packet."""
    seg = udp(src, dst, sport, dport, data)
    return ipv6(src, dst, 17, seg, hop) if ":" in dst else ipv4(src, dst, 17, seg, hop)


def ether(dst_mac: bytes, src_mac: bytes, ethertype: int, payload: bytes) -> bytes:
    """An Ethernet frame."""
    return dst_mac + src_mac + struct.pack("!H", ethertype) + payload


# --- the lab ------------------------------------------------------------------


@dataclass
class Lab:
    """Our manager, containers and the host-side things they attack."""

    names: Names
    m: NetnsManager
    alpha: ContainerNet  # role agent: egress udp/53 and tcp/80 to the outside only
    beta: ContainerNet  # no egress
    prober: Prober
    out4: str
    out6: str
    dummy: str
    dummy4: str
    dummy6: str
    nat_table: str
    dnat_to_beta: int
    dnat_to_host: int

    def ns(self, c: ContainerNet) -> str:
        return self.m.prefix + c.name


def _mac(ns: str | None, ifname: str) -> bytes:
    with IPRoute(netns=ns, flags=0) if ns else IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return bytes.fromhex(
            str(ipr.link("get", index=idx)[0].get_attr("IFLA_ADDRESS")).replace(":", "")
        )


def _sysctl(path: str, value: str) -> None:
    assert links.write_sysctl(path, value), path


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    names = fresh_names()
    egress = (
        '[[egress]]\nprincipal = "role:agent"\nto = ["0.0.0.0/0", "::/0"]\n'
        'protocol = "udp"\nports = [53]\n\n'
        '[[egress]]\nprincipal = "role:agent"\nto = ["0.0.0.0/0", "::/0"]\nports = [80]\n'
    )
    dummy = f"{names.ifprefix}dm"
    nat_table = f"{names.table}n"
    a, b = int(names.token[:2], 16), int(names.token[2:4], 16)
    dummy4, dummy6 = f"198.19.{a}.{b}", f"2001:db8:ffff:{names.token[:4]}::1"
    try:
        with managed(names, make_policy(names, egress)) as m:
            alpha = m.up("alpha", ["agent"])
            beta = m.up("beta", [])
            prober = Prober(m, outside_v4=names.outside_v4, outside_v6=names.outside_v6)
            prober._outside_up()
            out4, out6 = prober.outside_addresses()
            with IPRoute() as ipr:
                # "Another host interface": a dummy link of ours with its own addresses.
                # (no `dummy` module on every kernel: a veth pair kept on the host)
                ipr.link("add", ifname=dummy, kind="veth", peer={"ifname": dummy + "p"})
                idx = ipr.link_lookup(ifname=dummy)[0]
                ipr.link("set", index=ipr.link_lookup(ifname=dummy + "p")[0], state="up")
                ipr.addr("add", index=idx, address=dummy4, prefixlen=32)
                ipr.addr("add", index=idx, address=dummy6, prefixlen=128, flags=links.IFA_F_NODAD)
                ipr.link("set", index=idx, state="up")
            # The host's loopback through alpha's veth: only on our own veth.
            _sysctl(f"net/ipv4/conf/{alpha.host_ifname}/route_localnet", "1")
            # Ports the host publishes by DNAT, in our own separate table.
            p_beta, p_host = 20000 + a, 21000 + b
            subprocess.run(
                ["nft", "-f", "-"],
                input=(
                    f"table ip {nat_table} {{\n chain pre {{\n"
                    "  type nat hook prerouting priority -100;\n"
                    f"  udp dport {p_beta} dnat to {beta.ipv4}:{p_beta}\n"
                    f"  udp dport {p_host} dnat to {dummy4}:{p_host}\n }}\n}}\n"
                ),
                text=True,
                check=True,
            )
            try:
                yield Lab(
                    names, m, alpha, beta, prober, out4, out6, dummy, dummy4, dummy6,
                    nat_table, p_beta, p_host,
                )  # fmt: skip
            finally:
                subprocess.run(["nft", "delete", "table", "ip", nat_table], check=False)
                prober._outside_down()
                with IPRoute() as ipr, suppress(Exception):
                    ipr.link("del", index=ipr.link_lookup(ifname=dummy)[0])
    finally:
        sweep(names)


# --- witnesses and senders ----------------------------------------------------


def _socket_in(ns: str | None, fam: int, typ: int, proto: int = 0) -> socket.socket:
    s: socket.socket = _in_netns(ns, lambda: socket.socket(fam, typ, proto))
    return s


class Witness:
    """UDP sockets on the wildcard addresses (host or a namespace) on one port."""

    def __init__(self, ns: str | None = None, port: int = 0) -> None:
        self.v4 = _socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.v4.bind(("0.0.0.0", port))
        self.port: int = self.v4.getsockname()[1]
        self.v6 = _socket_in(ns, socket.AF_INET6, socket.SOCK_DGRAM)
        self.v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.v6.bind(("::", self.port))
        for s in (self.v4, self.v6):
            s.setblocking(False)

    def got(self, wait: float = WAIT) -> list[bytes]:
        """Everything received within ``wait`` seconds."""
        out: list[bytes] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for s in (self.v4, self.v6):
                with suppress(BlockingIOError):
                    out.append(s.recv(2048))
            time.sleep(0.01)
        return out

    def close(self) -> None:
        self.v4.close()
        self.v6.close()


@pytest.fixture
def witness() -> Iterator[Witness]:
    w = Witness()
    try:
        yield w
    finally:
        w.close()


def send_frames(lab: Lab, c: ContainerNet, frames: list[tuple[int, bytes]]) -> None:
    """Raw frames out of the container's eth0 towards the host side of its veth.

    Each frame is ``(ethertype, L3 packet)``; sent a few times so that a
    first loss (a link still settling) cannot pass for "blocked".
    """
    ns = lab.ns(c)
    host_mac = _mac(None, c.host_ifname)
    src = _mac(ns, "eth0")
    s = _socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind(("eth0", 0))
        for _ in range(3):
            for etype, pkt in frames:
                s.send(ether(_dst_mac(lab, etype, pkt, host_mac), src, etype, pkt))
            time.sleep(0.02)
    finally:
        s.close()


def _dst_mac(lab: Lab, etype: int, pkt: bytes, host_mac: bytes) -> bytes:
    """The link-layer destination a real sender would use for this packet."""
    if etype == ETH_P_ARP:
        return b"\xff" * 6
    if etype == ETH_P_IPV6:
        return b"\x33\x33" + pkt[36:40] if pkt[24] == 0xFF else host_mac
    dst = ipaddress.IPv4Address(pkt[16:20])
    if dst.is_multicast:
        return b"\x01\x00\x5e" + bytes([pkt[17] & 0x7F]) + pkt[18:20]
    ours = ipaddress.ip_network(lab.names.ipv4)
    if dst == ipaddress.IPv4Address("255.255.255.255") or (dst in ours and int(dst) % 4 == 3):
        return b"\xff" * 6
    return host_mac


def _v4_bcast(c: ContainerNet) -> str:
    return str(ipaddress.ip_network(f"{c.ipv4}/30", strict=False).broadcast_address)


def _host_ll(c: ContainerNet) -> str:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=c.host_ifname)[0]
        for a in ipr.get_addr(index=idx, family=socket.AF_INET6):
            addr = str(a.get_attr("IFA_ADDRESS"))
            if addr.startswith("fe80"):
                return addr
    raise AssertionError("no link-local address on the host side")


def _ll_of(ns: str) -> str:
    with IPRoute(netns=ns, flags=0) as ipn:
        idx = ipn.link_lookup(ifname="eth0")[0]
        for a in ipn.get_addr(index=idx, family=socket.AF_INET6):
            addr = str(a.get_attr("IFA_ADDRESS"))
            if addr.startswith("fe80"):
                return addr
    raise AssertionError("no link-local address in the container")


def _wait_ll(lab: Lab) -> None:
    # Link-local addresses appear after DAD; wait for both ends of alpha's veth.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with suppress(AssertionError):
            _host_ll(lab.alpha)
            _ll_of(lab.ns(lab.alpha))
            return
        time.sleep(0.05)


# --- the host and its addresses ----------------------------------------------


def _host_targets(lab: Lab) -> dict[str, tuple[str, str, int]]:
    """label -> (source, destination, hop limit) of datagrams alpha must not get through."""
    a, b = lab.alpha, lab.beta
    subnet_anycast = str(ipaddress.ip_network(f"{a.ipv6}/126", strict=False).network_address)
    return {
        "own veth v4": (a.ipv4, a.host_ipv4, 64),
        "own veth v6": (a.ipv6, a.host_ipv6, 64),
        "own veth link-local": (_ll_of(lab.ns(a)), _host_ll(a), 64),
        "other container's host side v4": (a.ipv4, b.host_ipv4, 64),
        "other container's host side v6": (a.ipv6, b.host_ipv6, 64),
        "other host interface v4": (a.ipv4, lab.dummy4, 64),
        "other host interface v6": (a.ipv6, lab.dummy6, 64),
        "loopback via route_localnet": (a.ipv4, "127.0.0.1", 64),
        "loopback v6 via the veth": (a.ipv6, "::1", 64),
        "subnet broadcast": (a.ipv4, _v4_bcast(a), 64),
        "limited broadcast": (a.ipv4, "255.255.255.255", 64),
        "all-hosts multicast v4": (a.ipv4, "224.0.0.1", 1),
        "all-nodes multicast v6": (a.ipv6, "ff02::1", 255),
        "subnet-router anycast v6": (a.ipv6, subnet_anycast, 64),
        "spoofed: the other container's address": (b.ipv4, a.host_ipv4, 64),
        "spoofed v6: the other container's address": (b.ipv6, a.host_ipv6, 64),
        "spoofed: outside its /30": ("10.255.255.254", a.host_ipv4, 64),
        "spoofed: the host's own address": (a.host_ipv4, a.host_ipv4, 64),
    }


def test_no_datagram_from_a_container_reaches_any_host_address(lab: Lab, witness: Witness) -> None:
    _wait_ll(lab)
    targets = _host_targets(lab)
    frames = []
    for label, (src, dst, hop) in targets.items():
        pkt = udp_packet(src, dst, 40000, witness.port, label.encode(), hop)
        frames.append((ETH_P_IPV6 if ":" in dst else ETH_P_IP, pkt))
    send_frames(lab, lab.alpha, frames)
    assert sorted(set(witness.got())) == []


def test_udp_dressed_as_neighbour_discovery_does_not_reach_the_host(
    lab: Lab, witness: Witness
) -> None:
    # Source port 0x8700: the first byte of the L4 header reads 135 (neighbour
    # solicitation), hop limit 255 - the input chain's ND exception must not apply.
    pkt = udp_packet(lab.alpha.ipv6, lab.alpha.host_ipv6, 0x8700, witness.port, b"nd?", 255)
    send_frames(lab, lab.alpha, [(ETH_P_IPV6, pkt)])
    assert sorted(set(witness.got())) == []


def test_ipv6_extension_headers_and_fragments_do_not_reach_the_host(
    lab: Lab, witness: Witness
) -> None:
    a = lab.alpha
    seg = udp(a.ipv6, a.host_ipv6, 40001, witness.port, b"x" * 64)
    hop_by_hop = struct.pack("!BB6s", 17, 0, b"\x01\x04\0\0\0\0")  # PadN
    frag_id = secrets.randbits(32)
    first = struct.pack("!BxHI", 17, 1, frag_id) + seg[:40]  # offset 0, more fragments
    second = struct.pack("!BxHI", 17, 40, frag_id) + seg[40:]  # offset 40 bytes
    v4seg = udp(a.ipv4, a.host_ipv4, 40002, witness.port, b"y" * 64)
    send_frames(
        lab,
        a,
        [
            (ETH_P_IPV6, ipv6(a.ipv6, a.host_ipv6, 0, hop_by_hop + seg)),
            (ETH_P_IPV6, ipv6(a.ipv6, a.host_ipv6, 44, first)),
            (ETH_P_IPV6, ipv6(a.ipv6, a.host_ipv6, 44, second)),
            # IPv4 fragments: 40 bytes with MF, then the rest at offset 5 (x8 bytes).
            (ETH_P_IP, _v4frag(a.ipv4, a.host_ipv4, v4seg[:40], 0, True)),
            (ETH_P_IP, _v4frag(a.ipv4, a.host_ipv4, v4seg[40:], 5, False)),
        ],
    )
    assert sorted(set(witness.got())) == []


def _v4frag(src: str, dst: str, data: bytes, off8: int, more: bool) -> bytes:
    pkt = bytearray(ipv4(src, dst, 17, data))
    struct.pack_into("!HH", pkt, 4, 0x4242, (0x2000 if more else 0) | off8)
    struct.pack_into("!H", pkt, 10, 0)
    struct.pack_into("!H", pkt, 10, _csum(bytes(pkt[:20])))
    return bytes(pkt)


def test_tcp_to_other_host_interfaces_and_the_link_local_is_refused(lab: Lab) -> None:
    _wait_ll(lab)
    listeners: list[tuple[str, int]] = []
    listeners_socks: list[socket.socket] = []
    try:
        for addr in (lab.dummy4, lab.dummy6, _host_ll(lab.alpha)):
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND: the address may be settling
            scope = (0, socket.if_nametoindex(lab.alpha.host_ifname)) if "fe80" in addr else ()
            s.bind((addr, 0, *scope) if fam == socket.AF_INET6 else (addr, 0))
            s.listen()
            listeners.append((addr, s.getsockname()[1]))
            listeners_socks.append(s)
        for addr, port in listeners:

            def connect(addr: str = addr, port: int = port) -> int:
                fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
                with socket.socket(fam, socket.SOCK_STREAM) as c:
                    c.settimeout(0.5)
                    dest: tuple[Any, ...] = (addr, port)
                    if addr.startswith("fe80"):
                        dest = (addr, port, 0, socket.if_nametoindex("eth0"))
                    return c.connect_ex(dest)

            rc = _in_netns(lab.ns(lab.alpha), connect)
            assert rc != 0, f"alpha reached the host at [{addr}]:{port}"
    finally:
        for s in listeners_socks:
            s.close()


# --- replies: the conntrack exception must belong to the sender ---------------


def _host_flow_to(c: ContainerNet, lab: Lab, v6: bool) -> tuple[socket.socket, socket.socket]:
    """The host talks UDP to ``c`` (which listens, silently): a flow in conntrack."""
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    addr, host_addr = (c.ipv6, c.host_ipv6) if v6 else (c.ipv4, c.host_ipv4)
    peer = _socket_in(lab.ns(c), fam, socket.SOCK_DGRAM)
    peer.bind((addr, 5353))
    h = socket.socket(fam, socket.SOCK_DGRAM)
    h.bind((host_addr, 0))
    h.connect((addr, 5353))
    h.send(b"query")
    # Wait until the flow is in conntrack (the query arrived, neighbours resolved).
    peer.settimeout(2.0)
    peer.recv(100)
    return h, peer


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_container_cannot_answer_in_another_containers_name(lab: Lab, v6: bool) -> None:
    # The host has a flow with beta; alpha, root in its namespace, forges beta's
    # reply (beta's address and port). The input chain accepted "established"
    # from any container, so the host's socket believed it.
    h, peer = _host_flow_to(lab.beta, lab, v6)
    try:
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        src = lab.beta.ipv6 if v6 else lab.beta.ipv4
        s = _socket_in(lab.ns(lab.alpha), fam, socket.SOCK_DGRAM)
        with s:
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            s.bind((src, 5353))
            h.setblocking(False)
            got: list[bytes] = []
            for _ in range(8):
                s.sendto(b"forged reply", h.getsockname()[:2])
                time.sleep(0.03)
                with suppress(BlockingIOError):
                    got.append(h.recv(100))
            assert got == []
    finally:
        h.close()
        peer.close()


def test_a_container_cannot_forge_icmp_errors_for_the_hosts_other_flows(lab: Lab) -> None:
    # "Port unreachable" from alpha (its own address) quoting the host's flow to
    # beta: conntrack calls it "related", and a connected UDP socket would fail
    # with ECONNREFUSED - a container could break the host's other conversations.
    h, peer = _host_flow_to(lab.beta, lab, False)
    try:
        hs = h.getsockname()
        inner = ipv4(
            lab.beta.host_ipv4, lab.beta.ipv4, 17, udp(hs[0], lab.beta.ipv4, hs[1], 5353, b"query")
        )
        err = ipv4(lab.alpha.ipv4, lab.beta.host_ipv4, 1, icmp4(3, 3, b"\0\0\0\0" + inner[:28]))
        h.setblocking(False)
        send_frames(lab, lab.alpha, [(ETH_P_IP, err)])
        time.sleep(0.1)
        rc = h.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert rc != errno.ECONNREFUSED
    finally:
        h.close()
        peer.close()


def test_replies_to_connections_the_host_opened_still_work(lab: Lab) -> None:
    for v6 in (False, True):
        h, peer = _host_flow_to(lab.alpha, lab, v6)
        try:
            h.settimeout(1.0)
            peer.sendto(b"answer", h.getsockname()[:2])
            assert h.recv(100) == b"answer"
        finally:
            h.close()
            peer.close()


# --- other containers ---------------------------------------------------------


def test_no_datagram_reaches_another_container_by_any_path(lab: Lab) -> None:
    _wait_ll(lab)
    w = Witness(lab.ns(lab.beta))
    try:
        a, b = lab.alpha, lab.beta
        beta_ll = _ll_of(lab.ns(b))
        frames = [
            (ETH_P_IP, udp_packet(a.ipv4, b.ipv4, 40003, w.port, b"direct v4")),
            (ETH_P_IPV6, udp_packet(a.ipv6, b.ipv6, 40003, w.port, b"direct v6")),
            (ETH_P_IPV6, udp_packet(a.ipv6, beta_ll, 40003, w.port, b"beta's link-local")),
            (ETH_P_IPV6, udp_packet(a.ipv6, "ff02::1", 40003, w.port, b"all-nodes", 255)),
            (ETH_P_IPV6, udp_packet(a.ipv6, "ff05::1:3", 40003, w.port, b"site mcast", 255)),
            (ETH_P_IP, udp_packet(a.ipv4, "224.0.0.1", 40003, w.port, b"all-hosts", 1)),
            (ETH_P_IP, udp_packet(a.ipv4, _v4_bcast(b), 40003, w.port, b"beta's broadcast")),
            # Through the host as a router, with the source of the host or the outside.
            (ETH_P_IP, udp_packet(a.host_ipv4, b.ipv4, 40003, w.port, b"as host")),
            (ETH_P_IP, udp_packet(lab.out4, b.ipv4, 40003, w.port, b"as outside")),
            (ETH_P_IPV6, udp_packet(lab.out6, b.ipv6, 40003, w.port, b"as outside v6")),
        ]
        send_frames(lab, a, frames)
        assert sorted(set(w.got())) == []
    finally:
        w.close()


def test_ports_published_by_dnat_are_not_reachable(lab: Lab) -> None:
    wb = Witness(lab.ns(lab.beta), port=lab.dnat_to_beta)
    wh = Witness(None, port=lab.dnat_to_host)
    try:
        a = lab.alpha
        frames = [
            (ETH_P_IP, udp_packet(a.ipv4, a.host_ipv4, 40004, lab.dnat_to_beta, b"dnat->beta")),
            (ETH_P_IP, udp_packet(a.ipv4, a.host_ipv4, 40004, lab.dnat_to_host, b"dnat->host")),
        ]
        send_frames(lab, a, frames)
        assert sorted(set(wb.got())) == []
        assert sorted(set(wh.got(0.05))) == []
    finally:
        wb.close()
        wh.close()


# --- egress -------------------------------------------------------------------


def test_egress_is_exactly_what_the_policy_grants(lab: Lab) -> None:
    w = Witness(lab.prober.out_ns, port=53)
    w80 = Witness(lab.prober.out_ns, port=80)
    try:

        def send(c: ContainerNet, dst: str, port: int, src: str | None = None) -> None:
            fam = socket.AF_INET6 if ":" in dst else socket.AF_INET

            def go() -> None:
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    if src is not None:
                        s.setsockopt(
                            *(
                                (socket.IPPROTO_IPV6, IPV6_TRANSPARENT)
                                if fam == socket.AF_INET6
                                else (socket.SOL_IP, IP_TRANSPARENT)
                            ),
                            1,
                        )
                        s.bind((src, 0))
                    s.sendto(f"{c.name}>{port}>{src}".encode(), (dst, port))

            _in_netns(lab.ns(c), go)

        # Positive control: alpha's udp/53 grant works (masqueraded).
        for dst in (lab.out4, lab.out6):
            send(lab.alpha, dst, 53)
        assert len(w.got(0.5)) == 2
        # Not granted: beta at all; udp to the tcp-only port; spoofed sources.
        for dst in (lab.out4, lab.out6):
            send(lab.beta, dst, 53)
            send(lab.alpha, dst, 80)
        send(lab.alpha, lab.out4, 53, src=lab.beta.ipv4)
        send(lab.alpha, lab.out4, 53, src="10.255.255.254")
        send(lab.alpha, lab.out6, 53, src=lab.beta.ipv6)
        assert sorted(set(w.got())) == []
        assert sorted(set(w80.got(0.05))) == []
    finally:
        w.close()
        w80.close()


def test_an_any_address_grant_does_not_reach_a_link_local_metadata_service(lab: Lab) -> None:
    # alpha may send udp/53 to 0.0.0.0/0. A "metadata service" on a link-local
    # address beyond the host (added to our own outside namespace, routed by a
    # /32 on our own veth) is the host's link, not the outside world.
    a = 1 + int(lab.names.token[:2], 16) % 160  # never 169.254.169.x, the real one
    metadata = f"169.254.{a}.{1 + int(lab.names.token[2:4], 16) % 250}"
    with IPRoute(netns=lab.prober.out_ns, flags=0) as ipn:
        inner = ipn.link_lookup(ifname=lab.prober.out_if[:13] + "-i")[0]
        ipn.addr("add", index=inner, address=metadata, prefixlen=32)
    with IPRoute() as ipr:
        ipr.route("add", dst=f"{metadata}/32", oif=ipr.link_lookup(ifname=lab.prober.out_if)[0])
    w = Witness(lab.prober.out_ns, port=53)
    try:

        def send(dst: str) -> None:
            def go() -> None:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"alpha>53", (dst, 53))

            _in_netns(lab.ns(lab.alpha), go)

        send(lab.out4)  # positive control: the grant works for the outside world
        assert len(w.got(0.5)) == 1
        send(metadata)
        assert w.got() == []
    finally:
        w.close()
        with IPRoute() as ipr, suppress(Exception):
            ipr.route("del", dst=f"{metadata}/32", oif=ipr.link_lookup(ifname=lab.prober.out_if)[0])


def test_icmp_echo_to_the_outside_is_not_granted_by_a_port_grant(lab: Lab) -> None:
    def ping() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.settimeout(0.3)
            s.sendto(icmp4(8, 0, b"\x12\x34\x00\x01ping"), (lab.out4, 0))
            try:
                while True:
                    data = s.recv(200)
                    if data[20] == 0:
                        return True
            except TimeoutError:
                return False

    assert not _in_netns(lab.ns(lab.alpha), ping)


# --- routing and neighbour poisoning -------------------------------------------


def _routes_and_neighbours() -> tuple[set[str], set[str]]:
    out = subprocess.run(
        ["ip", "-6", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    out4 = subprocess.run(
        ["ip", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    neigh = subprocess.run(["ip", "neigh", "show"], capture_output=True, text=True).stdout
    return set((out + out4).splitlines()), set(neigh.splitlines())


def test_router_advertisements_redirects_and_arp_do_not_poison_the_host(lab: Lab) -> None:
    _wait_ll(lab)
    a, b = lab.alpha, lab.beta
    ll = _ll_of(lab.ns(a))
    src_mac = _mac(lab.ns(a), "eth0")
    routes_before, _ = _routes_and_neighbours()
    # RA: default router, a prefix and a route to the outside via alpha.
    pio = struct.pack(
        "!BBBBIII16s",
        3,
        4,
        64,
        0xC0,
        3600,
        3600,
        0,
        socket.inet_pton(socket.AF_INET6, "2001:db8:bad::"),
    )
    out_net = ipaddress.ip_network(lab.names.outside_v6)
    rio = struct.pack(
        "!BBBBI16s", 24, 3, out_net.prefixlen, 0x08, 3600, out_net.network_address.packed
    )
    sll = struct.pack("!BB6s", 1, 1, src_mac)
    ra = icmp6(ll, "ff02::1", 134, 0, struct.pack("!BBHII", 64, 0, 1800, 0, 0) + sll + pio + rio)
    # Redirect: "to reach beta, use alpha" (v6 and v4).
    rd6 = icmp6(
        ll,
        _host_ll(a),
        137,
        0,
        b"\0" * 4
        + socket.inet_pton(socket.AF_INET6, ll)
        + socket.inet_pton(socket.AF_INET6, b.ipv6),
    )
    quoted = ipv4(a.host_ipv4, b.ipv4, 17, udp(a.host_ipv4, b.ipv4, 1, 2, b""))
    rd4 = icmp4(5, 1, socket.inet_aton(a.ipv4) + quoted[:28])
    # ARP: "beta's address and beta's host side are at alpha's MAC".
    arps = [
        struct.pack(
            "!HHBBH6s4s6s4s",
            1,
            ETH_P_IP,
            6,
            4,
            2,
            src_mac,
            socket.inet_aton(ip),
            b"\xff" * 6,
            socket.inet_aton(ip),
        )
        for ip in (b.ipv4, b.host_ipv4, a.host_ipv4)
    ]
    send_frames(
        lab,
        a,
        [
            (ETH_P_IPV6, ipv6(ll, "ff02::1", 58, ra, 255)),
            (ETH_P_IPV6, ipv6(ll, _host_ll(a), 58, rd6, 255)),
            (ETH_P_IP, ipv4(a.ipv4, a.host_ipv4, 1, rd4)),
            *((ETH_P_ARP, p) for p in arps),
        ],
    )
    time.sleep(0.1)
    routes_after, neigh = _routes_and_neighbours()
    assert routes_after - routes_before == set()
    alpha_mac = ":".join(f"{x:02x}" for x in src_mac)
    assert not any(alpha_mac in n and (b.ipv4 in n or b.host_ipv4 in n) for n in neigh)
    for dst, dev in ((b.ipv4, b.host_ifname), (b.ipv6, b.host_ifname)):
        got = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True).stdout
        assert f"dev {dev}" in got, got


# --- fail closed ----------------------------------------------------------------


def test_an_interface_is_never_up_without_its_isolation(lab: Lab) -> None:
    # Race a bring-up: whenever the new host-side veth is up, its elements are live.
    m = lab.m
    ifname = links.host_ifname("gamma", m.ifprefix)
    seen_up_unisolated: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if links.link_is_up(ifname):
                live = m.nft.live()
                cont_if = set(live["sets"]["cont_if"]["elements"]) if live else set()
                if ifname not in cont_if:
                    seen_up_unisolated.append("up without isolation")

    t = threading.Thread(target=watch)
    t.start()
    try:
        m.up("gamma", [])
    finally:
        stop.set()
        t.join()
        m.down("gamma")
    assert seen_up_unisolated == []


def test_a_stale_second_manager_cannot_strip_a_running_containers_isolation(lab: Lab) -> None:
    # Another process (the CLI's `netns reconcile`) loaded the inventory before
    # gamma came up; its reconcile must not leave gamma up without isolation.
    m = lab.m
    stale = NetnsManager(m.policy, m.table, m.prefix, ifprefix=m.ifprefix, state_path=m.state_path)
    g = m.up("gamma", [])
    try:
        stale.reconcile()
        live = m.nft.live()
        assert live is not None
        assert g.host_ifname in live["sets"]["cont_if"]["elements"] or not links.link_is_up(
            g.host_ifname
        )
    finally:
        m.down("gamma")
        m.reconcile()


def test_drift_detection_sees_foreign_rules_policy_changes_and_unknown_elements(lab: Lab) -> None:
    m, t = lab.m, lab.m.table
    assert m.drift().in_sync

    def nft(cmd: str) -> None:
        subprocess.run(["nft", cmd], check=True)

    try:
        nft(f"insert rule inet {t} input iifname @cont_if accept")
        d = m.drift()
        assert d.changed_rules["input"]["extra"], d.lines()
        m.reconcile()
        nft(f"add rule inet {t} forward udp dport 9 accept")
        assert m.drift().changed_rules["forward"]["extra"]
        m.reconcile()
        nft(f"chain inet {t} input {{ policy drop ; }}")
        assert m.drift().changed_chains == ("input",)
        m.reconcile()
        nft(f"add element inet {t} eg0_if {{ {m.ifprefix}zz }}")
        assert m.drift().extra_elements == {"eg0_if": [f"{m.ifprefix}zz"]}
        nft(f"add chain inet {t} sneaky {{ type filter hook prerouting priority -300 ; }}")
        assert "sneaky" in m.drift().changed_chains
        assert m.reconcile().repaired
    finally:
        m.reconcile()
    assert m.drift().in_sync


def test_revoking_an_egress_grant_stops_flows_already_open(lab: Lab) -> None:
    m = lab.m
    server = _socket_in(lab.prober.out_ns, socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((lab.out4, 53))
    server.settimeout(1.0)
    client = _socket_in(lab.ns(lab.alpha), socket.AF_INET, socket.SOCK_DGRAM)
    client.connect((lab.out4, 53))
    old = m.policy
    try:
        client.send(b"granted")
        _, frm = server.recvfrom(100)
        server.sendto(b"answer", frm)  # the flow is now established
        client.settimeout(1.0)
        assert client.recv(100) == b"answer"
        m.reload_policy(make_policy(lab.names))  # no egress at all
        client.send(b"after revocation")
        server.settimeout(WAIT)
        with pytest.raises(TimeoutError):
            server.recvfrom(100)
    finally:
        m.reload_policy(old)
        client.close()
        server.close()
