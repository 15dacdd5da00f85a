"""Load-time invariants: the design rule is enforced when a policy loads.

A policy that breaks any of these is refused, naming the line:

- agents (``agent:<name>``, ``agent:*`` and every role an agent holds,
  transitively) may hold only ``agent-self`` actions, only on resources that
  are their own (``agent:{self}`` or below it; a direct ``agent:<name>`` line
  may also name ``agent:<name>``);
- each authority class has exactly one channel: ``agent-self`` on ``socket``,
  ``operator`` and ``public`` on ``gateway``, ``system`` on ``priv`` - so no
  operator action ever has a socket entry point;
- ``agent-self`` actions go only to agents, ``system`` actions only to
  ``service:core``, ``operator`` actions only to subjects no principal other
  than ``operator`` holds;
- ``{self}`` appears only in grants to agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from enforcer.policy.catalogue import CLASS_CHANNEL
from enforcer.policy.lines import RoleGraph
from enforcer.policy.syntax import AGENT_PATTERN, FIXED_PRINCIPALS, SELF, agent_name
from enforcer.policy.types import ActionSpec, AuthorityClass, Grant, SourceLine

__all__ = ["agent_held_subjects", "holders", "invariant_problems", "own_resource"]


def agent_held_subjects(grants: Iterable[Grant], graph: RoleGraph) -> dict[str, str]:
    """Every subject an agent holds -> a short account of how (for messages)."""
    agents = {AGENT_PATTERN}
    for g in grants:
        if agent_name(g.sub) is not None:
            agents.add(g.sub)
    for member in graph.members():
        if agent_name(member) is not None:
            agents.add(member)
    held: dict[str, str] = {}
    for agent in sorted(agents):
        if agent != AGENT_PATTERN:
            held.setdefault(agent, f"{agent} is an agent")
        for role, src in graph.closure(agent).items():
            held.setdefault(role, f"{agent} holds it ({src.file}:{src.line})")
    return held


def holders(subject: str, graph: RoleGraph, principals: Iterable[str]) -> dict[str, SourceLine]:
    """The principals (and ``agent:*``) that hold role ``subject``, with one g line each."""
    out: dict[str, SourceLine] = {}
    for p in principals:
        closure = graph.closure(p)
        if subject in closure:
            out[p] = closure[subject]
    return out


def own_resource(sub: str, obj: str) -> bool:
    """Is ``obj`` (a pattern) confined to the requesting agent's own resources?

    It must start with ``agent:{self}`` (or, for a direct ``agent:<name>``
    line, ``agent:<name>``) followed by the end, ``/`` or ``/...``: a bare
    ``agent:{self}*`` would also match ``agent:<self>x``, another agent.
    """
    prefixes = [f"agent:{SELF}"]
    if agent_name(sub) is not None:
        prefixes.append(sub)
    body = obj[:-1] if obj.endswith("*") else obj
    for prefix in prefixes:
        if body == prefix and not obj.endswith("*"):
            return True
        if body.startswith(prefix + "/"):
            return True
    return False


def invariant_problems(
    grants: Iterable[Grant], graph: RoleGraph, catalogue: Mapping[str, ActionSpec]
) -> list[str]:
    """Every grant that breaks an invariant, each naming file:line."""
    grants = list(grants)
    agent_held = agent_held_subjects(grants, graph)
    principals = {*FIXED_PRINCIPALS, AGENT_PATTERN, *graph.members()}
    principals = {p for p in principals if not p.startswith("role:")}
    problems: list[str] = []
    for g in grants:
        where = f"{g.src.file}:{g.src.line}"
        spec = catalogue[g.act]
        cls = spec.authority
        want_chan = CLASS_CHANNEL[cls]
        if g.sub in agent_held:
            how = agent_held[g.sub]
            if cls is not AuthorityClass.AGENT_SELF:
                problems.append(
                    f"{where}: grants {cls.value}-class action {g.act} to {g.sub} "
                    f"({how}): agents may hold only agent-self actions"
                )
                continue
            if not own_resource(g.sub, g.obj):
                problems.append(
                    f"{where}: agent grant on resource {g.obj!r}, which is not the agent's own: "
                    f"it must start with 'agent:{SELF}/' (or be 'agent:{SELF}')"
                )
                continue
        elif cls is AuthorityClass.AGENT_SELF:
            problems.append(
                f"{where}: agent-self action {g.act} granted to {g.sub}, which no agent holds: "
                "agent-self actions are for agents only"
            )
            continue
        elif SELF in g.obj:
            problems.append(
                f"{where}: {SELF} in a grant to {g.sub}, which is not an agent: "
                f"{SELF} only means something in grants to agents"
            )
            continue
        if g.chan != want_chan:
            if g.chan == "socket":
                problems.append(
                    f"{where}: {cls.value}-class action {g.act} on the socket channel: "
                    "only agent-self actions may be granted on socket"
                )
            else:
                problems.append(
                    f"{where}: {cls.value}-class action {g.act} on channel {g.chan}: "
                    f"{cls.value} actions may be granted only on {want_chan}"
                )
            continue
        if cls is AuthorityClass.SYSTEM and g.sub != "service:core":
            problems.append(
                f"{where}: system action {g.act} granted to {g.sub}: "
                "system actions are for service:core only"
            )
        elif cls is AuthorityClass.OPERATOR:
            if g.sub in principals and g.sub != "operator":
                problems.append(
                    f"{where}: operator-class action {g.act} granted to {g.sub}: "
                    "operator actions are for the operator only"
                )
                continue
            others = {
                p: src for p, src in holders(g.sub, graph, principals).items() if p != "operator"
            }
            if others:
                p, src = sorted(others.items())[0]
                problems.append(
                    f"{where}: operator-class action {g.act} granted to {g.sub}, which {p} "
                    f"holds ({src.file}:{src.line}): operator actions are for the operator only"
                )
    return problems
