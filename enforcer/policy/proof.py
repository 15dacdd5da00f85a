"""The request-space proof: what agents can do, and any request that breaks the rules.

:func:`prove` is a pure function of a loaded :class:`~enforcer.policy.loader.Policy`,
for the auditor (``hive-boundary audit``) and the property tests. It does not
trust the load-time invariants: it asks the compiled index itself about every
request in an abstract request space that covers every way a line can match.

The space:

- principals: ``operator``, ``anonymous``, ``service:core``, a generic agent
  ``agent:a`` (a name the policy never mentions, so it holds only what
  ``agent:*`` holds) and every agent named in the policy;
- channels: ``gateway``, ``socket``, ``priv``; actions: every catalogue action;
- resources, in three classes relative to the principal - *own* (``agent:<self>``
  and below), *other-agent* (``agent:<other>`` and below, for a fresh other
  name and every named agent) and *global* (everything else): every catalogue
  resource pattern instantiated for each class, plus witnesses derived from
  every policy line's pattern (the literal itself, and for a prefix pattern
  the literal followed by another agent's name or a path), so a line that
  matches anything at all is exercised.

For agent principals the report lists every allowed (principal, channel,
action, resource class) with an example request and the allowing line. A
violation is an allowed request where an agent gets a non-agent-self action,
a channel other than socket, or a resource not its own; or a non-agent gets an
agent-self action; a system action goes to anyone but ``service:core``; an
operator action goes to anyone but ``operator``; or any action is allowed on a
channel other than its class's channel. Each violation carries the concrete
counterexample request and the line that allowed it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from enforcer.policy.catalogue import CLASS_CHANNEL
from enforcer.policy.loader import Policy
from enforcer.policy.syntax import CHANNELS, FIXED_PRINCIPALS, SELF, agent_name, resource_owner
from enforcer.policy.types import AccessRequest, AuthorityClass, SourceLine

__all__ = ["AgentGrant", "ProofReport", "Violation", "prove"]

OTHER = "zz-other"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class AgentGrant:
    """An agent principal may perform ``action`` on ``channel`` on a resource of this class."""

    principal: str
    channel: str
    action: str
    resource_class: str  # "own" | "other-agent" | "global"
    example: AccessRequest
    rule: SourceLine


@dataclass(frozen=True, slots=True)
class Violation:
    """An allowed request the rules forbid, and the line that allowed it."""

    request: AccessRequest
    rule: SourceLine | None
    what: str


@dataclass(frozen=True, slots=True)
class ProofReport:
    """Everything :func:`prove` found."""

    revision: str
    principals: tuple[str, ...]
    requests_checked: int
    agent_grants: tuple[AgentGrant, ...]
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        """No violation."""
        return not self.violations


def _generic_agent(named: set[str]) -> str:
    name, i = "a", 0
    while f"agent:{name}" in named or name == OTHER:
        i += 1
        name = f"a{i}"
    return f"agent:{name}"


def _resources(policy: Policy, me: str | None, others: list[str]) -> set[str]:
    selves = [me] if me is not None else [OTHER]
    names = [*selves, *others]
    out: set[str] = {"", "policy", "x"}
    fill = {"id": "1", "path": "notes/x.md"}
    for spec in policy.catalogue.values():
        for n in names:
            values = {**fill, "self": n, "name": n}
            out.add(_fill(spec.resource, values))
    for g in policy.lines:
        for n in names:
            obj = g.obj.replace(SELF, n)
            if obj.endswith("*"):
                lit = obj[:-1]
                out.update({lit, lit + "x", lit + "/x"})
                for o in others:
                    out.update({lit + o, lit + o + "/x"})
            else:
                out.add(obj)
    return out


def _fill(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), "x"), template)


def _classify(me: str | None, resource: str) -> str:
    owner = resource_owner(resource)
    if owner is None:
        return "global"
    return "own" if owner == me else "other-agent"


def prove(policy: Policy) -> ProofReport:
    """Enumerate the abstract request space of ``policy`` (see the module docstring)."""
    named = {g.sub for g in policy.lines} | {lk.member for lk in policy.roles}
    named_agents = sorted(n for n in named if agent_name(n) is not None)
    principals = [*FIXED_PRINCIPALS, _generic_agent(set(named_agents)), *named_agents]
    grants: dict[tuple[str, str, str, str], AgentGrant] = {}
    violations: list[Violation] = []
    checked = 0
    for principal in principals:
        me = agent_name(principal)
        others = [OTHER, *(a[6:] for a in named_agents if a != principal)]
        resources = sorted(_resources(policy, me, others))
        for chan in CHANNELS:
            for act, spec in policy.catalogue.items():
                cls = spec.authority
                for resource in resources:
                    req = AccessRequest(principal, chan, resource, act)
                    checked += 1
                    d = policy.decide(req)
                    if not d.allowed:
                        continue
                    rc = _classify(me, resource)
                    for what in _broken(principal, me, chan, cls, act, rc):
                        violations.append(Violation(req, d.rule, what))
                    if me is not None and d.rule is not None:
                        grants.setdefault(
                            (principal, chan, act, rc),
                            AgentGrant(principal, chan, act, rc, req, d.rule),
                        )
    return ProofReport(
        policy.revision,
        tuple(principals),
        checked,
        tuple(grants.values()),
        tuple(violations),
    )


def _broken(
    principal: str, me: str | None, chan: str, cls: AuthorityClass, act: str, rc: str
) -> list[str]:
    out: list[str] = []
    if me is not None:
        if cls is not AuthorityClass.AGENT_SELF:
            out.append(f"agent {principal} is allowed {cls.value}-class action {act}")
        if rc != "own":
            out.append(f"agent {principal} is allowed {act} on a(n) {rc} resource")
    else:
        if cls is AuthorityClass.AGENT_SELF:
            out.append(f"{principal}, not an agent, is allowed agent-self action {act}")
        if cls is AuthorityClass.SYSTEM and principal != "service:core":
            out.append(f"{principal} is allowed system action {act}")
        if cls is AuthorityClass.OPERATOR and principal != "operator":
            out.append(f"{principal} is allowed operator action {act}")
    if chan != CLASS_CHANNEL[cls]:
        out.append(f"{act} ({cls.value}) is allowed on channel {chan}")
    return out
