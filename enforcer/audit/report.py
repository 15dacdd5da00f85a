"""The audit's plain data: checks, findings, tables, sections, the report.

Pure: every check of :mod:`enforcer.audit` returns a :class:`Check`; a
:class:`Report` is sections of checks (and tables to show), and its exit code
is 0 when every check holds, 1 when any check failed. "Could not run" (exit
2) is not a report: it is :class:`AuditError`, raised before one exists.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from enforcer.errors import HiveError

__all__ = [
    "EXIT_COULD_NOT_RUN",
    "EXIT_FINDINGS",
    "EXIT_OK",
    "AuditError",
    "Check",
    "Finding",
    "Report",
    "Section",
    "Status",
    "Table",
    "check",
]

EXIT_OK, EXIT_FINDINGS, EXIT_COULD_NOT_RUN = 0, 1, 2


class AuditError(HiveError):
    """The audit could not run at all (unreadable policy or config, not root, ...)."""

    code = "audit_could_not_run"


class Status(enum.StrEnum):
    """A check's outcome. Only ``fail`` changes the exit code."""

    PASS = "pass"  # noqa: S105 - a check outcome, not a password
    FAIL = "fail"
    WARN = "warn"  # something to look at that does not break the boundary
    SKIP = "skip"  # not applicable or prevented by an earlier failure (says why)


@dataclass(frozen=True, slots=True)
class Finding:
    """One concrete thing that is wrong: what, and where (``policy.csv:12``, a path, a pid)."""

    what: str
    where: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"what": self.what, "where": self.where, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Table:
    """Rows to show under a section (the facts a check judged)."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "title": self.title,
            "headers": list(self.headers),
            "rows": [list(r) for r in self.rows],
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One audited property and its outcome."""

    id: str
    title: str
    status: Status
    summary: str
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """True when this check breaks the audit (exit code 1)."""
        return self.status is Status.FAIL

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "summary": self.summary,
            "findings": [f.to_json() for f in self.findings],
            "notes": list(self.notes),
        }


def check(
    id: str,
    title: str,
    findings: Iterable[Finding],
    *,
    ok: str,
    bad: str | None = None,
    notes: Sequence[str] = (),
) -> Check:
    """PASS with summary ``ok`` when there is no finding, else FAIL (``bad`` or a count)."""
    found = tuple(findings)
    if not found:
        return Check(id, title, Status.PASS, ok, (), tuple(notes))
    return Check(id, title, Status.FAIL, bad or f"{len(found)} finding(s)", found, tuple(notes))


@dataclass(frozen=True, slots=True)
class Section:
    """One layer of the audit: its checks and the tables of facts behind them."""

    name: str
    title: str
    checks: tuple[Check, ...]
    tables: tuple[Table, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "title": self.title,
            "checks": [c.to_json() for c in self.checks],
            "tables": [t.to_json() for t in self.tables],
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Everything one audit run found; ``extras`` carries the pictures' data
    (``matrix``: the access matrix, ``reachability``: probe cells)."""

    policy_dir: str
    revision: str
    sections: tuple[Section, ...]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def checks(self) -> list[Check]:
        """Every check of every section."""
        return [c for s in self.sections for c in s.checks]

    @property
    def findings(self) -> list[tuple[Check, Finding]]:
        """Every finding of every failed check, with its check."""
        return [(c, f) for c in self.checks if c.failed for f in c.findings]

    @property
    def ok(self) -> bool:
        """No check failed."""
        return not any(c.failed for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when everything holds, 1 on any failed check."""
        return EXIT_OK if self.ok else EXIT_FINDINGS

    def check(self, check_id: str) -> Check:
        """The check with this id (KeyError if the audit did not run it)."""
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (what ``--json`` prints)."""
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "policy_dir": self.policy_dir,
            "revision": self.revision,
            "findings": len(self.findings),
            "sections": [s.to_json() for s in self.sections],
            **self.extras,
        }
