"""The compiled decision index: the hot path of every request.

Semantics are exactly those of ``model.conf`` (proven equal to Casbin's
``enforce`` by ``tests/property/test_policy_index.py``): a request is allowed
iff some ``p`` line has a subject the principal holds, the same channel and
action, and a resource pattern matching the resource (``{self}`` replaced by
the requesting agent's name, ``*`` as a trailing prefix wildcard).

Layout: principal -> (channel, action) -> tuple of (is_prefix, literal,
allow-Decision), in file order, so the first hit is the first matching line
(the one Casbin's ``enforce_ex`` reports). Fixed principals and agents named
in the policy are compiled up front; any other ``agent:<name>`` is compiled
on first sight from the generic-agent template and cached, so the cost of a
decision does not depend on how many agents exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from enforcer.policy.lines import RoleGraph
from enforcer.policy.syntax import AGENT_PATTERN, CHANNELS, FIXED_PRINCIPALS, SELF, agent_name
from enforcer.policy.types import AccessRequest, ActionSpec, Decision, Grant, RoleLink

__all__ = ["CompiledIndex"]

Entry = tuple[bool, str, Decision]
Table = dict[tuple[str, str], tuple[Entry, ...]]

# Agents first seen at run time are cached; past this many the cache restarts,
# so a flood of distinct names cannot grow memory without bound.
_LAZY_LIMIT = 65536


class CompiledIndex:
    """Decide requests for one policy version. Immutable after construction."""

    def __init__(
        self,
        grants: Iterable[Grant],
        links: Iterable[RoleLink],
        catalogue: Mapping[str, ActionSpec],
        revision: str,
    ) -> None:
        self.grants = tuple(grants)
        self.graph = RoleGraph(links)
        self.catalogue = catalogue
        self.revision = revision
        self._deny = Decision(False, None, "no policy line allows this request", revision)
        self._allow: dict[int, Decision] = {}
        self._by_subject: dict[str, list[Grant]] = {}
        for g in self.grants:
            self._by_subject.setdefault(g.sub, []).append(g)
        named = {g.sub for g in self.grants} | self.graph.members()
        named_agents = sorted(n for n in named if agent_name(n) is not None)
        static: dict[str, Table] = {}
        for principal in (*FIXED_PRINCIPALS, *named_agents):
            static[principal] = self._table(principal, None)
        # The generic agent: agent:* roles only, {self} left in place.
        self._template = self._collect(self.graph.closure(AGENT_PATTERN))
        self._static = static
        self._tables: dict[str, Table] = dict(static)
        self._lazy = 0

    # -- compilation ------------------------------------------------------------

    def _collect(self, subjects: Mapping[str, object]) -> list[Grant]:
        hits = [g for s in subjects for g in self._by_subject.get(s, ())]
        hits.sort(key=lambda g: g.src.line)
        return hits

    def _decision(self, g: Grant) -> Decision:
        # one shared allow-Decision per line: no allocation on the hot path
        d = self._allow.get(g.src.line)
        if d is None:
            d = Decision(True, g.src, f"allowed by {g.src}", self.revision)
            self._allow[g.src.line] = d
        return d

    def _build(self, grants: Iterable[Grant], name: str | None) -> Table:
        acc: dict[tuple[str, str], list[Entry]] = {}
        for g in grants:
            obj = g.obj
            if SELF in obj:
                if name is None:
                    continue  # only an agent has a self
                obj = obj.replace(SELF, name)
            prefix = obj.endswith("*")
            literal = obj[:-1] if prefix else obj
            entry = (prefix, literal, self._decision(g))
            acc.setdefault((g.chan, g.act), []).append(entry)
        return {k: tuple(v) for k, v in acc.items()}

    def _table(self, principal: str, name: str | None) -> Table:
        name = agent_name(principal) if name is None else name
        return self._build(self._collect(self.graph.subjects_of(principal)), name)

    def _specialise(self, principal: str) -> Table:
        name = agent_name(principal)
        if name is None:
            return {}  # not a principal: nothing is allowed, nothing is cached
        table = self._build(self._template, name)
        if self._lazy >= _LAZY_LIMIT:
            self._tables, self._lazy = dict(self._static), 0
        self._tables[principal] = table
        self._lazy += 1
        return table

    # -- the hot path -------------------------------------------------------------

    def decide(self, req: AccessRequest) -> Decision:
        """Allow iff a line matches; the Decision names the first such line."""
        table = self._tables.get(req.principal)
        if table is None:
            table = self._specialise(req.principal)
        entries = table.get((req.channel, req.action))
        if entries is not None:
            resource = req.resource
            for prefix, literal, decision in entries:
                if resource.startswith(literal) if prefix else resource == literal:
                    return decision
        return self._deny

    # -- explanations -----------------------------------------------------------

    def explain(self, req: AccessRequest) -> Decision:
        """The same answer as :meth:`decide`, with the reason in words."""
        decision = self.decide(req)
        principal, chan, act = req.principal, req.channel, req.action
        if agent_name(principal) is None and principal not in FIXED_PRINCIPALS:
            why = (
                f"{principal!r} is not a principal (operator, anonymous, service:core, "
                "agent:<name>): nothing is allowed"
            )
            return Decision(False, None, why, self.revision)
        subjects = self.graph.subjects_of(principal)
        held = ", ".join(
            f"{s} (via {src.file}:{src.line})" for s, src in subjects.items() if src is not None
        )
        holds = f"{principal} holds {held}" if held else f"{principal} holds no role"
        if decision.allowed and decision.rule is not None:
            rule = decision.rule
            line = next(g for g in self.grants if g.src == rule)
            via = subjects.get(line.sub)
            how = (
                f"as {line.sub} (via {via.file}:{via.line})"
                if via is not None
                else f"as {principal} itself"
            )
            return Decision(True, rule, f"allowed by {rule} {how}", self.revision)
        if chan not in CHANNELS:
            why = f"unknown channel {chan!r} (one of {', '.join(CHANNELS)})"
        elif act not in self.catalogue:
            why = f"unknown action {act!r} (not in the catalogue)"
        else:
            mine = [g for g in self._collect(subjects) if g.chan == chan and g.act == act]
            if mine:
                pats = "; ".join(
                    f"{self._shown(g, principal)} ({g.src.file}:{g.src.line})" for g in mine
                )
                why = (
                    f"{act} on {chan} is granted to {principal} only for resources matching "
                    f"{pats}; {req.resource!r} matches none"
                )
            else:
                elsewhere = [g for g in self.grants if g.act == act]
                also = "; ".join(
                    f"{g.sub} on {g.chan} ({g.src.file}:{g.src.line})" for g in elsewhere[:5]
                )
                why = f"no line grants {act} on {chan} to {principal} or any role it holds"
                why += f" ({holds})"
                if also:
                    why += f"; {act} is granted to: {also}"
        return Decision(False, None, why, self.revision)

    @staticmethod
    def _shown(g: Grant, principal: str) -> str:
        name = agent_name(principal)
        if SELF in g.obj and name is not None:
            return f"{g.obj!r} = {g.obj.replace(SELF, name)!r}"
        return repr(g.obj)
