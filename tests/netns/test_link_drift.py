"""Links changed behind the manager's back: detected, reported precisely, repaired.

Each test breaks one container's links the way an outside actor would (a
deleted veth, a removed namespace, lost addresses or routes, a foreign veth
under our name), then checks that ``drift()``/``status()`` and the audit's
drift check report it without repairing, and that ``reconcile()`` repairs it
with isolation in place before the re-made interface comes up: afterwards
the probe's whole matrix holds again (allowed targets reached, nothing on
the host).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from enforcer.audit.network import NetOptions, gather_drift, judge_drift, manager
from enforcer.audit.report import Status
from netns import links
from netns.manager import NetnsManager
from netns.probe import Prober
from tests.netns.helpers import HTTP_EGRESS as EGRESS
from tests.netns.helpers import Names, make_policy, managed


@pytest.fixture
def lab(names: Names) -> Iterator[tuple[NetnsManager, Prober]]:
    """Two containers (alpha with egress, beta without) and a probe that passes."""
    with managed(names, make_policy(names, EGRESS)) as m:
        m.up("alpha", ["agent"])
        m.up("beta", [])
        prober = Prober(m, outside_v4=names.outside_v4, outside_v6=names.outside_v6)
        assert prober.run().ok
        assert m.drift().in_sync
        yield m, prober


def _delete_link(ifname: str, ns: str | None = None) -> None:
    with IPRoute(netns=ns, flags=0) if ns else IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=ifname)[0])


def _healthy(m: NetnsManager, name: str) -> bool:
    c = m.container(name)
    slot = links.slot_addresses(m.policy.ipv4, m.policy.ipv6, m._inv[name].slot)
    return (
        links.link_problems(links.read_link_facts(c.netns, c.host_ifname), c.host_ifname, slot)
        == []
    )


def test_a_deleted_host_veth_is_reported_repaired_and_isolated_again(
    lab: tuple[NetnsManager, Prober],
) -> None:
    m, prober = lab
    alpha = m.container("alpha")
    _delete_link(alpha.host_ifname)  # takes eth0 inside (and its routes) with it

    d = m.drift()
    assert d.table_in_sync, "the table did not change"
    assert not d.in_sync
    assert d.links == {
        "alpha": [
            f"host veth {alpha.host_ifname} missing",
            "eth0 missing inside the namespace",
            f"default route via {alpha.host_ipv4} missing inside",
            f"default route via {alpha.host_ipv6} missing inside",
        ]
    }
    assert f"container alpha: host veth {alpha.host_ifname} missing" in d.lines()
    assert d.to_json()["links"] == d.links
    assert d.to_json()["in_sync"] is False
    st = m.status()
    assert st.links_up[alpha.host_ifname] is False
    assert st.drift.links == d.links
    assert not links.link_exists(alpha.host_ifname), "drift() and status() repair nothing"

    report = m.reconcile()
    assert report.repaired
    assert report.links == d.links, "the report says what was found, not what is left"
    assert report.lines()[-1] == "re-created: links of alpha (isolation first)"
    assert m.drift().in_sync
    assert _healthy(m, "alpha")
    assert _healthy(m, "beta")
    # The real matrix: alpha reaches its egress again, nothing on the host.
    result = prober.run()
    assert result.ok, [f"{c.source}->{c.target}: {c.outcome}" for c in result.mismatches]
    assert result.observed()[("alpha", "outside4:80")]
    assert result.observed()[("alpha", "outside6:80")]
    assert result.observed()[("host", "ui:alpha4")]
    assert result.observed()[("host", "ui:alpha6")]


def test_a_removed_namespace_is_recreated_on_the_same_slot(
    lab: tuple[NetnsManager, Prober],
) -> None:
    m, prober = lab
    beta = m.container("beta")
    netns.remove(beta.netns)  # nothing holds it: the namespace and its veth die
    deadline = time.monotonic() + 5
    while links.link_exists(beta.host_ifname) and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel tears the namespace down asynchronously

    d = m.drift()
    assert d.links["beta"][:2] == ["namespace missing", f"host veth {beta.host_ifname} missing"]
    assert set(d.links) == {"beta"}
    assert m.reconcile().repaired
    assert links.namespace_exists(beta.netns)
    assert m.container("beta") == beta, "same slot, same addresses"
    assert m.drift().in_sync
    assert prober.run().ok


def test_lost_addresses_routes_and_downed_links_are_each_reported_and_repaired(
    lab: tuple[NetnsManager, Prober],
) -> None:
    m, prober = lab
    a = m.container("alpha")
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=a.host_ifname)[0]
        ipr.addr("del", index=idx, address=a.host_ipv4, prefixlen=30)
    with IPRoute(netns=a.netns, flags=0) as ipn:
        ipn.route("del", dst="default", gateway=a.host_ipv6, family=10)
        ipn.link("set", index=ipn.link_lookup(ifname="lo")[0], state="down")
    with IPRoute() as ipr:
        ipr.link("set", index=idx, state="down")

    assert m.drift().links == {
        "alpha": [
            f"host veth {a.host_ifname} down",
            f"host veth {a.host_ifname} lacks address {a.host_ipv4}/30",
            # Taking a link down drops its IPv6 addresses (keep_addr_on_down=0).
            f"host veth {a.host_ifname} lacks address {a.host_ipv6}/126",
            "lo inside down",
            f"default route via {a.host_ipv6} missing inside",
        ]
    }
    assert m.reconcile().repaired
    assert m.drift().in_sync
    assert prober.run().ok


def test_a_foreign_veth_under_our_name_is_replaced_by_ours(
    lab: tuple[NetnsManager, Prober],
) -> None:
    m, prober = lab
    a = m.container("alpha")
    _delete_link(a.host_ifname)
    # Someone plants a veth with our host-side name whose peer stays on the host.
    foreign_peer = a.host_ifname[:13] + "-x"
    with IPRoute() as ipr:
        ipr.link("add", ifname=a.host_ifname, kind="veth", peer={"ifname": foreign_peer})
    try:
        assert "eth0 missing inside the namespace" in m.drift().links["alpha"]
        assert m.reconcile().repaired
        assert not links.link_exists(foreign_peer), "the planted pair is gone"
        assert m.drift().in_sync
        assert prober.run().ok
    finally:
        if links.link_exists(foreign_peer):
            _delete_link(foreign_peer)


def test_repair_verifies_isolation_before_the_remade_link_comes_up(
    lab: tuple[NetnsManager, Prober], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both broken at once: alpha's veth deleted AND its cont_if element
    # removed. The re-made interface may only come up once the element is back.
    m, _ = lab
    a = m.container("alpha")
    _delete_link(a.host_ifname)
    m.nft.delete_table()
    isolated_when_up: list[bool] = []
    real_up = links.set_link_up

    def observed_set_link_up(ifname: str) -> None:
        live = m.nft.live()
        isolated_when_up.append(live is not None and ifname in live["sets"]["cont_if"]["elements"])
        real_up(ifname)

    monkeypatch.setattr(links, "set_link_up", observed_set_link_up)
    report = m.reconcile()
    assert report.table_missing
    assert set(report.links) == {"alpha"}
    assert isolated_when_up == [True]
    assert m.drift().in_sync


def test_the_audit_reports_link_drift_as_a_finding_and_repairs_nothing(
    lab: tuple[NetnsManager, Prober], names: Names
) -> None:
    m, _ = lab
    a = m.container("alpha")
    _delete_link(a.host_ifname)
    opts = NetOptions(
        table=names.table, prefix=names.prefix, ifprefix=names.ifprefix, state_path=m.state_path
    )
    # The audit builds its own manager from the installation's inventory, as it does live.
    audit_m = manager(m.policy, opts, Path("/nonexistent"))
    check = judge_drift(gather_drift(audit_m))
    assert check.status == Status.FAIL
    whats = [f.what for f in check.findings]
    assert f"container alpha: host veth {a.host_ifname} missing" in whats
    assert not links.link_exists(a.host_ifname), "the audit is read-only"
    assert m.reconcile().repaired
    assert judge_drift(gather_drift(audit_m)).status == Status.PASS
