"""Fail-closed bring-up, teardown that leaves nothing, reconcile after drift."""

from __future__ import annotations

import socket
import subprocess

import pytest

from netns import links
from netns.manager import ContainerNet, NetnsManager
from netns.probe import Prober, _in_netns
from tests.netns.helpers import HTTP_EGRESS as EGRESS
from tests.netns.helpers import Names, leftovers, make_policy, managed


def _nft_tables() -> str:
    return subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True).stdout


def test_up_then_down_leaves_nothing_behind(names: Names) -> None:
    with managed(names, make_policy(names, EGRESS)) as m:
        a = m.up("alpha", ["agent"])
        m.up("beta", [])
        assert links.namespace_exists(a.netns)
        assert links.link_is_up(a.host_ifname)
        assert m.drift().in_sync
        m.down("alpha")
        m.down("beta")
        left = leftovers(names)
        assert left == {"namespaces": [], "links": [], "addresses": [], "tables": [names.table]}
        live = m.nft.live()
        assert live is not None
        assert all(
            not s["elements"] or n.endswith(("_v4", "_v6", "_ports"))
            for n, s in live["sets"].items()
        )
    assert leftovers(names)["tables"] == []
    assert names.table not in _nft_tables()


def test_a_failure_between_isolation_and_link_up_removes_the_container(
    names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = links.create_container_links

    def create_then_crash(ns: str, ifname: str, slot: links.Slot) -> None:
        real(ns, ifname, slot)  # really created, still down
        raise links.LinkError("simulated crash before the link comes up")

    with managed(names, make_policy(names, EGRESS)) as m:
        monkeypatch.setattr(links, "create_container_links", create_then_crash)
        with pytest.raises(links.LinkError):
            m.up("gamma", ["agent"])
        monkeypatch.undo()
        left = leftovers(names)
        assert left["namespaces"] == []
        assert left["links"] == []
        assert left["addresses"] == []
        assert m.names() == []
        assert m.drift().in_sync  # its set elements are gone too


def test_reconcile_reports_and_repairs_a_deleted_or_flushed_table(names: Names) -> None:
    with managed(names, make_policy(names, EGRESS)) as m:
        m.up("alpha", ["agent"])
        m.nft.delete_table()
        report = m.reconcile()
        assert report.table_missing
        assert report.repaired
        assert m.drift().in_sync
        m.nft.flush_table()
        report = m.reconcile()
        # `flush table` drops every rule (sets stay): each chain reports what it lost.
        assert report.repaired
        assert set(report.changed_rules) == {"input", "forward", "postrouting"}
        assert m.nft.live() == m.compiled().normalised()


def test_drift_names_the_exact_missing_element(names: Names) -> None:
    with managed(names, make_policy(names, EGRESS)) as m:
        c = m.up("alpha", ["agent"])
        subprocess.run(
            ["nft", f"delete element inet {names.table} eg0_if {{ {c.host_ifname} }}"], check=True
        )
        d = m.drift()
        assert d.missing_elements == {"eg0_if": [c.host_ifname]}
        assert not d.extra_elements
        assert not d.changed_rules


def test_a_restarted_manager_reconciles_from_its_inventory_file(names: Names) -> None:
    policy = make_policy(names, EGRESS)
    with managed(names, policy) as m:
        m.up("alpha", ["agent"])
        m.nft.delete_table()
        again = NetnsManager(
            policy, m.table, m.prefix, ifprefix=m.ifprefix, state_path=m.state_path
        )
        assert again.names() == ["alpha"]
        assert again.reconcile().repaired
        assert m.drift().in_sync


def test_allocation_is_deterministic_and_reuses_freed_slots(names: Names) -> None:
    with managed(names, make_policy(names)) as m:
        a = m.up("a", [])
        b = m.up("b", [])
        m.down("a")
        c = m.up("c", [])
        assert c.ipv4 == a.ipv4
        assert c.ipv4 != b.ipv4


def test_the_probe_sees_holes_when_the_table_is_gone(names: Names) -> None:
    # A probe that cannot fail proves nothing: without our table, the host is reachable.
    with managed(names, make_policy(names, EGRESS)) as m:
        m.up("alpha", ["agent"])
        m.up("beta", [])
        prober = Prober(m, outside_v4=names.outside_v4, outside_v6=names.outside_v6)
        assert prober.run().ok
        m.nft.delete_table()
        holes = {(c.source, c.target) for c in prober.run().mismatches}
        assert ("alpha", "host:alpha-veth4") in holes
        assert ("beta", "host:beta-veth6") in holes


def _reaches_its_host_side(c: ContainerNet) -> bool:
    """Can the container open TCP to the host side of its own veth (an address we made)?"""
    with socket.socket() as srv:
        srv.bind((c.host_ipv4, 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def connect() -> bool:
            try:
                socket.create_connection((c.host_ipv4, port), timeout=1.0).close()
            except OSError:
                return False
            return True

        return bool(_in_netns(c.netns, connect))


def test_a_dormant_table_is_drift_and_reconcile_turns_it_back_on(names: Names) -> None:
    """``flags dormant`` unhooks every base chain of our table while its sets, chains
    and rules list exactly as before: the container reaches the host."""
    with managed(names, make_policy(names, EGRESS)) as m:
        c = m.up("alpha", ["agent"])
        assert not _reaches_its_host_side(c)
        subprocess.run(["nft", f"add table inet {names.table} {{ flags dormant; }}"], check=True)
        assert _reaches_its_host_side(c)  # the hole is real
        report = m.reconcile()
        assert not report.table_in_sync
        assert set(report.changed_chains) == {"input", "forward", "postrouting"}
        assert report.repaired
        assert not _reaches_its_host_side(c)
        assert m.drift().in_sync
        assert m.nft.live() == m.compiled().normalised()
