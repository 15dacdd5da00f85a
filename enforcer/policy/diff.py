"""Who gained or lost which action between two policy versions."""

from __future__ import annotations

from dataclasses import dataclass

from enforcer.policy.loader import Policy
from enforcer.policy.matrix import access_matrix
from enforcer.policy.types import SourceLine

__all__ = ["Change", "PolicyDiff", "diff_policies"]


@dataclass(frozen=True, slots=True)
class Change:
    """``subject`` gained (``+``) or lost (``-``) ``action`` on ``channel`` for ``resource``."""

    subject: str
    sign: str
    action: str
    channel: str
    resource: str
    rule: SourceLine  # the new line for a gain, the old one for a loss


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """Every change between two versions; empty when they grant the same."""

    old_revision: str
    new_revision: str
    changes: tuple[Change, ...]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "old_revision": self.old_revision,
            "new_revision": self.new_revision,
            "changes": [
                {
                    "subject": c.subject,
                    "change": "gained" if c.sign == "+" else "lost",
                    "action": c.action,
                    "channel": c.channel,
                    "resource": c.resource,
                    "rule": f"{c.rule.file}:{c.rule.line}",
                }
                for c in self.changes
            ],
        }


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """Compare what every subject (principal, agent, role) may do in ``old`` and ``new``."""
    a, b = access_matrix(old), access_matrix(new)
    subjects = list(dict.fromkeys([*a.subjects, *b.subjects]))
    changes: list[Change] = []
    for s in subjects:
        before = {(x.action, x.channel, x.resource): x.rule for x in a.cells.get(s, ())}
        after = {(x.action, x.channel, x.resource): x.rule for x in b.cells.get(s, ())}
        for key in sorted(after.keys() - before.keys()):
            changes.append(Change(s, "+", *key, after[key]))
        for key in sorted(before.keys() - after.keys()):
            changes.append(Change(s, "-", *key, before[key]))
    return PolicyDiff(old.revision, new.revision, tuple(changes))
