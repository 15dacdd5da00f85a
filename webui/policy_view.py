"""The policy page's model: the access matrix as a grid, and one cell explained.

Pure functions of a loaded :class:`enforcer.policy.Policy`, built on the
policy engine's own :func:`enforcer.policy.matrix.access_matrix` and
``Policy.explain`` - the page shows what the engine decides, never a second
opinion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from enforcer.policy import AccessRequest, AuthorityClass, Policy
from enforcer.policy.catalogue import CLASS_CHANNEL
from enforcer.policy.matrix import Access, access_matrix
from enforcer.policy.syntax import AGENT_PATTERN, is_principal

__all__ = [
    "EXAMPLE_AGENT",
    "CellExplanation",
    "Column",
    "Grid",
    "Row",
    "example_request",
    "explain_cell",
    "policy_grid",
]

EXAMPLE_AGENT = "example"
"""The agent name concrete explanations use for ``agent:*`` and ``{self}``/``{name}``."""

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_FILL = {"self": EXAMPLE_AGENT, "name": EXAMPLE_AGENT, "id": "1", "path": "notes.txt"}


@dataclass(frozen=True, slots=True)
class Column:
    """A subject of the matrix: a principal, every agent (``agent:*``) or a role."""

    subject: str
    kind: str  # "principal" | "agents" | "role"


@dataclass(frozen=True, slots=True)
class Row:
    """One action: its authority class and, per column, whether anything grants it."""

    action: str
    authority: str
    description: str
    operator_class: bool
    allowed: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class Grid:
    """The whole matrix, rows grouped by authority class (operator first)."""

    revision: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


_CLASS_ORDER = {
    AuthorityClass.OPERATOR: 0,
    AuthorityClass.PUBLIC: 1,
    AuthorityClass.AGENT_SELF: 2,
    AuthorityClass.SYSTEM: 3,
}


def _kind(subject: str) -> str:
    if subject == AGENT_PATTERN:
        return "agents"
    return "principal" if is_principal(subject) else "role"


def policy_grid(policy: Policy) -> Grid:
    """The access matrix: a column per subject, a row per catalogue action."""
    matrix = access_matrix(policy)
    granted = {s: {a.action for a in matrix.cells.get(s, ())} for s in matrix.subjects}
    specs = sorted(
        policy.catalogue.values(), key=lambda spec: (_CLASS_ORDER[spec.authority], spec.name)
    )
    rows = tuple(
        Row(
            action=spec.name,
            authority=spec.authority.value,
            description=spec.description,
            operator_class=spec.authority is AuthorityClass.OPERATOR,
            allowed=tuple(spec.name in granted[s] for s in matrix.subjects),
        )
        for spec in specs
    )
    columns = tuple(Column(s, _kind(s)) for s in matrix.subjects)
    return Grid(policy.revision, columns, rows)


def example_request(policy: Policy, subject: str, action: str) -> AccessRequest | None:
    """A concrete request standing for (subject, action), or None for a role.

    The principal is the subject itself (``agent:*`` becomes ``agent:example``);
    the channel is the one the action's authority class lives on; the resource
    is the catalogue's pattern with its placeholders filled in.
    """
    spec = policy.catalogue.get(action)
    if spec is None:
        return None
    principal = f"agent:{EXAMPLE_AGENT}" if subject == AGENT_PATTERN else subject
    if not is_principal(principal):
        return None
    resource = _PLACEHOLDER.sub(lambda m: _FILL.get(m.group(1), "x"), spec.resource)
    return AccessRequest(principal, CLASS_CHANNEL[spec.authority], resource, action)


@dataclass(frozen=True, slots=True)
class CellExplanation:
    """Why a subject may or may not perform an action."""

    subject: str
    action: str
    authority: str
    description: str
    resource_pattern: str
    allowed: bool
    lines: tuple[Access, ...]
    example: AccessRequest | None
    example_allowed: bool | None
    reason: str


def explain_cell(policy: Policy, subject: str, action: str) -> CellExplanation | None:
    """The explanation of one cell; None if the subject or the action is unknown."""
    matrix = access_matrix(policy)
    spec = policy.catalogue.get(action)
    if spec is None or subject not in matrix.cells:
        return None
    lines = tuple(a for a in matrix.cells[subject] if a.action == action)
    example = example_request(policy, subject, action)
    if example is not None:
        decision = policy.explain(example)
        example_allowed: bool | None = decision.allowed
        reason = decision.reason
    else:
        example_allowed = None
        reason = (
            f"{subject} is a role: it is granted {action} by the line(s) below"
            if lines
            else f"no line grants {action} to {subject}: the policy is allow-only, so it is denied"
        )
    return CellExplanation(
        subject=subject,
        action=action,
        authority=spec.authority.value,
        description=spec.description,
        resource_pattern=spec.resource,
        allowed=bool(lines),
        lines=lines,
        example=example,
        example_allowed=example_allowed,
        reason=reason,
    )
