"""Hypothesis strategies for policy lines, policies and requests (shared by property tests)."""

from __future__ import annotations

import tomllib

from hypothesis import strategies as st

from enforcer.policy.syntax import CHANNELS, FIXED_PRINCIPALS
from enforcer.policy.types import AccessRequest
from tests.policy.helpers import shipped_texts

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
