"""Fail-closed container bring-up and teardown, reconcile, status.

Order of :meth:`NetnsManager.up` (fail closed):

1. the table exists (created from the policy if missing);
2. the container's set elements are added (one transaction) - its host-side
   interface name is isolated before that interface even exists;
3. namespace, veth, addresses, routes are created with the host side DOWN;
4. the live table is checked to hold the container's elements, then the
   host side comes up.

Any failure after step 2 removes everything of the container again.

The inventory (name -> slot, roles) is held in memory and in a small JSON
file so that a restarted manager can reconcile the live table. Every
operation holds an exclusive ``flock`` on ``<state>.lock`` and re-reads the
file first: another manager on the same table (``hive-boundary netns
reconcile`` next to hive-priv) never re-applies a table compiled from a stale
inventory, which would strip a running container's isolation.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from enforcer.errors import BadRequest, Conflict, HiveError, NotFound
from enforcer.files import replace_file
from enforcer.names import AGENT_NAME_RE
from netns import links
from netns.apply import Nft, NftError
from netns.policy import NetworkPolicy
from netns.ruleset import (
    ContainerEntry,
    Element,
    Ruleset,
    compile_ruleset,
    container_elements,
    subjects_for,
)

__all__ = [
    "ContainerNet",
    "DriftReport",
    "NetStatus",
    "NetnsManager",
    "compute_drift",
]

_NAME = AGENT_NAME_RE


@dataclass(frozen=True, slots=True)
class ContainerNet:
    """What a container got: where it lives and how the gateway reaches its UI."""

    name: str
    netns: str
    host_ifname: str
    ipv4: str
    ipv6: str
    host_ipv4: str
    host_ipv6: str
    ui_url: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Precise differences between the live state and the desired one.

    The table: the live nftables table vs the compiled one. ``links``: per
    inventoried container, what its namespace, host-side veth, inner ``eth0``,
    addresses and default routes lack (:func:`netns.links.link_problems`);
    a container whose links are healthy has no entry.
    """

    table: str
    table_missing: bool = False
    missing_sets: tuple[str, ...] = ()
    extra_sets: tuple[str, ...] = ()
    missing_elements: dict[str, list[str]] = field(default_factory=dict)
    extra_elements: dict[str, list[str]] = field(default_factory=dict)
    changed_sets: tuple[str, ...] = ()  # type or flags differ
    changed_chains: tuple[str, ...] = ()  # missing, extra or different hook/prio/policy
    changed_rules: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    links: dict[str, list[str]] = field(default_factory=dict)
    repaired: bool = False

    @property
    def in_sync(self) -> bool:
        """No difference at all: the table and every container's links."""
        return self.table_in_sync and not self.links

    @property
    def table_in_sync(self) -> bool:
        """The live table equals the compiled one (links not considered)."""
        return not (
            self.table_missing
            or self.missing_sets
            or self.extra_sets
            or self.missing_elements
            or self.extra_elements
            or self.changed_sets
            or self.changed_chains
            or self.changed_rules
        )

    def lines(self) -> list[str]:
        """Human-readable, one difference per line."""
        if self.in_sync:
            return [f"inet {self.table}: in sync"]
        out: list[str] = []
        if self.table_missing:
            out.append(f"inet {self.table}: table missing")
        out += [f"set {s}: missing" for s in self.missing_sets]
        out += [f"set {s}: unexpected" for s in self.extra_sets]
        out += [f"set {s}: type/flags differ" for s in self.changed_sets]
        for s, el in sorted(self.missing_elements.items()):
            out.append(f"set {s}: missing element(s) {', '.join(el)}")
        for s, el in sorted(self.extra_elements.items()):
            out.append(f"set {s}: unexpected element(s) {', '.join(el)}")
        out += [f"chain {c}: missing or different" for c in self.changed_chains]
        for c, d in sorted(self.changed_rules.items()):
            out += [f"chain {c}: missing rule {r!r}" for r in d.get("missing", [])]
            out += [f"chain {c}: unexpected rule {r!r}" for r in d.get("extra", [])]
        for name, problems in sorted(self.links.items()):
            out += [f"container {name}: {p}" for p in problems]
        if self.repaired and not self.table_in_sync:
            out.append("re-applied: live table now equals the compiled one")
        if self.repaired and self.links:
            out.append(f"re-created: links of {', '.join(sorted(self.links))} (isolation first)")
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["in_sync"] = self.in_sync
        return d


