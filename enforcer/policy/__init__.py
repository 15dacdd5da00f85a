"""The policy engine: one Casbin policy, validated, compiled, explained, reloaded.

Public API (everything else in this package is internal):

- :func:`load_policy` ``(dir) -> Policy`` - parse + validate + invariants +
  expected cases, raising :class:`PolicyError` naming file:line.
- :class:`Policy` - an immutable loaded policy: ``decide(req) -> Decision``
  through the compiled index, ``explain(req)``, ``revision``, ``catalogue``,
  ``network`` (the network section), ``tests`` (expected cases).
- :class:`PolicyEngine` - the live holder the daemons use: ``decide``,
  ``reload()`` (atomic, keeps the last good policy, fails closed without one),
  ``current``, ``loaded_at``, ``last_refusal``, ``revision``.
- :func:`decision_event` - the fields of one structlog decision event.
- :func:`enforcer.policy.proof.prove` - the request-space proof for auditors.
"""

from enforcer.policy.engine import (
    NO_POLICY,
    Policy,
    PolicyEngine,
    PolicyError,
    ReloadResult,
    decision_event,
    load_policy,
)
from enforcer.policy.errors import PolicyUnreadable
from enforcer.policy.types import (
    AccessRequest,
    ActionSpec,
    AuthorityClass,
    Decision,
    Grant,
    RoleLink,
    SourceLine,
)

__all__ = [
    "NO_POLICY",
    "AccessRequest",
    "ActionSpec",
    "AuthorityClass",
    "Decision",
    "Grant",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PolicyUnreadable",
    "ReloadResult",
    "RoleLink",
    "SourceLine",
    "decision_event",
    "load_policy",
]
