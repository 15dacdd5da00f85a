"""``tests.toml``: the policy's own expected decisions, run before a version goes live."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from enforcer.policy.syntax import CHANNELS, decoded_control_problem
from enforcer.policy.types import AccessRequest, ActionSpec, Decision, SourceLine

__all__ = ["Case", "CaseResult", "parse_cases", "run_cases"]

_HEADER = re.compile(r"^\s*\[\[\s*case\s*\]\]")
_KEYS = {"principal", "channel", "resource", "action", "expect", "why"}


@dataclass(frozen=True, slots=True)
class Case:
    """One expected decision."""

    request: AccessRequest
    expect_allow: bool
    why: str
    src: SourceLine


@dataclass(frozen=True, slots=True)
class CaseResult:
    """A case and what the policy decided."""

    case: Case
    decision: Decision

    @property
    def passed(self) -> bool:
        """Did the decision match the expectation?"""
        return self.decision.allowed == self.case.expect_allow

    def failure(self) -> str:
        """``tests.toml:N: ...`` describing the mismatch."""
        c = self.case
        r = c.request
        want = "allow" if c.expect_allow else "deny"
        got = "allow" if self.decision.allowed else "deny"
        text = (
            f"{c.src.file}:{c.src.line}: expected {want}, got {got} for "
            f"({r.principal}, {r.channel}, {r.resource}, {r.action}): {self.decision.reason}"
        )
        return text + (f" [{c.why}]" if c.why else "")


def parse_cases(
    text: str, catalogue: Mapping[str, ActionSpec], source: str = "tests.toml"
) -> tuple[list[Case], list[str]]:
    """Parse the expected cases: (cases, problems)."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [], [f"{source}: invalid TOML: {e}"]
    except RecursionError:  # tomllib recurses per nesting level
        return [], [f"{source}: invalid TOML: nested too deeply"]
    if (problem := decoded_control_problem(data, source)) is not None:
        return [], [problem]
    starts = [n for n, raw in enumerate(text.splitlines(), 1) if _HEADER.match(raw)]
    problems: list[str] = []
    extra = sorted(set(data) - {"case"})
    if extra:
        problems.append(f"{source}: unknown top-level key(s) {', '.join(extra)} (only [[case]])")
    raw_cases = data.get("case", [])
    if not isinstance(raw_cases, list):
        return [], [*problems, f"{source}: 'case' must be an array of tables ([[case]])"]
    cases: list[Case] = []
    for i, raw in enumerate(raw_cases):
        line = starts[i] if i < len(starts) else 0
        where = f"{source}:{line}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: a case must be a table")
            continue
        unknown = sorted(set(raw) - _KEYS)
        missing = sorted(_KEYS - {"why"} - set(raw))
        if unknown or missing:
            what = []
            if unknown:
                what.append(f"unknown key(s) {', '.join(unknown)}")
            if missing:
                what.append(f"missing key(s) {', '.join(missing)}")
            problems.append(f"{where}: {'; '.join(what)}")
            continue
        if not all(isinstance(v, str) for v in raw.values()):
            problems.append(f"{where}: every value must be a string")
            continue
        if raw["expect"] not in ("allow", "deny"):
            problems.append(f"{where}: expect must be 'allow' or 'deny', got {raw['expect']!r}")
            continue
        if raw["action"] not in catalogue:
            problems.append(f"{where}: unknown action {raw['action']!r} (not in catalogue.toml)")
            continue
        if raw["channel"] not in CHANNELS:
            problems.append(f"{where}: unknown channel {raw['channel']!r}")
            continue
        req = AccessRequest(raw["principal"], raw["channel"], raw["resource"], raw["action"])
        shown = f"[[case]] {raw['principal']} {raw['channel']} {raw['resource']} {raw['action']}"
        cases.append(
            Case(req, raw["expect"] == "allow", raw.get("why", ""), SourceLine(source, line, shown))
        )
    return cases, problems


def run_cases(
    decide: Callable[[AccessRequest], Decision], cases: Iterable[Case]
) -> list[CaseResult]:
    """Decide every case."""
    return [CaseResult(c, decide(c.request)) for c in cases]
