"""``policy.csv``, parsed by us with line numbers, and its role graph.

pycasbin's own loader silently skips line types the model does not define; we
refuse them, and everything else that is malformed, naming file:line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from enforcer.policy.syntax import (
    AGENT_PATTERN,
    CHANNELS,
    agent_name,
    is_principal,
    is_role,
    resource_pattern_problem,
)
from enforcer.policy.types import ActionSpec, Grant, RoleLink, SourceLine

__all__ = ["MAX_ROLE_DEPTH", "RoleGraph", "parse_policy_csv"]

#: Longest role chain accepted. Casbin's role manager stops searching after 10
#: hops; refusing deeper chains keeps the compiled index equal to Casbin.
MAX_ROLE_DEPTH = 8
# How far the role graph is walked down one chain: past it, the chain is only
# "too deep" (walking on would only recurse towards Python's limit).
_DESCENT_LIMIT = 64


def parse_policy_csv(
    text: str, catalogue: Mapping[str, ActionSpec], source: str = "policy.csv"
) -> tuple[list[Grant], list[RoleLink], list[str]]:
    """Parse ``p`` and ``g`` lines; return (grants, role links, problems)."""
    grants: list[Grant] = []
    links: list[RoleLink] = []
    problems: list[str] = []
    seen_p: dict[tuple[str, ...], int] = {}
    seen_g: dict[tuple[str, ...], int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        text_line = raw.strip()
        if not text_line or text_line.startswith("#"):
            continue
        src = SourceLine(source, n, text_line)
        where = f"{source}:{n}"
        if '"' in text_line or "'" in text_line:
            problems.append(f"{where}: quotes are not supported in policy lines")
            continue
        cols = [c.strip() for c in text_line.split(",")]
        kind = cols[0]
        if kind not in ("p", "g"):
            problems.append(
                f"{where}: unknown line type {kind!r} (the model defines only 'p' and 'g')"
            )
            continue
        if any(not c for c in cols):
            problems.append(f"{where}: empty field")
            continue
        if kind == "p":
            if len(cols) != 5:
                problems.append(
                    f"{where}: a p line has 4 fields (SUBJECT, CHANNEL, RESOURCE, ACTION), "
                    f"got {len(cols) - 1}"
                )
                continue
            sub, chan, obj, act = cols[1:]
            bad = _grant_problem(sub, chan, obj, act, catalogue)
            if bad:
                problems.append(f"{where}: {bad}")
                continue
            key = (sub, chan, obj, act)
            if key in seen_p:
                problems.append(f"{where}: duplicate of line {seen_p[key]}")
                continue
            seen_p[key] = n
            grants.append(Grant(sub, chan, obj, act, src))
        else:
            if len(cols) != 3:
                problems.append(
                    f"{where}: a g line has 2 fields (MEMBER, ROLE), got {len(cols) - 1}"
                )
                continue
            member, role = cols[1:]
            bad = _link_problem(member, role)
            if bad:
                problems.append(f"{where}: {bad}")
                continue
            gkey = (member, role)
            if gkey in seen_g:
                problems.append(f"{where}: duplicate of line {seen_g[gkey]}")
                continue
            seen_g[gkey] = n
            links.append(RoleLink(member, role, src))
    return grants, links, problems


def _grant_problem(
    sub: str, chan: str, obj: str, act: str, catalogue: Mapping[str, ActionSpec]
) -> str | None:
    if sub == AGENT_PATTERN:
        return (
            f"{AGENT_PATTERN} cannot be a p subject (Casbin never matches it): grant to a "
            f"role and add 'g, {AGENT_PATTERN}, role:<name>'"
        )
    if not (is_principal(sub) or is_role(sub)):
        return (
            f"malformed subject {sub!r} (operator, anonymous, service:core, agent:<name> "
            "or role:<name>)"
        )
    if chan not in CHANNELS:
        return f"unknown channel {chan!r} (one of {', '.join(CHANNELS)})"
    bad = resource_pattern_problem(obj)
    if bad:
        return bad
    if act not in catalogue:
        return f"unknown action {act!r} (not in catalogue.toml)"
    return None


def _link_problem(member: str, role: str) -> str | None:
    if not (is_principal(member) or member == AGENT_PATTERN or is_role(member)):
        return f"malformed member {member!r} (a principal, {AGENT_PATTERN} or role:<name>)"
    if not is_role(role):
        return f"malformed role {role!r}: a g line's second field must be role:<name>"
    if member == role:
        return f"{role} cannot hold itself"
    return None


class RoleGraph:
    """Who holds which role, transitively, with Casbin's meaning of ``agent:*``.

    A named agent holds its own roles and those of ``agent:*`` (pycasbin copies
    the pattern's roles into every matching name).
    """

    def __init__(self, links: Iterable[RoleLink]) -> None:
        self.links = tuple(links)
        self._edges: dict[str, list[RoleLink]] = {}
        self._closures: dict[str, dict[str, SourceLine]] = {}
        for link in self.links:
            self._edges.setdefault(link.member, []).append(link)

    def problems(self) -> list[str]:
        """Role cycles and chains deeper than :data:`MAX_ROLE_DEPTH`."""
        problems: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done
        depth: dict[str, int] = {}
        stack: list[RoleLink] = []
        reported: set[int] = set()

        def visit(node: str) -> int:
            state[node] = 1
            best = 0
            for link in self._edges.get(node, []):
                if state.get(link.role) == 1:
                    start = next(i for i, s in enumerate(stack) if s.member == link.role)
                    cycle = [*stack[start:], link]
                    if link.src.line not in reported:
                        reported.update(s.src.line for s in cycle)
                        lines = ", ".join(f"{s.src.file}:{s.src.line}" for s in cycle)
                        chain = " -> ".join([cycle[0].member, *(s.role for s in cycle)])
                        problems.append(
                            f"{link.src.file}:{link.src.line}: role cycle {chain} (lines {lines})"
                        )
                    continue
                if state.get(link.role) != 2:
                    if len(stack) >= _DESCENT_LIMIT:
                        # Far too deep to be valid: walk no further (a chain of
                        # thousands of g lines would exhaust the recursion limit).
                        best = max(best, _DESCENT_LIMIT)
                        continue
                    stack.append(link)
                    visit(link.role)
                    stack.pop()
                best = max(best, 1 + depth.get(link.role, 0))
            state[node] = 2
            depth[node] = best
            return best

        for member in list(self._edges):
            if member not in state:
                visit(member)
        held = {link.role for link in self.links}
        for member, member_links in self._edges.items():
            # Report each over-deep chain once, at the root member's first g line.
            if member not in held and depth.get(member, 0) > MAX_ROLE_DEPTH:
                src = member_links[0].src
                deep = depth[member]
                told = f"more than {_DESCENT_LIMIT}" if deep >= _DESCENT_LIMIT else str(deep)
                problems.append(
                    f"{src.file}:{src.line}: role chain from {member} is "
                    f"{told} deep (at most {MAX_ROLE_DEPTH})"
                )
        return problems

    def closure(self, member: str) -> dict[str, SourceLine]:
        """Every role ``member`` reaches through g lines, each with the first link that
        grants it on a shortest path (for explanations). Cached: do not mutate."""
        cached = self._closures.get(member)
        if cached is not None:
            return cached
        out: dict[str, SourceLine] = {}
        frontier = [member]
        while frontier:
            nxt: list[str] = []
            for node in frontier:
                for link in self._edges.get(node, []):
                    if link.role not in out and link.role != member:
                        out[link.role] = link.src
                        nxt.append(link.role)
            frontier = nxt
        self._closures[member] = out
        return out

    def subjects_of(self, principal: str) -> dict[str, SourceLine | None]:
        """Every p-line subject that applies to ``principal``: itself and its roles
        (with ``agent:*``'s roles for any agent). The value is a g line that
        brings the subject in (None for the principal itself)."""
        subjects: dict[str, SourceLine | None] = {principal: None}
        sources = [principal]
        if agent_name(principal) is not None:
            sources.append(AGENT_PATTERN)
        for source in sources:
            for role, src in self.closure(source).items():
                subjects.setdefault(role, src)
        return subjects

    def members(self) -> set[str]:
        """Every member that appears on the left of a g line."""
        return set(self._edges)
