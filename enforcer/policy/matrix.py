"""The access matrix: subjects (principals, the generic agent, roles) x actions.

Pure: computed from a loaded policy's lines and role graph. ``policy matrix``
prints it and ``policy diff`` compares two of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from enforcer.policy.loader import Policy
from enforcer.policy.syntax import AGENT_PATTERN, FIXED_PRINCIPALS, agent_name, is_role
from enforcer.policy.types import SourceLine

__all__ = ["Access", "AccessMatrix", "access_matrix"]


@dataclass(frozen=True, slots=True)
class Access:
    """One thing a subject may do: an action, on a channel, for a resource pattern."""

    action: str
    channel: str
    resource: str
    rule: SourceLine


@dataclass(frozen=True, slots=True)
class AccessMatrix:
    """``cells[subject]`` is everything that subject may do (directly or via roles)."""

    revision: str
    subjects: tuple[str, ...]
    actions: tuple[str, ...]
    cells: dict[str, tuple[Access, ...]]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "revision": self.revision,
            "subjects": list(self.subjects),
            "actions": list(self.actions),
            "cells": {
                s: [
                    {
                        "action": a.action,
                        "channel": a.channel,
                        "resource": a.resource,
                        "rule": f"{a.rule.file}:{a.rule.line}",
                    }
                    for a in accesses
                ]
                for s, accesses in self.cells.items()
            },
        }


def subjects_of(policy: Policy) -> tuple[str, ...]:
    """Rows of the matrix: fixed principals, every agent (``agent:*``), named agents, roles."""
    named = {g.sub for g in policy.lines} | {lk.member for lk in policy.roles}
    named |= {lk.role for lk in policy.roles}
    agents = sorted(n for n in named if agent_name(n) is not None)
    roles = sorted(n for n in named if is_role(n))
    return (*FIXED_PRINCIPALS, AGENT_PATTERN, *agents, *roles)


def access_matrix(policy: Policy) -> AccessMatrix:
    """Compute the matrix."""
    graph = policy.index.graph
    cells: dict[str, tuple[Access, ...]] = {}
    for subject in subjects_of(policy):
        if subject == AGENT_PATTERN or is_role(subject):
            held = {subject, *graph.closure(subject)}
        else:
            held = set(graph.subjects_of(subject))
        cells[subject] = tuple(
            sorted(
                (Access(g.act, g.chan, g.obj, g.src) for g in policy.lines if g.sub in held),
                key=lambda x: (x.action, x.channel, x.resource, x.rule.line),
            )
        )
    return AccessMatrix(policy.revision, subjects_of(policy), tuple(policy.catalogue), cells)
