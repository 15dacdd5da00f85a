"""Errors of the policy layer.

Every message names the file and line (``policy.csv:12: ...``) and says what is
wrong, so a policy editor can fix it without reading the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from enforcer.errors import BadRequest

__all__ = ["PolicyError", "PolicyUnreadable"]


class PolicyError(BadRequest):
    """A policy directory is invalid.

    ``reason`` is the first problem (``file:line: what``) followed by a count of
    the others; ``problems`` lists them all, in file order.
    """

    code = "bad_policy"

    def __init__(self, reason: str, problems: Sequence[str] | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems) if problems else (reason,)
        if problems and len(problems) > 1:
            reason = f"{reason} (and {len(problems) - 1} more problem(s))"
        super().__init__(reason)

    @classmethod
    def from_problems(cls, problems: Sequence[str]) -> PolicyError:
        """One error carrying every problem found."""
        return cls(problems[0], problems)


class PolicyUnreadable(PolicyError):
    """A policy directory or one of its files cannot be read at all."""

    code = "policy_unreadable"
