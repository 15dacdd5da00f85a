"""Plain data of the policy layer: requests, decisions, policy lines, actions."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "AccessRequest",
    "ActionSpec",
    "AuthorityClass",
    "Decision",
    "Grant",
    "RoleLink",
    "SourceLine",
]


class AuthorityClass(enum.StrEnum):
    """Who may ever hold an action (catalogue.toml ``class``)."""

    OPERATOR = "operator"
    AGENT_SELF = "agent-self"
    PUBLIC = "public"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One catalogue entry."""

    name: str
    authority: AuthorityClass
    resource: str
    description: str


@dataclass(frozen=True, slots=True)
class SourceLine:
    """Where a policy line came from, for errors and explanations."""

    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """(principal, channel, resource, action): the unit every decision is about."""

    principal: str
    channel: str
    resource: str
    action: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to an :class:`AccessRequest`.

    ``rule`` is the policy line that allowed it (None when denied);
    ``reason`` says why in words; ``revision`` is the policy's content hash
    ("none" when no valid policy is loaded, in which case everything is denied).
    """

    allowed: bool
    rule: SourceLine | None
    reason: str
    revision: str


class Grant(NamedTuple):
    """A ``p`` line: ``subject`` may perform ``act`` on ``chan`` for resources matching ``obj``."""

    sub: str
    chan: str
    obj: str
    act: str
    src: SourceLine


class RoleLink(NamedTuple):
    """A ``g`` line: ``member`` (a principal, ``agent:*`` or a role) holds ``role``."""

    member: str
    role: str
    src: SourceLine
