"""The policy layer of the audit: validation, invariants, expected cases, coverage, proof.

Gather (:func:`gather_policy`, file reads) is apart from judging (the
``judge_*`` functions, pure). The engine refuses to load a policy that breaks
an invariant, so the audit builds the policy *unchecked*
(``build_policy(..., invariants=False, run_expected=False)``) and asks
:func:`~enforcer.policy.invariants.invariant_problems` and
:func:`~enforcer.policy.proof.prove` itself: a violation is then reported with
its line and a concrete counterexample instead of a bare refusal.

Coverage: an action is *exercised* when some ``tests.toml`` case names it
(allow or deny). Uncovered actions are a warning (listed, exit code
unchanged); with ``strict_coverage`` uncovered *operator-class* actions are
findings, since an untested operator action is where a grant to the wrong
principal would slip through unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from enforcer.audit.report import AuditError, Check, Finding, Section, Status, Table, check
from enforcer.policy import AuthorityClass, PolicyError, PolicyUnreadable
from enforcer.policy.cases import run_cases
from enforcer.policy.invariants import invariant_problems
from enforcer.policy.lines import RoleGraph
from enforcer.policy.loader import Policy, build_policy, read_files
from enforcer.policy.proof import ProofReport, prove
from enforcer.policy.types import SourceLine

__all__ = [
    "PolicyFacts",
    "gather_policy",
    "judge_coverage",
    "judge_invariants",
    "judge_proof",
    "judge_tests",
    "judge_validation",
    "policy_section",
]

_WHERE = re.compile(r"^([\w.-]+:\d+): (.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What the policy directory says: its texts, and the unchecked policy if it parses."""

    directory: Path
    texts: dict[str, str]
    policy: Policy | None  # None when the files do not even parse
    problems: tuple[str, ...]  # structural problems (``file:line: what``)


def gather_policy(directory: Path) -> PolicyFacts:
    """Read and parse ``directory`` without the invariants or the expected cases.

    Raises :class:`AuditError` when the directory or a file cannot be read (exit 2).
    """
    try:
        texts = read_files(directory)
    except PolicyUnreadable as e:
        raise AuditError(e.reason) from e
    try:
        policy = build_policy(texts, directory, invariants=False, run_expected=False)
    except PolicyError as e:
        return PolicyFacts(directory, texts, None, e.problems)
    return PolicyFacts(directory, texts, policy, ())


def _finding(problem: str) -> Finding:
    m = _WHERE.match(problem)
    return Finding(m.group(2), m.group(1)) if m else Finding(problem)


def _line_text(facts: PolicyFacts, where: str) -> str:
    file, _, line = where.partition(":")
    lines = facts.texts.get(file, "").splitlines()
    n = int(line) if line.isdigit() else 0
    return lines[n - 1].strip() if 0 < n <= len(lines) else ""


def judge_validation(facts: PolicyFacts) -> Check:
    """Every file parses and is well formed (model, catalogue, lines, roles, network, cases)."""
    return check(
        "policy.valid",
        "files parse and validate",
        (_finding(p) for p in facts.problems),
        ok=f"{len(facts.texts)} files valid",
        bad=f"{len(facts.problems)} problem(s): the engine would refuse this policy",
    )


def _skipped(id: str, title: str) -> Check:
    return Check(id, title, Status.SKIP, "not run: the policy does not validate")


def judge_invariants(facts: PolicyFacts) -> Check:
    """The load-time invariants (the design rule), each broken one naming its line."""
    title = "load-time invariants (no operator action for agents, one channel per class)"
    if facts.policy is None:
        return _skipped("policy.invariants", title)
    p = facts.policy
    found = []
    for problem in invariant_problems(p.lines, RoleGraph(p.roles), p.catalogue):
        f = _finding(problem)
        found.append(Finding(f.what, f.where, {"line": _line_text(facts, f.where)}))
    return check("policy.invariants", title, found, ok="every invariant holds")


