"""``hive-boundary audit``: does the boundary hold, and exactly where does it not?

Every layer is checked against the one policy:

- **policy** (:mod:`~enforcer.audit.policy_checks`): validation, the load-time
  invariants, the policy's own tests, coverage of the catalogue, and the proof
  over the whole abstract request space (every allowed (principal, channel,
  action) for agents; a violation with a counterexample and its line);
- **routes** (:mod:`~enforcer.audit.routes`): every route of the core's two
  surfaces and the gateway, introspected from the real applications, and
  hive-priv's request table, each bound to a catalogue action on its channel;
- **live** (``--live``, :mod:`~enforcer.audit.live`): socket owners and modes,
  the daemons' users, hive-priv's socket activation;
- **network** (``--live``/``--probe``, :mod:`~enforcer.audit.network`): the
  live nftables table against the compiled one (read-only), and the
  connectivity probe against the truth table.

Exit codes: 0 every check holds, 1 any finding, 2 could not run (the reason is
printed). Works offline with ``--policy DIR`` alone, to gate a policy change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from enforcer.audit.live import gather_live, live_section
from enforcer.audit.network import (
    NetOptions,
    gather_drift,
    gather_probe,
    judge_drift,
    judge_probe,
    manager,
    probe_table,
)
from enforcer.audit.policy_checks import PolicyFacts, gather_policy, policy_section
from enforcer.audit.render import render_html, render_json, render_text
from enforcer.audit.report import (
    EXIT_COULD_NOT_RUN,
    AuditError,
    Check,
    Report,
    Section,
    Status,
)
from enforcer.audit.routes import RouteFact, gather_routes, routes_section
from enforcer.config import HiveConfig, load_config
from enforcer.errors import HiveError
from enforcer.log import configure_logging
from enforcer.policy.catalogue import parse_catalogue
from enforcer.policy.loader import revision_of
from enforcer.policy.matrix import access_matrix

__all__ = ["AuditError", "AuditOptions", "NetOptions", "Report", "build_report", "register", "run"]


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """What to audit: the policy directory, and optionally the live installation."""

    config: HiveConfig
    policy_dir: Path
    live: bool = False
    probe: bool = False
    strict_coverage: bool = True
    net: NetOptions = field(default_factory=NetOptions)


def _catalogue(facts: PolicyFacts) -> dict[str, Any]:
    if facts.policy is not None:
        return dict(facts.policy.catalogue)
    # The policy does not validate: judge the routes against its catalogue alone.
    return dict(parse_catalogue(facts.texts.get("catalogue.toml", ""))[0])


def _network_section(opts: AuditOptions, facts: PolicyFacts) -> tuple[Section, list[Any]]:
    title = f"Network (nftables table inet {opts.net.table})"
    if facts.policy is None:
        skip = Check(
            "network", "network layer", Status.SKIP, "not run: the policy does not validate"
        )
        return Section("network", title, (skip,)), []
    m = manager(facts.policy.network, opts.net, opts.config.run_dir)
    checks: list[Check] = []
    tables = []
    cells: list[Any] = []
    if opts.live:
        checks.append(judge_drift(gather_drift(m)))
    if opts.probe:
        result = gather_probe(m, opts.net)
        checks.append(judge_probe(result))
        tables.append(probe_table(result))
        cells = result.to_json()["cells"]
    return Section("network", title, tuple(checks), tuple(tables)), cells


def build_report(opts: AuditOptions, *, route_facts: list[RouteFact] | None = None) -> Report:
    """Run every requested check; :class:`AuditError` when the audit cannot run.

    ``route_facts`` replaces the introspected route tables (to audit other
    applications, e.g. :func:`enforcer.audit.routes.app_routes` of a test app).
    """
    if (opts.live or opts.probe) and os.geteuid() != 0:
        raise AuditError("--live and --probe need root (other users' /proc, nftables, netns)")
    facts = gather_policy(opts.policy_dir)
    sections = [policy_section(facts, strict_coverage=opts.strict_coverage)]
    if route_facts is None:
        route_facts = gather_routes(replace(opts.config, policy_dir=opts.policy_dir))
    sections.append(routes_section(route_facts, _catalogue(facts)))
    extras: dict[str, Any] = {}
    if opts.live:
        if not opts.config.run_dir.is_dir():
            raise AuditError(
                f"run directory {opts.config.run_dir} does not exist: is the stack running? "
                "(--config or HIVE_RUN_DIR name another one)"
            )
        sections.append(live_section(gather_live(opts.config)))
    if opts.live or opts.probe:
        net, cells = _network_section(opts, facts)
        sections.append(net)
        extras["reachability"] = cells
    if facts.policy is not None:
        p = facts.policy
        extras["matrix"] = access_matrix(p).to_json()
        extras["classes"] = {a: s.authority.value for a, s in p.catalogue.items()}
        policy_checks = sections[0].checks
        extras["flagged_lines"] = sorted(
            {f.where for c in policy_checks if c.failed for f in c.findings if f.where}
        )
        revision = p.revision
    else:
        revision = revision_of(facts.texts)
    return Report(str(opts.policy_dir), revision, tuple(sections), extras)


def _options(args: argparse.Namespace) -> AuditOptions:
    try:
        config = load_config(args.config)
    except HiveError as e:
        raise AuditError(e.reason) from e
    net = NetOptions(
        table=args.table,
        prefix=args.netns_prefix,
        ifprefix=args.ifprefix,
        state_path=args.netns_state,
        outside_v4=args.outside_v4,
        outside_v6=args.outside_v6,
    )
    return AuditOptions(
        config,
        args.policy or config.policy_dir,
        live=args.live,
        probe=args.probe,
        strict_coverage=args.strict_coverage,
        net=net,
    )


def run(args: argparse.Namespace) -> int:
    """``hive-boundary audit``: print the report; 0 all hold, 1 findings, 2 could not run."""
    # Daemon modules log (policy loads) while the apps are built: keep stdout
    # for the report, and only warnings on stderr.
    configure_logging(sys.stderr, level=logging.WARNING)
    try:
        report = build_report(_options(args))
        if args.html is not None:
            try:
                args.html.write_text(render_html(report), encoding="utf-8")
            except OSError as e:
                raise AuditError(f"cannot write {args.html}: {e.strerror}") from e
    except AuditError as e:
        if args.json:
            print(json.dumps({"ok": False, "exit_code": EXIT_COULD_NOT_RUN, "error": e.reason}))
        print(f"hive-boundary audit: could not run: {e.reason}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    print(render_json(report) if args.json else render_text(report))
    return report.exit_code


def register(subparsers: Any) -> None:
    """Add ``audit`` to the ``hive-boundary`` parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="check every layer against the policy (exit 1 on any finding)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--policy",
        type=Path,
        metavar="DIR",
        help="policy directory to audit (default: the config's policy_dir, else the shipped one)",
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="hive.toml (default /etc/hive/hive.toml)"
    )
    p.add_argument("--live", action="store_true", help="also audit the running installation")
    p.add_argument("--probe", action="store_true", help="also run the connectivity probe")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")
    p.add_argument(
        "--lenient-coverage",
        dest="strict_coverage",
        action="store_false",
        help="untested operator-class actions are only a warning (default: a finding)",
    )
    net = p.add_argument_group("network layer (--live/--probe)")
    net.add_argument("--table", default="hive", help="the nftables table (inet) hive-priv owns")
    net.add_argument("--netns-prefix", default="hive-", help="namespace name prefix")
    net.add_argument("--ifprefix", default="hv-", help="host-side veth name prefix")
    net.add_argument(
        "--netns-state",
        type=Path,
        default=None,
        help="inventory JSON (default RUN/netns-TABLE.json)",
    )
    net.add_argument("--outside-v4", default="198.18.0.0/30", help="/30 the probe's outside uses")
    net.add_argument("--outside-v6", default="2001:db8:4869::/126", help="/126 for it")
    p.set_defaults(run=run)
