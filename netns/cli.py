"""``hive-boundary netns up|down|status|reconcile|probe``.

Exit codes: 0 ok, 1 findings (drift, probe mismatches), 2 usage, not root,
nftables missing, or a refused operation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from enforcer.config import default_policy_dir
from enforcer.errors import HiveError
from netns.policy import NetworkPolicy, parse_network_policy

__all__ = ["load_network_policy", "register"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def load_network_policy(policy_dir: Path | None = None) -> NetworkPolicy:
    """The network section of the policy in ``policy_dir`` (default: the shipped one)."""
    path = (policy_dir or default_policy_dir()) / "network.toml"
    try:
        text = path.read_text()
    except OSError as e:
        raise HiveError(f"{path}: cannot read: {e.strerror}") from e
    return parse_network_policy(text, source=str(path))


def register(subparsers: Any) -> None:
    """Add the ``netns`` command group."""
    p = subparsers.add_parser("netns", help="network isolation: namespaces, veths, nftables")
    sub = p.add_subparsers(dest="netns_command", metavar="ACTION")
    sub.required = True

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--table", default="hive", help="nftables table (inet) to own")
        sp.add_argument("--prefix", default="hive-", help="namespace name prefix")
        sp.add_argument("--ifprefix", default="hv-", help="host-side veth name prefix")
        sp.add_argument("--state", type=Path, default=None, help="inventory JSON file")
        sp.add_argument("--policy-dir", type=Path, default=None, help="policy directory")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    up = sub.add_parser("up", help="create isolated networks for containers")
    up.add_argument("names", nargs="+", metavar="NAME")
    up.add_argument("--role", action="append", default=None, help="role(s) (default: agent)")
    common(up)
    up.set_defaults(run=_run_up)
    down = sub.add_parser("down", help="remove containers' networks")
    down.add_argument("names", nargs="+", metavar="NAME")
    common(down)
    down.set_defaults(run=_run_down)
    st = sub.add_parser("status", help="containers, interfaces, drift")
    common(st)
    st.set_defaults(run=_run_status)
    rc = sub.add_parser("reconcile", help="report drift and re-apply the table")
    common(rc)
    rc.set_defaults(run=_run_reconcile)
    pr = sub.add_parser("probe", help="connectivity matrix vs the policy's truth table")
    common(pr)
    pr.add_argument("--outside-v4", default="198.18.0.0/30", help="/30 for the fake outside")
    pr.add_argument("--outside-v6", default="2001:db8:4869::/126", help="/126 for it")
    pr.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="LABEL=ADDR:PORT",
        help="extra host target (gateway/core), loopback or a veth address",
    )
    pr.add_argument("--timeout", type=float, default=0.4)
    pr.set_defaults(run=_run_probe)


def _preflight() -> str | None:
    if os.geteuid() != 0:
        return "netns needs root (network namespaces and nftables)"
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "nftables is missing: apt install nftables python3-nftables"
    return None


def _manager(args: argparse.Namespace) -> Any:
    from netns.manager import NetnsManager

    return NetnsManager(
        load_network_policy(args.policy_dir),
        table=args.table,
        prefix=args.prefix,
        ifprefix=args.ifprefix,
        state_path=args.state,
    )


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        why = _preflight()
        if why:
            print(f"hive-boundary netns: {why}", file=sys.stderr)
            return EXIT_USAGE
        try:
            result: int = fn(args)
        except HiveError as e:
            print(f"hive-boundary netns: {e.reason}", file=sys.stderr)
            return EXIT_USAGE
        except ValueError as e:  # a bad CIDR or number on the command line
            print(f"hive-boundary netns: {e}", file=sys.stderr)
            return EXIT_USAGE
        return result

    return run


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


@_guard
def _run_up(args: argparse.Namespace) -> int:
    m = _manager(args)
    out = []
    for name in args.names:
        c = m.up(name, args.role if args.role is not None else ["agent"])
        out.append(c)
    from dataclasses import asdict

    _emit(
        args,
        [asdict(c) for c in out],
        "\n".join(f"{c.name}: {c.netns} {c.host_ifname} {c.ipv4} {c.ipv6} {c.ui_url}" for c in out),
    )
    return EXIT_OK


@_guard
def _run_down(args: argparse.Namespace) -> int:
    m = _manager(args)
    for name in args.names:
        m.down(name)
    _emit(args, {"down": args.names}, "\n".join(f"{n}: removed" for n in args.names))
    return EXIT_OK


@_guard
def _run_status(args: argparse.Namespace) -> int:
    st = _manager(args).status()
    lines = [f"table inet {st.table}: {'present' if st.table_present else 'MISSING'}"]
    for c in st.containers:
        up = "up" if st.links_up.get(c.host_ifname) else "DOWN"
        lines.append(f"  {c.name:<16} {c.netns:<20} {c.host_ifname:<15} {up:<4} {c.ipv4} {c.ipv6}")
    lines += ["drift:"] + [f"  {x}" for x in st.drift.lines()]
    _emit(args, st.to_json(), "\n".join(lines))
    return EXIT_OK if st.drift.in_sync else EXIT_FINDINGS


@_guard
def _run_reconcile(args: argparse.Namespace) -> int:
    report = _manager(args).reconcile()
    _emit(args, report.to_json(), "\n".join(report.lines()))
    # Drift found (and repaired) is still a finding worth a non-zero exit.
    return EXIT_OK if report.in_sync else EXIT_FINDINGS


@_guard
def _run_probe(args: argparse.Namespace) -> int:
    from netns.probe import Prober

    extra = []
    for spec in args.target:
        try:
            label, rest = spec.split("=", 1)
            addr, port = rest.rsplit(":", 1)
            extra.append((label, addr.strip("[]"), int(port)))
        except ValueError:
            print(f"hive-boundary netns: bad --target {spec!r} (LABEL=ADDR:PORT)", file=sys.stderr)
            return EXIT_USAGE
    prober = Prober(
        _manager(args),
        outside_v4=args.outside_v4,
        outside_v6=args.outside_v6,
        extra_targets=extra,
        timeout=args.timeout,
    )
    result = prober.run()
    _emit(args, result.to_json(), result.table())
    return EXIT_OK if result.ok else EXIT_FINDINGS
