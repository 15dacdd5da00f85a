"""The vocabulary of the policy: principals, roles, channels, names, resource patterns.

Pure functions on strings; the loader, the index and the CLI share them so
that "well formed" means one thing everywhere.
"""

from __future__ import annotations

import re

from enforcer.names import AGENT_NAME

__all__ = [
    "AGENT_PATTERN",
    "CHANNELS",
    "CONTROL_CHARACTER",
    "FIXED_PRINCIPALS",
    "SELF",
    "action_name_problem",
    "agent_name",
    "decoded_control_problem",
    "is_principal",
    "is_role",
    "resource_owner",
    "resource_pattern_problem",
]

#: Every channel a request can arrive on.
CHANNELS: tuple[str, ...] = ("gateway", "socket", "priv")
#: Principals that are not agents.
FIXED_PRINCIPALS: tuple[str, ...] = ("operator", "anonymous", "service:core")
#: In a ``g`` line, the member standing for every agent.
AGENT_PATTERN = "agent:*"
#: In a resource pattern, the requesting agent's own name.
SELF = "{self}"

_NAME = r"[a-z][a-z0-9-]{0,30}"
_AGENT = re.compile(rf"agent:({AGENT_NAME})")
_ROLE = re.compile(rf"role:{_NAME}")
_ACTION = re.compile(r"[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*")
_RESOURCE_CHARS = re.compile(r"[A-Za-z0-9_.:/@+=-]*")
_OWNER = re.compile(rf"agent:({AGENT_NAME})(?:/|$)")


def agent_name(principal: str) -> str | None:
    """The name of an ``agent:<name>`` principal, or None for anything else."""
    m = _AGENT.fullmatch(principal)
    return m.group(1) if m else None


def is_principal(text: str) -> bool:
    """True for ``operator``, ``anonymous``, ``service:core`` and ``agent:<name>``."""
    return text in FIXED_PRINCIPALS or agent_name(text) is not None


def is_role(text: str) -> bool:
    """True for ``role:<name>``."""
    return _ROLE.fullmatch(text) is not None


def action_name_problem(name: str) -> str | None:
    """Why ``name`` is not a well-formed action name, or None."""
    if not _ACTION.fullmatch(name):
        return f"malformed action name {name!r} (dotted lower-case words, e.g. state.read)"
    return None


def resource_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a well-formed policy resource pattern, or None.

    A pattern is a literal resource, optionally ending in ``*`` (prefix match);
    ``{self}`` (the requesting agent) may appear, nothing else in braces.
    """
    if not pattern:
        return "empty resource"
    body = pattern[:-1] if pattern.endswith("*") else pattern
    if "*" in body:
        return f"resource {pattern!r}: '*' is allowed only as the last character"
    literal = body.replace(SELF, "")
    if "{" in literal or "}" in literal:
        return f"resource {pattern!r}: the only placeholder is {SELF}"
    if not _RESOURCE_CHARS.fullmatch(literal):
        return f"resource {pattern!r}: unexpected character(s)"
    return None


def resource_owner(resource: str) -> str | None:
    """The agent a concrete resource belongs to (``agent:<name>`` or below it), else None."""
    m = _OWNER.match(resource)
    return m.group(1) if m else None


CONTROL_CHARACTER = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\u2028\\u2029]")
"""What a policy file may not hold: C0 controls but tab, newline and carriage
return, DEL and C1 controls, and the Unicode line and paragraph separators.
``str.splitlines()`` breaks lines at several of them where an editor, git or a
reviewer sees none (a grant hidden in what reads as a comment), and terminal
escapes in a case's text would repaint the CLI's output."""


def decoded_control_problem(data: object, source: str) -> str | None:
    """The first value of decoded TOML ``data`` holding a control character, as a problem.

    TOML escapes (``"\\u001b"``) decode to the very characters the raw-text check
    refuses, so the decoded values are checked too.
    """
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            found = CONTROL_CHARACTER.search(value)
            if found is not None:
                return (
                    f"{source}: {where or 'a value'}: control character "
                    f"U+{ord(found.group()):04X} (plain text only)"
                )
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return None