def compute_drift(table: str, want: dict[str, Any], live: dict[str, Any] | None) -> DriftReport:
    """Pure: the differences between two normalised tables."""
    if live is None:
        return DriftReport(table, table_missing=True)
    ws, ls = want["sets"], live["sets"]
    missing_el: dict[str, list[str]] = {}
    extra_el: dict[str, list[str]] = {}
    changed_sets = []
    for name in sorted(set(ws) & set(ls)):
        w, lv = ws[name], ls[name]
        if (w["type"], w["flags"]) != (lv["type"], lv["flags"]):
            changed_sets.append(name)
        m = sorted(set(w["elements"]) - set(lv["elements"]))
        x = sorted(set(lv["elements"]) - set(w["elements"]))
        if m:
            missing_el[name] = m
        if x:
            extra_el[name] = x
    wc, lc = want["chains"], live["chains"]
    changed_chains = sorted(c for c in set(wc) | set(lc) if wc.get(c) != lc.get(c))
    changed_rules: dict[str, dict[str, list[str]]] = {}
    for c in sorted(set(want["rules"]) | set(live["rules"])):
        wr = [r[1] or r[0] for r in want["rules"].get(c, [])]
        lr = [r[1] or r[0] for r in live["rules"].get(c, [])]
        if want["rules"].get(c, []) != live["rules"].get(c, []):
            changed_rules[c] = {
                "missing": [r for r in wr if r not in lr] or (["(order or body differs)"]),
                "extra": [r for r in lr if r not in wr],
            }
    return DriftReport(
        table,
        missing_sets=tuple(sorted(set(ws) - set(ls))),
        extra_sets=tuple(sorted(set(ls) - set(ws))),
        missing_elements=missing_el,
        extra_elements=extra_el,
        changed_sets=tuple(changed_sets),
        changed_chains=tuple(changed_chains),
        changed_rules=changed_rules,
    )


@dataclass(frozen=True, slots=True)
class NetStatus:
    """Containers, their interfaces and the drift of the table."""

    table: str
    table_present: bool
    containers: tuple[ContainerNet, ...]
    links_up: dict[str, bool]
    drift: DriftReport

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "table": self.table,
            "table_present": self.table_present,
            "containers": [asdict(c) for c in self.containers],
            "links_up": self.links_up,
            "drift": self.drift.to_json(),
        }


@dataclass(slots=True)
class _Record:
    slot: int
    roles: tuple[str, ...]


def _ours(st: os.stat_result) -> bool:
    """A regular file owned by root or by this process's uid (the manager's own files)."""
    return stat.S_ISREG(st.st_mode) and st.st_uid in {0, os.geteuid()}


