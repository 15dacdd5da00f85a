"""The compiled decision index: the hot path of every request.

Semantics are exactly those of ``model.conf`` (proven equal to Casbin's
``enforce`` by ``tests/property/test_policy_index.py``): a request is allowed
iff some ``p`` line has a subject the principal holds, the same channel and
action, and a resource pattern matching the resource (``{self}`` replaced by
the requesting agent's name, ``*`` as a trailing prefix wildcard).

Layout, chosen so that a decision touches a few small, shared (hence
cache-hot) objects whatever the number of agents: one column per
(channel, action), holding

- ``fixed``: the entries of each non-agent principal (operator, anonymous,
  service:core);
- ``head``: the generic-agent (``agent:*`` roles) entries that come before
  any agent-specific line of this column, with ``{self}`` kept symbolic and
  checked against the requesting principal itself (no per-agent table);
- ``specific``: for each agent named in the policy that has lines of its own
  in this column, its remaining entries (template and own, in file order);
- ``tail``: the remaining generic-agent entries, for every other agent.

Entries are in file order, so the first hit is the first matching line (the
one Casbin's ``enforce_ex`` reports). When every agent-specific line of a
column lies in the agent's own namespace (``agent:<name>`` or below), a
request for a resource outside it skips the per-agent lookup altogether.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from enforcer.policy.lines import RoleGraph
from enforcer.policy.syntax import AGENT_PATTERN, CHANNELS, FIXED_PRINCIPALS, SELF, agent_name
from enforcer.policy.types import AccessRequest, ActionSpec, Decision, Grant, RoleLink

__all__ = ["CompiledIndex"]

# Entry kinds: how ``text`` is compared with the resource.
_EXACT = 0  # resource == text
_PREFIX = 1  # resource.startswith(text)
_SELF_EXACT = 2  # resource == principal + text
_SELF_PREFIX = 3  # resource.startswith(principal + text)
_SELF_OTHER = 4  # text is the pattern with {self} elsewhere: replace, then keyMatch

Entry = tuple[int, str, Decision]

_AGENT_PREFIX = "agent:"
_AGENT_PREFIX_LEN = len(_AGENT_PREFIX)
# Agent principals already checked well formed are remembered; past this many
# the set restarts, so a flood of distinct names cannot grow memory unbounded.
_VALID_LIMIT = 65536


def _other_match(pattern: str, principal: str, resource: str) -> bool:
    """A pattern with ``{self}`` other than right after ``agent:`` (rare): substitute."""
    obj = pattern.replace(SELF, principal[_AGENT_PREFIX_LEN:])
    return resource.startswith(obj[:-1]) if obj.endswith("*") else resource == obj


class _Column:
    """Every line of one (channel, action), arranged for :meth:`CompiledIndex.decide`."""

    __slots__ = ("fixed", "head", "more", "own_only", "specific", "tail")

    def __init__(self) -> None:
        self.fixed: dict[str, tuple[Entry, ...]] = {}
        self.head: tuple[Entry, ...] = ()
        self.tail: tuple[Entry, ...] = ()
        self.specific: dict[str, tuple[Entry, ...]] = {}
        # True when no agent-specific line of this column can match a resource
        # outside the requesting agent's own namespace.
        self.own_only = True
        # Anything beyond the head (set once compiled).
        self.more = False


class CompiledIndex:
    """Decide requests for one policy version. Immutable after construction
    (apart from the bounded set of agent names already found well formed)."""

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
        self._valid: set[str] = set()
        self._cols: dict[tuple[str, str], _Column] = {}
        self._compile()

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

    def _column(self, g: Grant) -> _Column:
        col = self._cols.get((g.chan, g.act))
        if col is None:
            col = self._cols[(g.chan, g.act)] = _Column()
        return col

    def _literal_entry(self, obj: str, g: Grant) -> Entry:
        if obj.endswith("*"):
            return (_PREFIX, obj[:-1], self._decision(g))
        return (_EXACT, obj, self._decision(g))

    def _template_entry(self, g: Grant) -> Entry:
        """An entry for any agent: ``{self}`` stays symbolic."""
        obj = g.obj
        if SELF not in obj:
            return self._literal_entry(obj, g)
        prefix = obj.endswith("*")
        body = obj[:-1] if prefix else obj
        own = _AGENT_PREFIX + SELF
        if body.startswith(own) and SELF not in body[len(own) :]:
            return (_SELF_PREFIX if prefix else _SELF_EXACT, body[len(own) :], self._decision(g))
        return (_SELF_OTHER, obj, self._decision(g))

    @staticmethod
    def _within_own(entry: Entry) -> bool:
        """Can this entry match only ``agent:<name>`` itself or resources below it?"""
        kind, text = entry[0], entry[1]
        if kind == _SELF_EXACT:
            return text == "" or text.startswith("/")
        if kind == _SELF_PREFIX:
            return text.startswith("/")
        return False

    def _specific_entry(self, g: Grant, principal: str, name: str) -> Entry:
        """An entry of one named agent, in the principal-relative form when it can be."""
        entry = self._template_entry(g)
        if entry[0] == _SELF_OTHER:
            return self._literal_entry(g.obj.replace(SELF, name), g)
        if entry[0] in (_EXACT, _PREFIX) and entry[1].startswith(principal):
            rest = entry[1][len(principal) :]
            return (_SELF_EXACT if entry[0] == _EXACT else _SELF_PREFIX, rest, entry[2])
        return entry

    def _compile(self) -> None:
        for principal in FIXED_PRINCIPALS:
            for g in self._collect(self.graph.subjects_of(principal)):
                if SELF in g.obj:
                    continue  # only an agent has a self
                col = self._column(g)
                entry = self._literal_entry(g.obj, g)
                col.fixed[principal] = (*col.fixed.get(principal, ()), entry)
        # The generic agent: agent:* roles only.
        template = self._collect(self.graph.closure(AGENT_PATTERN))
        in_template = {g.src.line for g in template}
        # Agents named in the policy, and their own lines (beyond the template).
        named = {g.sub for g in self.grants} | self.graph.members()
        own: dict[str, list[Grant]] = {}
        first_own: dict[tuple[str, str], int] = {}
        for principal in sorted(n for n in named if agent_name(n) is not None):
            mine = self._collect(self.graph.subjects_of(principal))
            extra = [g for g in mine if g.src.line not in in_template]
            if extra:
                own[principal] = mine
                for g in extra:
                    key = (g.chan, g.act)
                    first_own[key] = min(first_own.get(key, g.src.line), g.src.line)
        for g in template:
            self._column(g)
        for mine in own.values():
            for g in mine:
                self._column(g)
        for key, col in self._cols.items():
            cut = first_own.get(key)
            entries = [(g, self._template_entry(g)) for g in template if (g.chan, g.act) == key]
            col.head = tuple(e for g, e in entries if cut is None or g.src.line < cut)
            col.tail = tuple(e for g, e in entries if cut is not None and g.src.line >= cut)
        for principal, mine in own.items():
            name = agent_name(principal)
            assert name is not None
            per_col: dict[tuple[str, str], list[Entry]] = {}
            has_own: set[tuple[str, str]] = set()
            for g in mine:
                key = (g.chan, g.act)
                cut = first_own.get(key)
                if cut is None or g.src.line < cut:
                    continue  # in the head, already checked
                if g.src.line in in_template:
                    entry = self._template_entry(g)
                else:
                    entry = self._specific_entry(g, principal, name)
                    has_own.add(key)
                    if not self._within_own(entry):
                        self._cols[key].own_only = False
                per_col.setdefault(key, []).append(entry)
            for key in has_own:
                self._cols[key].specific[principal] = tuple(per_col[key])
        for col in self._cols.values():
            col.more = bool(col.specific or col.tail)
            for principal in FIXED_PRINCIPALS:
                col.fixed.setdefault(principal, ())

    # -- the hot path -------------------------------------------------------------

    def _well_formed_agent(self, principal: str) -> bool:
        """Is this ``agent:<name>`` principal well formed? (cached, bounded)"""
        if agent_name(principal) is None:
            return False
        if len(self._valid) >= _VALID_LIMIT:
            self._valid = set()
        # A private copy: the set's strings then sit together in memory, so
        # the lookup of a known agent stays in cache however many there are.
        self._valid.add(principal.encode().decode())
        return True

    def decide(self, req: AccessRequest) -> Decision:
        """Allow iff a line matches; the Decision names the first such line."""
        col = self._cols.get((req.channel, req.action))
        if col is None:
            return self._deny
        principal = req.principal
        resource = req.resource
        fixed = col.fixed.get(principal)  # every fixed principal has a (maybe empty) row
        if fixed is not None:
            for kind, text, decision in fixed:
                if resource.startswith(text) if kind else resource == text:
                    return decision
            return self._deny
        # An agent (or not a principal at all: then the well-formedness check
        # below refuses whatever matched).
        # The resource relative to the agent itself ({self} entries compare it).
        rel = resource[len(principal) :] if resource.startswith(principal) else None
        for kind, text, decision in col.head:  # noqa: B007 - `decision` is used after break
            if kind == _SELF_PREFIX:
                if rel is not None and rel.startswith(text):
                    break
            elif kind == _SELF_EXACT:
                if rel == text:
                    break
            elif kind == _PREFIX:
                if resource.startswith(text):
                    break
            elif kind == _EXACT:
                if resource == text:
                    break
            elif _other_match(text, principal, resource):
                break
        else:
            if not col.more:
                return self._deny
            found = self._rest(col, principal, resource, rel)
            if found is None:
                return self._deny
            decision = found
        if principal in self._valid or self._well_formed_agent(principal):
            return decision
        return self._deny  # not a principal: nothing is allowed

    @staticmethod
    def _rest(col: _Column, principal: str, resource: str, rel: str | None) -> Decision | None:
        """After the head: this agent's own entries when it has some here, else the tail."""
        entries = col.tail
        if col.specific and (not col.own_only or rel == "" or (rel is not None and rel[:1] == "/")):
            entries = col.specific.get(principal, entries)
        for kind, text, decision in entries:
            if kind == _SELF_PREFIX:
                if rel is not None and rel.startswith(text):
                    return decision
            elif kind == _SELF_EXACT:
                if rel == text:
                    return decision
            elif kind == _PREFIX:
                if resource.startswith(text):
                    return decision
            elif kind == _EXACT:
                if resource == text:
                    return decision
            elif _other_match(text, principal, resource):
                return decision
        return None

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
