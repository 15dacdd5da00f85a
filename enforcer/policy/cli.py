"""``hive-boundary policy ...``: check, test, explain, diff, matrix.

Exit codes: 0 ok (explain: allowed; diff: no change), 1 findings (invalid
policy, failing case, denied request, changes), 2 usage or unreadable input.
Every subcommand takes ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enforcer.config import default_policy_dir
from enforcer.policy.diff import diff_policies
from enforcer.policy.errors import PolicyError, PolicyUnreadable
from enforcer.policy.loader import Policy, load_policy
from enforcer.policy.matrix import access_matrix
from enforcer.policy.types import AccessRequest, AuthorityClass

__all__ = ["register"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
_CHANNEL_SHORT = {"gateway": "G", "socket": "S", "priv": "P"}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def _load(args: argparse.Namespace, directory: Path | None, *, run_expected: bool) -> Policy | int:
    """Load a policy or report why not; returns an exit code on failure."""
    path = directory or default_policy_dir()
    try:
        return load_policy(path, run_expected=run_expected)
    except PolicyUnreadable as e:
        _emit(
            args,
            {"ok": False, "directory": str(path), "problems": list(e.problems)},
            f"error: {e.reason}",
        )
        return EXIT_USAGE
    except PolicyError as e:
        _emit(
            args,
            {"ok": False, "directory": str(path), "problems": list(e.problems)},
            f"{path}: invalid policy ({len(e.problems)} problem(s)):\n"
            + "\n".join(f"  {p}" for p in e.problems),
        )
        return EXIT_FINDINGS


def _check(args: argparse.Namespace) -> int:
    policy = _load(args, args.dir, run_expected=False)
    if isinstance(policy, int):
        return policy
    _emit(
        args,
        {
            "ok": True,
            "directory": str(policy.directory),
            "revision": policy.revision,
            "lines": len(policy.lines),
            "roles": len(policy.roles),
            "actions": len(policy.catalogue),
            "cases": len(policy.tests),
        },
        f"{policy.directory}: ok, revision {policy.revision}: {len(policy.lines)} grant(s), "
        f"{len(policy.roles)} role line(s), {len(policy.catalogue)} action(s); "
        "every invariant holds",
    )
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    policy = _load(args, args.dir, run_expected=False)
    if isinstance(policy, int):
        return policy
    results = policy.run_tests()
    failed = [r for r in results if not r.passed]
    rows = []
    for r in results:
        req = r.case.request
        rule = r.decision.rule
        rows.append(
            [
                "PASS" if r.passed else "FAIL",
                f"{r.case.src.file}:{r.case.src.line}",
                req.principal,
                req.channel,
                req.resource,
                req.action,
                "allow" if r.case.expect_allow else "deny",
                f"{rule.file}:{rule.line}" if rule else "-",
            ]
        )
    text = table(
        ["result", "case", "principal", "channel", "resource", "action", "expect", "rule"], rows
    )
    text += f"\n\n{len(results) - len(failed)} passed, {len(failed)} failed"
    for r in failed:
        text += f"\n  {r.failure()}"
    data = {
        "ok": not failed,
        "revision": policy.revision,
        "passed": len(results) - len(failed),
        "failed": len(failed),
        "cases": [
            {
                "case": f"{r.case.src.file}:{r.case.src.line}",
                "principal": r.case.request.principal,
                "channel": r.case.request.channel,
                "resource": r.case.request.resource,
                "action": r.case.request.action,
                "expect": "allow" if r.case.expect_allow else "deny",
                "got": "allow" if r.decision.allowed else "deny",
                "passed": r.passed,
                "reason": r.decision.reason,
            }
            for r in results
        ],
    }
    _emit(args, data, text)
    return EXIT_FINDINGS if failed else EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    policy = _load(args, args.policy, run_expected=False)
    if isinstance(policy, int):
        return policy
    req = AccessRequest(args.principal, args.channel, args.resource, args.action)
    d = policy.explain(req)
    verdict = "ALLOW" if d.allowed else "DENY"
    _emit(
        args,
        {
            "principal": req.principal,
            "channel": req.channel,
            "resource": req.resource,
            "action": req.action,
            "decision": "allow" if d.allowed else "deny",
            "rule": f"{d.rule.file}:{d.rule.line}" if d.rule else None,
            "reason": d.reason,
            "revision": d.revision,
        },
        f"{verdict}: {d.reason}",
    )
    return EXIT_OK if d.allowed else EXIT_FINDINGS


def _diff(args: argparse.Namespace) -> int:
    old = _load(args, args.old, run_expected=False)
    if isinstance(old, int):
        return old
    new = _load(args, args.new, run_expected=False)
    if isinstance(new, int):
        return new
    d = diff_policies(old, new)
    rows = [
        [
            c.subject,
            "gained" if c.sign == "+" else "lost",
            c.action,
            c.channel,
            c.resource,
            f"{c.rule.file}:{c.rule.line}",
        ]
        for c in d.changes
    ]
    text = (
        table(["subject", "change", "action", "channel", "resource", "line"], rows)
        if rows
        else "no subject gained or lost anything"
    )
    _emit(args, d.to_json(), f"{old.revision} -> {new.revision}\n{text}")
    return EXIT_FINDINGS if d.changes else EXIT_OK


def _matrix(args: argparse.Namespace) -> int:
    policy = _load(args, args.dir, run_expected=False)
    if isinstance(policy, int):
        return policy
    m = access_matrix(policy)
    # Columns are subjects; a cell lists the channels (G gateway, S socket,
    # P priv) on which the subject holds the action (resources: --json).
    order = {c: i for i, c in enumerate(AuthorityClass)}
    actions = sorted(m.actions, key=lambda a: (order[policy.catalogue[a].authority], a))
    rows = []
    for act in actions:
        row: list[object] = [act, policy.catalogue[act].authority.value]
        for s in m.subjects:
            chans = sorted({_CHANNEL_SHORT[x.channel] for x in m.cells[s] if x.action == act})
            row.append("".join(chans) or ".")
        rows.append(row)
    text = table(["action", "class", *m.subjects], rows)
    text += "\n\nG gateway, S socket, P priv; '.' not allowed. Roles include what they inherit."
    _emit(args, m.to_json(), text)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``policy check|test|explain|diff|matrix`` to the ``hive-boundary`` parser."""
    policy = subparsers.add_parser(
        "policy", help="validate, test, explain, diff and show the policy"
    )
    sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    sub.required = True
    dir_help = "policy directory (default: the shipped policies/)"

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = add("check", "validate a policy directory and its invariants")
    p.add_argument("dir", nargs="?", type=Path, metavar="DIR", help=dir_help)
    p.set_defaults(run=_check)
    p = add("test", "run the policy's expected cases (tests.toml)")
    p.add_argument("dir", nargs="?", type=Path, metavar="DIR", help=dir_help)
    p.set_defaults(run=_test)
    p = add("explain", "which line allows a request, or why nothing does (exit 1 if denied)")
    p.add_argument("principal", metavar="PRINCIPAL")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("resource", metavar="RESOURCE")
    p.add_argument("action", metavar="ACTION")
    p.add_argument("--policy", type=Path, metavar="DIR", help=dir_help)
    p.set_defaults(run=_explain)
    p = add("diff", "who gained or lost which action between two versions (exit 1 if any)")
    p.add_argument("old", type=Path, metavar="OLD_DIR")
    p.add_argument("new", type=Path, metavar="NEW_DIR")
    p.set_defaults(run=_diff)
    p = add("matrix", "subjects (principals, agents, roles) x actions")
    p.add_argument("dir", nargs="?", type=Path, metavar="DIR", help=dir_help)
    p.set_defaults(run=_matrix)


if __name__ == "__main__":  # pragma: no cover
    from enforcer.cli import main

    sys.exit(main(["policy", *sys.argv[1:]]))
