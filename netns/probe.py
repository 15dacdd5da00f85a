"""The connectivity probe and the truth table it is compared with.

Like Kubernetes' network-policy conformance tests: every source (each
container, and the host itself) tries a TCP connection to every target, and
the observed matrix is compared with the one the policy implies.

Targets:

- ``host:*`` - listeners the probe starts on every host address it knows:
  127.0.0.1 and ::1, the host side of every container's veth, the host side
  of the probe's own "outside" link, plus any gateway/core addresses given;
- ``ui:<name>`` - a listener the probe starts on each container's UI port
  inside that container's namespace (unless the agent listens there already);
- ``outside:*`` - listeners in a namespace the probe creates to stand for the
  internet, reached through the host (routed, masqueraded) on a few ports.

Only the host may reach a container's UI (the gateway needs that); a
container reaches ``outside`` exactly where an egress entry allows it, and
nothing else. Note that 127.0.0.1 inside a container is the container's own
loopback; the host's loopback reached through the veth (``route_localnet``)
is covered by the table's input rule, which drops everything from a
container interface.

Pure part: :func:`expected` / :func:`truth_table`. I/O part: :class:`Prober`
(sockets are created inside a namespace by a short-lived thread that calls
``setns``; a socket keeps its namespace, so connects then run from here).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from enforcer.errors import BadRequest
from netns import links
from netns.manager import NetnsManager
from netns.policy import NetworkPolicy
from netns.ruleset import ContainerEntry

__all__ = [
    "ProbeCell",
    "ProbeResult",
    "Prober",
    "Target",
    "expected",
    "truth_table",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HOST = "host"


@dataclass(frozen=True, slots=True)
class Target:
    """A TCP endpoint: ``kind`` is ``host``, ``ui`` or ``outside``."""

    label: str
    kind: str
    address: str
    port: int
    owner: str = ""  # the container a ``ui`` target belongs to


def expected(policy: NetworkPolicy, source: ContainerEntry | None, target: Target) -> bool:
    """Pure: may ``source`` (``None`` = the host) open a TCP connection to ``target``?"""
    if source is None:
        # The host reaches each container's UI (replies are allowed); the rest
        # of the host's own traffic is not this layer's business.
        return target.kind == "ui"
    if target.kind != "outside":
        return False  # host addresses and other containers: never grantable
    addr = ipaddress.ip_address(target.address)
    for rule in policy.egress:
        if rule.principal not in source.subjects or rule.protocol != "tcp":
            continue
        if rule.ports and target.port not in rule.ports:
            continue
        if any(addr.version == n.version and addr in n for n in rule.to):
            return True
    return False


def truth_table(
    policy: NetworkPolicy, inventory: Sequence[ContainerEntry], targets: Sequence[Target]
) -> dict[tuple[str, str], bool]:
    """Pure: the expected matrix, keyed by (source name or ``host``, target label)."""
    out: dict[tuple[str, str], bool] = {}
    for t in targets:
        if t.kind == "ui":
            out[(HOST, t.label)] = True
    for c in inventory:
        for t in targets:
            if t.kind == "ui" and t.owner == c.name:
                continue  # a container's own UI is its own business
            out[(c.name, t.label)] = expected(policy, c, t)
    return out


@dataclass(frozen=True, slots=True)
class ProbeCell:
    """One observation."""

    source: str
    target: str
    address: str
    port: int
    expected: bool
    outcome: str  # open, refused, timeout, unreachable, error:<errno>

    @property
    def reached(self) -> bool:
        """A TCP handshake completed."""
        return self.outcome == "open"

    @property
    def ok(self) -> bool:
        """Observation equals expectation."""
        return self.reached == self.expected


@dataclass(slots=True)
class ProbeResult:
    """The observed matrix next to the expected one."""

    cells: list[ProbeCell] = field(default_factory=list)

    @property
    def mismatches(self) -> list[ProbeCell]:
        """Cells where the network disagrees with the policy."""
        return [c for c in self.cells if not c.ok]

    @property
    def ok(self) -> bool:
        """Every cell matches."""
        return not self.mismatches

    def observed(self) -> dict[tuple[str, str], bool]:
        """The observed matrix in the shape of :func:`truth_table`."""
        return {(c.source, c.target): c.reached for c in self.cells}

    def table(self) -> str:
        """A readable matrix: rows are sources, one line per cell."""
        w = max([len(c.target) for c in self.cells] + [6])
        lines = [f"{'source':<12} {'target':<{w}} {'address':<28} expect  observed"]
        for c in sorted(self.cells, key=lambda c: (c.source, c.target)):
            mark = "" if c.ok else "   <-- MISMATCH"
            lines.append(
                f"{c.source:<12} {c.target:<{w}} {f'[{c.address}]:{c.port}':<28} "
                f"{'allow' if c.expected else 'deny':<7} {c.outcome}{mark}"
            )
        n_bad = len(self.mismatches)
        lines.append(f"{len(self.cells)} cells, {n_bad} mismatch(es)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "ok": self.ok,
            "cells": [asdict(c) | {"reached": c.reached, "ok": c.ok} for c in self.cells],
            "mismatches": len(self.mismatches),
        }


# --- I/O ---------------------------------------------------------------------


def _in_netns(ns: str | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread that has entered namespace ``ns``.

    ``setns`` changes only the calling thread, and the thread ends right
    after, so no other thread ever runs inside the container's namespace.
    """
    if ns is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            netns.setns(ns, flags=0)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name=f"setns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class _Listeners:
    """Accept-and-close TCP listeners, served by one thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="probe-listeners", daemon=True)

    def listen(self, ns: str | None, addr: str, port: int = 0) -> int | None:
        """Listen on ``addr:port`` in ``ns``; the port, or ``None`` if already taken."""

        def make() -> socket.socket:
            s = socket.socket(_family(addr), socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ":" in addr:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Our /126 addresses are NODAD, but a just-created link may still be settling.
            s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
            s.bind((addr, port))
            s.listen(64)
            s.setblocking(False)
            return s

        try:
            s = _in_netns(ns, make)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return None
            raise
        self._socks.append(s)
        self._sel.register(s, selectors.EVENT_READ)
        bound: int = s.getsockname()[1]
        return bound

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    conn, _ = sock.accept()
                    conn.close()
                except (BlockingIOError, OSError):
                    pass

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for s in self._socks:
            self._sel.unregister(s)
            s.close()
        self._sel.close()


def _connect_all(jobs: Sequence[tuple[str | None, str, int]], timeout: float) -> list[str]:
    """Non-blocking connects, all at once; each socket created in its source namespace."""
    by_ns: dict[str | None, list[int]] = {}
    for i, (ns, _, _) in enumerate(jobs):
        by_ns.setdefault(ns, []).append(i)
    socks: dict[int, socket.socket] = {}
    for ns, idxs in by_ns.items():
        fams = [_family(jobs[i][1]) for i in idxs]

        def make(fams: list[int] = fams) -> list[socket.socket]:
            return [socket.socket(f, socket.SOCK_STREAM) for f in fams]

        made = _in_netns(ns, make)
        socks.update(zip(idxs, made, strict=True))
    outcome: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    try:
        for i, s in socks.items():
            s.setblocking(False)
            rc = s.connect_ex((jobs[i][1], jobs[i][2]))
            if rc in (0,):
                outcome[i] = "open"
            elif rc in (errno.EINPROGRESS, errno.EAGAIN):
                sel.register(s, selectors.EVENT_WRITE, i)
            else:
                outcome[i] = _classify(rc)
        deadline = time.monotonic() + timeout
        while len(outcome) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                i = key.data
                s = socks[i]
                rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                outcome[i] = "open" if rc == 0 else _classify(rc)
                sel.unregister(s)
    finally:
        sel.close()
        for s in socks.values():
            s.close()
    return [outcome.get(i, "timeout") for i in range(len(jobs))]


def _classify(rc: int) -> str:
    if rc == errno.ECONNREFUSED:
        return "refused"
    if rc in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return "unreachable"
    return f"error:{errno.errorcode.get(rc, rc)}"


class Prober:
    """Probe every (source, target) pair of a manager's containers."""

    def __init__(
        self,
        manager: NetnsManager,
        *,
        outside_v4: str = "198.18.0.0/30",
        outside_v6: str = "2001:db8:4869::/126",
        outside_ports: Iterable[int] = (80, 443, 8081),
        extra_targets: Iterable[tuple[str, str, int]] = (),
        timeout: float = 0.4,
        retries: int = 2,
    ) -> None:
        self.m = manager
        self.out4 = ipaddress.IPv4Network(outside_v4)
        self.out6 = ipaddress.IPv6Network(outside_v6)
        self.outside_ports = tuple(outside_ports)
        self.extra = tuple(extra_targets)
        self.timeout = timeout
        self.retries = retries
        token = secrets.token_hex(2)
        # A digit after the prefix: can never be a container's namespace name.
        self.out_ns = f"{manager.prefix}0out{token}"
        self.out_if = f"{manager.ifprefix}0o{token}"[: links.IFNAMSIZ]

    def outside_addresses(self) -> tuple[str, str]:
        """The addresses standing for "the internet"."""
        return str(self.out4.network_address + 2), str(self.out6.network_address + 2)

    def targets(self) -> list[Target]:
        """Every target of this run (addresses created by this code or loopback)."""
        ts = [
            Target("host:lo4", "host", "127.0.0.1", 0),
            Target("host:lo6", "host", "::1", 0),
            Target("host:outlink4", "host", str(self.out4.network_address + 1), 0),
            Target("host:outlink6", "host", str(self.out6.network_address + 1), 0),
        ]
        for c in (self.m.container(n) for n in self.m.names()):
            ts += [
                Target(f"host:{c.name}-veth4", "host", c.host_ipv4, 0),
                Target(f"host:{c.name}-veth6", "host", c.host_ipv6, 0),
                Target(f"ui:{c.name}4", "ui", c.ipv4, self.m.policy.agent_ui_port, c.name),
                Target(f"ui:{c.name}6", "ui", c.ipv6, self.m.policy.agent_ui_port, c.name),
            ]
        o4, o6 = self.outside_addresses()
        for p in self.outside_ports:
            ts += [
                Target(f"outside4:{p}", "outside", o4, p),
                Target(f"outside6:{p}", "outside", o6, p),
            ]
        for label, addr, port in self.extra:
            ts.append(Target(f"host:{label}", "host", addr, port))
        self._check_ours(ts)
        return ts

    def _check_ours(self, targets: Sequence[Target]) -> None:
        # Never send a packet anywhere this code did not create (or loopback).
        allowed: set[IPAddress] = {
            self.out4.network_address + 1,
            self.out4.network_address + 2,
            self.out6.network_address + 1,
            self.out6.network_address + 2,
        }
        for c in (self.m.container(n) for n in self.m.names()):
            allowed |= {ipaddress.ip_address(a) for a in (c.ipv4, c.ipv6, c.host_ipv4, c.host_ipv6)}
        for t in targets:
            a = ipaddress.ip_address(t.address)
            if not (a.is_loopback or a in allowed):
                raise BadRequest(f"probe target {t.label} {a} is not an address this probe created")

    # --- the outside namespace ---------------------------------------------

    def _outside_up(self) -> None:
        netns.create(self.out_ns)
        peer = self.out_if[:13] + "-i"
        with IPRoute() as ipr:
            ipr.link(
                "add",
                ifname=self.out_if,
                kind="veth",
                peer={"ifname": peer, "net_ns_fd": self.out_ns},
            )
            idx = ipr.link_lookup(ifname=self.out_if)[0]
            ipr.addr("add", index=idx, address=str(self.out4.network_address + 1), prefixlen=30)
            ipr.addr(
                "add",
                index=idx,
                address=str(self.out6.network_address + 1),
                prefixlen=self.out6.prefixlen,
                flags=links.IFA_F_NODAD,
            )
        # Replies from "outside" come in here: forwarding on this interface only.
        links.write_sysctl(f"net/ipv4/conf/{self.out_if}/forwarding", "1")
        links.write_sysctl(f"net/ipv6/conf/{self.out_if}/force_forwarding", "1")
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=self.out_if)[0], state="up")
        with IPRoute(netns=self.out_ns, flags=0) as ipn:
            ipn.link("set", index=ipn.link_lookup(ifname="lo")[0], state="up")
            inner = ipn.link_lookup(ifname=peer)[0]
            ipn.addr("add", index=inner, address=str(self.out4.network_address + 2), prefixlen=30)
            ipn.addr(
                "add",
                index=inner,
                address=str(self.out6.network_address + 2),
                prefixlen=self.out6.prefixlen,
                flags=links.IFA_F_NODAD,
            )
            ipn.link("set", index=inner, state="up")

    def _outside_down(self) -> None:
        with contextlib.suppress(links.LinkError, NetlinkError):
            links.remove_container_links(self.out_ns, self.out_if)

    # --- run -------------------------------------------------------------------

    def run(self) -> ProbeResult:
        """Set up listeners and the outside, probe, compare, tear down."""
        targets = self.targets()
        inventory = self.m.inventory()
        truth = truth_table(self.m.policy, inventory, targets)
        listeners = _Listeners()
        try:
            self._outside_up()
            bound: dict[str, int] = {}
            for t in targets:
                if t.kind == "host" and t.port == 0:
                    port = listeners.listen(None, t.address)
                    assert port is not None
                    bound[t.label] = port
                elif t.kind == "ui":
                    listeners.listen(self.m.prefix + t.owner, t.address, t.port)
                elif t.kind == "outside":
                    listeners.listen(self.out_ns, t.address, t.port)
            listeners.start()
            resolved = [
                Target(t.label, t.kind, t.address, bound.get(t.label, t.port), t.owner)
                for t in targets
            ]
            by_label = {t.label: t for t in resolved}
            keys = sorted(truth)
            jobs = [
                (
                    None if src == HOST else self.m.prefix + src,
                    by_label[lbl].address,
                    by_label[lbl].port,
                )
                for src, lbl in keys
            ]
            outcomes = _connect_all(jobs, self.timeout)
            for _ in range(self.retries):
                # Retry what did not connect: transient (neighbour discovery, a
                # just-upped link) must not pass for "blocked".
                again = [i for i, o in enumerate(outcomes) if o != "open"]
                if not again:
                    break
                redo = _connect_all([jobs[i] for i in again], self.timeout)
                for i, o in zip(again, redo, strict=True):
                    if o == "open" or outcomes[i] not in ("refused",):
                        outcomes[i] = o
            result = ProbeResult()
            for (src, lbl), outcome in zip(keys, outcomes, strict=True):
                t = by_label[lbl]
                result.cells.append(
                    ProbeCell(src, lbl, t.address, t.port, truth[(src, lbl)], outcome)
                )
            return result
        finally:
            listeners.close()
            self._outside_down()
