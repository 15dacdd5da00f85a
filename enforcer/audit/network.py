"""The network layer of the audit: live nftables table vs compiled, and the probe.

Read-only for the table: :func:`gather_drift` calls
:meth:`netns.manager.NetnsManager.drift` (the comparison only), never
``reconcile``, so the audit reports drift and repairs nothing. The probe
(:class:`netns.probe.Prober`) creates its own listeners and its own "outside"
namespace, and removes them again; it compares what connects with
:func:`netns.probe.truth_table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enforcer.audit.report import AuditError, Check, Finding, Status, Table, check
from enforcer.errors import HiveError
from netns.policy import NetworkPolicy

__all__ = ["NetOptions", "gather_drift", "gather_probe", "judge_drift", "judge_probe", "manager"]


@dataclass(frozen=True, slots=True)
class NetOptions:
    """Which table and names the installation's network layer uses."""

    table: str = "hive"
    prefix: str = "hive-"
    ifprefix: str = "hv-"
    state_path: Path | None = None  # default RUN/netns-<table>.json (hive-priv's)
    outside_v4: str = "198.18.0.0/30"
    outside_v6: str = "2001:db8:4869::/126"


def manager(policy: NetworkPolicy, opts: NetOptions, run_dir: Path) -> Any:
    """A manager of the installation's table (constructing it only reads its inventory)."""
    try:
        from netns.manager import NetnsManager

        return NetnsManager(
            policy,
            table=opts.table,
            prefix=opts.prefix,
            ifprefix=opts.ifprefix,
            state_path=opts.state_path or run_dir / f"netns-{opts.table}.json",
        )
    except ImportError as e:
        raise AuditError(f"the network layer is unavailable: {e}") from e
    except HiveError as e:
        raise AuditError(e.reason) from e


def gather_drift(m: Any) -> Any:
    """The live table compared with the compiled one (a ``DriftReport``; changes nothing)."""
    try:
        return m.drift()
    except HiveError as e:
        raise AuditError(f"cannot read nftables table inet {m.table}: {e.reason}") from e


def judge_drift(report: Any) -> Check:
    """Any difference between the live table and the compiled one is a finding."""
    return check(
        "network.drift",
        f"live nftables table inet {report.table} equals the compiled one",
        (Finding(line, f"inet {report.table}") for line in report.lines())
        if not report.in_sync
        else (),
        ok="in sync",
        bad="drift: the live table is not what the policy compiles to",
    )


def gather_probe(m: Any, opts: NetOptions) -> Any:
    """Run the connectivity probe (a ``ProbeResult``)."""
    from netns.probe import Prober

    try:
        return Prober(m, outside_v4=opts.outside_v4, outside_v6=opts.outside_v6).run()
    except HiveError as e:
        raise AuditError(f"the probe could not run: {e.reason}") from e


def judge_probe(result: Any) -> Check:
    """Every (source, target) cell observed as the truth table says."""
    title = "reachability matrix equals the truth table (probe)"
    if not result.cells:
        return Check("network.probe", title, Status.SKIP, "no container to probe from")
    found = [
        Finding(
            f"{c.source} -> {c.target} [{c.address}]:{c.port}: expected "
            f"{'allow' if c.expected else 'deny'}, observed {c.outcome}",
            c.source,
            {"target": c.target, "expected": c.expected, "outcome": c.outcome},
        )
        for c in result.mismatches
    ]
    return check(
        "network.probe",
        title,
        found,
        ok=f"{len(result.cells)} cells as expected",
        bad=f"{len(found)} of {len(result.cells)} cells differ from the truth table",
    )


def probe_table(result: Any) -> Table:
    """The observed cells."""
    return Table(
        "reachability (probe)",
        ("source", "target", "address", "expected", "observed", "ok"),
        tuple(
            (
                c.source,
                c.target,
                f"[{c.address}]:{c.port}",
                "allow" if c.expected else "deny",
                c.outcome,
                "ok" if c.ok else "MISMATCH",
            )
            for c in sorted(result.cells, key=lambda c: (c.source, c.target))
        ),
    )