class NetnsManager:
    """Owns table ``inet <table>`` and the namespaces ``<prefix><name>``."""

    def __init__(
        self,
        policy: NetworkPolicy,
        table: str = "hive",
        prefix: str = "hive-",
        *,
        ifprefix: str = "hv-",
        state_path: Path | None = None,
    ) -> None:
        self.policy = policy
        self.table = table
        self.prefix = prefix
        self.ifprefix = ifprefix
        self.state_path = state_path or Path("/run/hive") / f"netns-{table}.json"
        self.nft = Nft(table)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _exclusive() in the thread holding _lock
        self._inv: dict[str, _Record] = {}
        self._load()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the table and the inventory alone, across threads and processes.

        On the outermost entry the inventory is re-read from the state file
        (when it exists): another manager may have brought containers up or
        down since we last looked.
        """
        with self._lock:
            fd = -1
            if self._depth == 0:
                try:
                    # O_NOFOLLOW: a symlink planted at this name (the run
                    # directory is the core's to write in) is not followed.
                    fd = os.open(
                        self.state_path.with_suffix(".lock"),
                        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                        0o600,
                    )
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise Conflict(
                            f"{self.state_path.with_suffix('.lock')} is a symlink someone "
                            "planted; refused (remove it after checking it)"
                        ) from e
                    fd = -1  # read-only run dir (an unprivileged audit): nobody writes there
                if fd >= 0:
                    if not _ours(os.fstat(fd)):
                        os.close(fd)
                        raise Conflict(
                            f"{self.state_path.with_suffix('.lock')}: not a file this "
                            "manager made; refused (remove it after checking it)"
                        )
                    fcntl.flock(fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                if self._depth == 1 and self.state_path.exists():
                    self._inv.clear()
                    self._load()
                yield
            finally:
                self._depth -= 1
                if fd >= 0:
                    os.close(fd)  # releases the flock

    # --- inventory ---------------------------------------------------------

    def _load(self) -> None:
        try:
            # The inventory says which containers the table isolates: one
            # written by anyone but us (root, or this uid) is refused, not believed.
            if not _ours(self.state_path.lstat()):
                raise Conflict(
                    f"{self.state_path}: not an inventory this manager wrote; refused "
                    "(remove it after checking it, then reconcile)"
                )
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise BadRequest(f"{self.state_path}: unreadable netns inventory: {e}") from e
        for name, rec in data.get("containers", {}).items():
            self._inv[name] = _Record(int(rec["slot"]), tuple(rec.get("roles", ())))

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "table": self.table,
            "prefix": self.prefix,
            "containers": {
                n: {"slot": r.slot, "roles": list(r.roles)} for n, r in self._inv.items()
            },
        }
        # Replaced whole under a fresh exclusive name (enforcer.files): the run
        # directory is writable by the core, which must not steer this write.
        replace_file(
            self.state_path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o644
        )

    def names(self) -> list[str]:
        """Names of the containers in the inventory."""
        return sorted(self._inv)

    def entry(self, name: str) -> ContainerEntry:
        """The compiler's view of container ``name``."""
        rec = self._inv[name]
        slot = links.slot_addresses(self.policy.ipv4, self.policy.ipv6, rec.slot)
        return ContainerEntry(
            name,
            links.host_ifname(name, self.ifprefix),
            slot.ipv4,
            slot.ipv6,
            subjects_for(name, rec.roles),
        )

    def inventory(self) -> list[ContainerEntry]:
        """The compiler's view of every container."""
        return [self.entry(n) for n in sorted(self._inv)]

    def container(self, name: str) -> ContainerNet:
        """What container ``name`` got."""
        rec = self._inv.get(name)
        if rec is None:
            raise NotFound(f"no container {name!r} in the network inventory")
        s = links.slot_addresses(self.policy.ipv4, self.policy.ipv6, rec.slot)
        return ContainerNet(
            name,
            self.prefix + name,
            links.host_ifname(name, self.ifprefix),
            str(s.ipv4),
            str(s.ipv6),
            str(s.host_ipv4),
            str(s.host_ipv6),
            f"http://{s.ipv4}:{self.policy.agent_ui_port}/",
            rec.roles,
        )

    def compiled(self) -> Ruleset:
        """The desired table for the current policy and inventory."""
        return compile_ruleset(self.policy, self.inventory(), self.table)

    def _free_slot(self) -> int:
        used = {r.slot for r in self._inv.values()}
        i = 0
        while i in used:
            i += 1
        return i

    # --- table ------------------------------------------------------------

    def ensure_table(self) -> None:
        """Make sure the table exists (compiled from the current state) before any interface."""
        with self._exclusive():
            if not self.nft.exists():
                self.nft.replace_table(self.compiled())

    def apply(self) -> None:
        """Replace the whole table with the compiled one (one atomic transaction)."""
        with self._exclusive():
            self.nft.replace_table(self.compiled())

    def reload_policy(self, policy: NetworkPolicy) -> None:
        """Switch to a new network policy and re-apply atomically.

        The addressing of running containers stays what it was: a new subnet
        applies to the containers created after a full restart.
        """
        with self._exclusive():
            old = self.policy
            self.policy = policy
            if (policy.ipv4, policy.ipv6) != (old.ipv4, old.ipv6) and self._inv:
                self.policy = old
                raise Conflict("cannot change the address subnets while containers are up")
            try:
                self.apply()
            except NftError:
                self.policy = old
                raise

    def add_isolation(self, entry: ContainerEntry) -> None:
        """Add the set elements of one container in one transaction."""
        # Set definitions depend on the policy only: no need to compile the inventory.
        rs = compile_ruleset(self.policy, [], self.table)
        sets = {s.name: s for s in rs.sets}
        self.nft.update_elements(sets, add=container_elements(self.policy, entry))

    def remove_isolation(self, entry: ContainerEntry) -> None:
        """Remove the set elements of one container in one transaction."""
        rs = compile_ruleset(self.policy, [], self.table)
        sets = {s.name: s for s in rs.sets}
        self.nft.update_elements(sets, delete=container_elements(self.policy, entry))

    def _isolated(self, entry: ContainerEntry) -> bool:
        live = self.nft.live()
        if live is None:
            return False
        for set_name, elems in container_elements(self.policy, entry).items():
            have = set(live["sets"].get(set_name, {}).get("elements", []))
            if not {_key(e) for e in elems} <= have:
                return False
        return True

    # --- containers -------------------------------------------------------

    def up(self, name: str, principal_roles: Iterable[str] = ()) -> ContainerNet:
        """Create the container's network, isolated before its interface comes up."""
        if not _NAME.match(name):
            raise BadRequest(f"bad container name {name!r}")
        with self._exclusive():
            if name in self._inv:
                raise Conflict(f"container {name!r} already has a network")
            ns = self.prefix + name
            ifname = links.host_ifname(name, self.ifprefix)
            if links.namespace_exists(ns) or links.link_exists(ifname):
                raise Conflict(f"{ns} or {ifname} already exists (not in our inventory)")
            self.ensure_table()
            self._inv[name] = _Record(self._free_slot(), tuple(sorted(set(principal_roles))))
            entry = self.entry(name)
            try:
                # Recorded before anything is made: a process killed half-way
                # leaves an inventory entry that down() removes whole, never
                # an unrecorded namespace, veth or set element (an orphan).
                self._save()
                try:
                    self.add_isolation(entry)
                except NftError:
                    # Sets missing (table flushed behind our back): rebuild it whole.
                    self.apply()
                slot = links.slot_addresses(
                    self.policy.ipv4, self.policy.ipv6, self._inv[name].slot
                )
                links.create_container_links(ns, ifname, slot)
                # The whole table, not only our elements: rules flushed behind
                # our back would leave the new interface unprotected. (The
                # table alone: this container's link is down on purpose.)
                if not self._table_drift().table_in_sync:
                    self.apply()
                if not self._table_drift().table_in_sync or not self._isolated(entry):
                    raise NftError(f"isolation of {name!r} is not in the live table")
                links.set_link_up(ifname)
            except BaseException:
                self._teardown(name, entry)
                self._save()
                raise
            self._save()
            return self.container(name)

    def _teardown(self, name: str, entry: ContainerEntry) -> None:
        # Links first: an interface never outlives its isolation elements.
        links.remove_container_links(self.prefix + name, entry.host_ifname)
        del self._inv[name]
        try:
            self.remove_isolation(entry)
        except NftError:
            self.apply()  # elements already gone (or table flushed): rebuild exactly

    def down(self, name: str) -> None:
        """Remove everything of the container: links, namespace, set elements."""
        with self._exclusive():
            if name not in self._inv:
                raise NotFound(f"no container {name!r} in the network inventory")
            self._teardown(name, self.entry(name))
            self._save()

    def down_all(self) -> None:
        """Remove every container of the inventory (the table stays)."""
        with self._exclusive():
            for name in list(self._inv):
                self.down(name)

    def destroy(self) -> None:
        """Remove every container and the table itself."""
        with self._exclusive():
            errors: list[str] = []
            for name in list(self._inv):
                try:
                    self.down(name)
                except HiveError as e:
                    errors.append(e.reason)
            self.nft.delete_table()
            if self.state_path.exists():
                self.state_path.unlink()
            self.state_path.with_suffix(".lock").unlink(missing_ok=True)
            if errors:
                raise links.LinkError("; ".join(errors))

    # --- reconcile / status ----------------------------------------------

    def _table_drift(self) -> DriftReport:
        return compute_drift(self.table, self.compiled().normalised(), self.nft.live())

    def _link_drift(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name in sorted(self._inv):
            c = self.container(name)
            slot = links.slot_addresses(self.policy.ipv4, self.policy.ipv6, self._inv[name].slot)
            problems = links.link_problems(
                links.read_link_facts(c.netns, c.host_ifname), c.host_ifname, slot
            )
            if problems:
                found[name] = problems
        return found

    def drift(self) -> DriftReport:
        """Compare the live table with the compiled one, and every container's links
        with what its slot needs (no changes)."""
        with self._exclusive():
            report = self._table_drift()
            return DriftReport(**{**_fields(report), "links": self._link_drift()})

    def reconcile(self) -> DriftReport:
        """Report drift, then repair it: the whole table re-applied if it differs, then
        each drifted container's links re-created (isolation verified before a
        re-made interface comes up).

        A container whose namespace is gone gets a new, empty one with its
        links on the same slot (its inventory entry, and so hive-priv's record,
        stay valid); a process still in the lost namespace keeps no link to
        the host - fail closed - until the container is restarted.
        """
        with self._exclusive():
            report = self.drift()
            if report.in_sync:
                return report
            if not report.table_in_sync:
                self.apply()
            for name in report.links:
                self._repair_links(name)
            after = self.drift()
            if not after.in_sync:
                raise NftError("repaired but still drifted: " + "; ".join(after.lines()))
            return DriftReport(**{**_fields(report), "repaired": True})

    def _repair_links(self, name: str) -> None:
        entry = self.entry(name)
        c = self.container(name)
        if not self._isolated(entry):
            self.add_isolation(entry)
        if not self._isolated(entry):
            raise NftError(f"isolation of {name!r} is not in the live table: links left down")
        slot = links.slot_addresses(self.policy.ipv4, self.policy.ipv6, self._inv[name].slot)
        links.repair_container_links(c.netns, c.host_ifname, slot)
        links.set_link_up(c.host_ifname)

    def status(self) -> NetStatus:
        """Containers, whether each interface is up, and the drift."""
        with self._exclusive():
            containers = tuple(self.container(n) for n in sorted(self._inv))
            d = self.drift()
            return NetStatus(
                self.table,
                not d.table_missing,
                containers,
                {c.host_ifname: links.link_is_up(c.host_ifname) for c in containers},
                d,
            )


def _fields(r: DriftReport) -> dict[str, Any]:
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def _key(e: Element) -> str:
    return " . ".join(e) if isinstance(e, tuple) else e