def judge_tests(facts: PolicyFacts) -> Check:
    """The policy's own expected cases (``tests.toml``)."""
    title = "the policy's own tests (tests.toml)"
    if facts.policy is None:
        return _skipped("policy.tests", title)
    results = run_cases(facts.policy.decide, facts.policy.tests)
    found = [_finding(r.failure()) for r in results if not r.passed]
    return check("policy.tests", title, found, ok=f"{len(results)} case(s) pass")


def judge_coverage(facts: PolicyFacts, *, strict: bool = False) -> Check:
    """Which catalogue actions no expected case exercises (see the module docstring)."""
    title = "test coverage of the catalogue"
    if facts.policy is None:
        return _skipped("policy.coverage", title)
    p = facts.policy
    named = {c.request.action for c in p.tests}
    uncovered = [a for a in p.catalogue if a not in named]
    if not uncovered:
        return Check("policy.coverage", title, Status.PASS, f"all {len(p.catalogue)} actions")
    operator = [a for a in uncovered if p.catalogue[a].authority is AuthorityClass.OPERATOR]
    others = [a for a in uncovered if a not in operator]
    summary = (
        f"{len(p.catalogue) - len(uncovered)}/{len(p.catalogue)} actions exercised; "
        f"{len(operator)} operator-class and {len(others)} other action(s) untested"
    )
    findings = tuple(
        Finding(f"operator-class action {a} is exercised by no case", "tests.toml")
        for a in operator
    )
    notes = tuple(f"untested: {a} ({p.catalogue[a].authority.value})" for a in others)
    if strict and findings:
        return Check("policy.coverage", title, Status.FAIL, summary, findings, notes)
    notes = tuple(str(f) for f in findings) + notes
    return Check("policy.coverage", title, Status.WARN, summary, (), notes)


def _rule(src: SourceLine | None) -> str:
    return f"{src.file}:{src.line}" if src is not None else "-"


def judge_proof(facts: PolicyFacts, proof: ProofReport | None) -> Check:
    """The request-space proof: each distinct violation with a counterexample and its line."""
    title = "proof over the whole abstract request space"
    if facts.policy is None or proof is None:
        return _skipped("policy.proof", title)
    seen: dict[tuple[str, str], Finding] = {}
    for v in proof.violations:
        key = (_rule(v.rule), v.what)
        if key in seen:
            continue
        r = v.request
        seen[key] = Finding(
            f"{v.what}: e.g. ({r.principal}, {r.channel}, {r.resource}, {r.action}) is allowed",
            _rule(v.rule),
            {
                "principal": r.principal,
                "channel": r.channel,
                "resource": r.resource,
                "action": r.action,
                "line": v.rule.text if v.rule is not None else "",
            },
        )
    return check(
        "policy.proof",
        title,
        seen.values(),
        ok=(
            f"{proof.requests_checked} requests over {len(proof.principals)} principals: "
            "no agent gets anything but its own agent-self actions on its socket"
        ),
        bad=f"{len(seen)} distinct violation(s) in {len(proof.violations)} allowed request(s)",
    )


def _agent_table(proof: ProofReport) -> Table:
    rows = tuple(
        (g.principal, g.channel, g.action, g.resource_class, g.example.resource, _rule(g.rule))
        for g in sorted(
            proof.agent_grants, key=lambda g: (g.principal, g.channel, g.action, g.resource_class)
        )
    )
    return Table(
        "every allowed (principal, channel, action) for agent principals",
        ("principal", "channel", "action", "resource", "example", "line"),
        rows,
    )


def policy_section(facts: PolicyFacts, *, strict_coverage: bool = False) -> Section:
    """The policy layer's checks (runs the proof when the policy parses)."""
    proof = prove(facts.policy) if facts.policy is not None else None
    checks = (
        judge_validation(facts),
        judge_invariants(facts),
        judge_tests(facts),
        judge_coverage(facts, strict=strict_coverage),
        judge_proof(facts, proof),
    )
    tables = (_agent_table(proof),) if proof is not None else ()
    return Section("policy", f"Policy ({facts.directory})", checks, tables)
