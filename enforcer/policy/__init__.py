"""The policy engine: one Casbin policy, validated, compiled, explained, reloaded.

Public API (everything else in this package is internal):

- :func:`load_policy` ``(dir) -> Policy`` - parse + validate + invariants, raising
  :class:`PolicyError` naming file:line.
- :class:`Policy` - an immutable loaded policy: ``decide(req) -> Decision``
  through the compiled index, ``explain(req)``, ``revision``, ``catalogue``,
  ``network`` (the network section), ``tests`` (expected cases).
- :class:`PolicyEngine` - the live holder the daemons use: ``decide``,
  ``reload()`` (atomic, keeps the last good policy, fails closed without one),
  ``current``, ``loaded_at``, ``last_refusal``.
"""

from enforcer.policy.engine import Policy, PolicyEngine, PolicyError, ReloadResult, load_policy
from enforcer.policy.types import AccessRequest, ActionSpec, AuthorityClass, Decision, SourceLine

__all__ = [
    "AccessRequest",
    "ActionSpec",
    "AuthorityClass",
    "Decision",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "ReloadResult",
    "SourceLine",
    "load_policy",
]
