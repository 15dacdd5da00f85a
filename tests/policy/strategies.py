"""Hypothesis strategies for policy lines, policies and requests (shared by property tests)."""

from __future__ import annotations

import re
import tomllib

from hypothesis import strategies as st

from enforcer.policy import Policy, PolicyError
from enforcer.policy.syntax import CHANNELS, FIXED_PRINCIPALS
from enforcer.policy.types import AccessRequest
from tests.policy.helpers import bare_policy, shipped_texts

CATALOGUE = tomllib.loads(shipped_texts()["catalogue.toml"])["action"]
ACTIONS = sorted(CATALOGUE)
AGENT_NAMES = ("a", "ab", "bob", "c-1")
ROLES = ("role:agent", "role:r1", "role:r2", "role:operator")
PRINCIPALS = (*FIXED_PRINCIPALS, *(f"agent:{n}" for n in AGENT_NAMES))
RESOURCE_PATTERNS = (
    "*",
    "agent:*",
    "agent:{self}",
    "agent:{self}*",
    "agent:{self}/*",
    "agent:{self}/state/*",
    "agent:{self}/questions",
    "agent:{self}/questions/*",
    "agent:a",
    "agent:a/*",
    "agent:a*",
    "agent:bob/state/*",
    "agent:b*",
    "question:*",
    "approval:*",
    "policy",
    "session",
    "static/*",
    "agent:{self}/x/{self}",
)
RESOURCES = (
    "",
    "agent:a",
    "agent:ab",
    "agent:a/state/x",
    "agent:ab/state/x",
    "agent:bob",
    "agent:bob/state/notes.md",
    "agent:bob/questions",
    "agent:bob/questions/7",
    "agent:c-1/x/c-1",
    "agent:zed/state/x",
    "agent:{self}",
    "agent:{self}/state/x",
    "question:1",
    "approval:2",
    "policy",
    "session",
    "static/app.css",
    "x",
)


@st.composite
def grant_lines(draw: st.DrawFn, actions: tuple[str, ...] = tuple(ACTIONS)) -> str:
    """One syntactically valid ``p`` line (it may break invariants)."""
    sub = draw(st.sampled_from((*PRINCIPALS, *ROLES)))
    chan = draw(st.sampled_from(CHANNELS))
    obj = draw(st.sampled_from(RESOURCE_PATTERNS))
    act = draw(st.sampled_from(actions))
    return f"p, {sub}, {chan}, {obj}, {act}"


@st.composite
def role_lines(draw: st.DrawFn) -> str:
    """One syntactically valid ``g`` line (it may form a cycle)."""
    member = draw(st.sampled_from((*PRINCIPALS, "agent:*", *ROLES)))
    role = draw(st.sampled_from(ROLES))
    return f"g, {member}, {role}"


@st.composite
def policy_csvs(draw: st.DrawFn, max_lines: int = 14) -> str:
    """A policy.csv of distinct, syntactically valid lines, in any order."""
    lines = draw(
        st.lists(
            st.one_of(grant_lines(), grant_lines(), role_lines()),
            max_size=max_lines,
            unique=True,
        )
    )
    lines = [ln for ln in lines if not _self_link(ln)]
    return "\n".join(lines) + "\n"


def _self_link(line: str) -> bool:
    cols = [c.strip() for c in line.split(",")]
    return cols[0] == "g" and cols[1] == cols[2]


AGENT_ROLES = ("role:agent", "role:r1", "role:r2")
OWN_PATTERNS = (
    "agent:{self}",
    "agent:{self}/*",
    "agent:{self}/state/*",
    "agent:{self}/questions",
    "agent:{self}/questions/*",
    "agent:{self}/x/{self}",
)


@st.composite
def plausible_grant_lines(draw: st.DrawFn) -> str:
    """A ``p`` line shaped like a real one for its action's class (mostly acceptable)."""
    act = draw(st.sampled_from(ACTIONS))
    cls = CATALOGUE[act]["class"]
    obj = draw(st.sampled_from(RESOURCE_PATTERNS))
    if cls == "agent-self":
        sub = draw(st.sampled_from((*AGENT_ROLES, *(f"agent:{n}" for n in AGENT_NAMES))))
        own = [*OWN_PATTERNS]
        if sub.startswith("agent:"):
            own += [sub, sub + "/state/*"]
        obj = draw(st.sampled_from(own))
        chan = "socket"
    elif cls == "system":
        sub, chan = "service:core", "priv"
    else:
        subjects = ("operator", "role:operator") if cls == "operator" else FIXED_PRINCIPALS
        sub, chan = draw(st.sampled_from(subjects)), "gateway"
        obj = obj.replace("{self}", "me")
    return f"p, {sub}, {chan}, {obj}, {act}"


@st.composite
def plausible_role_lines(draw: st.DrawFn) -> str:
    """A ``g`` line of the shapes real policies use."""
    return draw(
        st.sampled_from(
            (
                "g, agent:*, role:agent",
                "g, operator, role:operator",
                "g, role:agent, role:r1",
                "g, role:r1, role:r2",
                *(f"g, agent:{n}, role:r{i % 2 + 1}" for i, n in enumerate(AGENT_NAMES)),
            )
        )
    )


@st.composite
def plausible_policy_csvs(draw: st.DrawFn, max_lines: int = 16) -> str:
    """Mostly well-shaped lines with some arbitrary ones (which the engine may refuse)."""
    lines = draw(
        st.lists(
            st.one_of(
                plausible_grant_lines(),
                plausible_grant_lines(),
                plausible_grant_lines(),
                plausible_role_lines(),
                grant_lines(),
                role_lines(),
            ),
            max_size=max_lines,
            unique=True,
        )
    )
    lines = [ln for ln in lines if not _self_link(ln)]
    return "\n".join(lines) + "\n"


@st.composite
def requests(draw: st.DrawFn) -> AccessRequest:
    """A well-formed request: a real principal (or an agent the policy never names)."""
    principal = draw(st.sampled_from((*PRINCIPALS, "agent:zed")))
    return AccessRequest(
        principal,
        draw(st.sampled_from(CHANNELS)),
        draw(st.sampled_from(RESOURCES)),
        draw(st.sampled_from(ACTIONS)),
    )


def accepted_policy(csv: str) -> Policy | None:
    """The policy the engine accepts after dropping every line it names as a problem.

    Generated lines break invariants often; dropping the refused ones (the
    engine decides which) yields the varied, *accepted* policies the
    properties quantify over. None if nothing acceptable remains to test.
    """
    lines = csv.splitlines()
    for _ in range(40):
        try:
            return bare_policy("\n".join(lines) + "\n")
        except PolicyError as e:
            bad = {int(m.group(1)) for p in e.problems for m in [_LINE.match(p)] if m}
            if not bad:
                return None
            first = min(bad)
            lines[first - 1] = "# dropped: " + lines[first - 1]
    return None


_LINE = re.compile(r"policy\.csv:(\d+):")
