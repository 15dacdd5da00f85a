"""Fuzz: the policy loader on generated file contents - the shipped files cut
short (a writer that died), with lines dropped, duplicated or garbled, bytes
flipped, junk appended or a file swapped for another's text.

Property: the loader either raises :class:`PolicyError` (nothing else, no
crash) or returns a policy that keeps every guarantee: agents confined (no
operator action, nothing on another agent's resource, the proof finds no
violation) and all of the policy's own expected cases hold.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from enforcer.policy import PolicyError
from enforcer.policy.loader import POLICY_FILES, build_policy
from tests.policy.helpers import shipped_texts
from tests.property.test_policy_invariants import assert_agents_confined
from tests.reliability.fuzzstats import count

SHIPPED = shipped_texts()
JUNK = ["p, agent:*, socket, *, *", "g, agent:*, role:operator", "[[case]]", "[action.x]",
        "p,", ",,,,", "\x00", "\ufeff", "m = r.sub == p.sub", "[matchers]", "e = some(where)",
        "p, operator, gateway, *, policy.reload, extra", '"unterminated', "# comment", "=",
        "p, role:agent, socket, agent:{self}/../x, state.read"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, str], str]:
    texts = dict(SHIPPED)
    name = draw(st.sampled_from(POLICY_FILES))
    text = texts[name]
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["truncate", "drop", "dup", "garble", "flip", "junk", "swap"]))
    if op == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif op == "drop" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[:i] + lines[i + 1 :])
    elif op == "dup" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[: i + 1] + lines[i:])
    elif op == "garble" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(st.text(max_size=30)) + "\n"
        text = "".join(lines)
    elif op == "flip" and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.characters()) + text[i + 1 :]
    elif op == "junk":
        text += "\n".join(draw(st.lists(st.sampled_from(JUNK) | st.text(max_size=20), max_size=4)))
    elif op == "swap":
        text = texts[draw(st.sampled_from(POLICY_FILES))]
    texts[name] = text
    return texts, f"{op} {name}"


@given(mutated())
def test_a_generated_policy_is_refused_with_policy_error_or_keeps_every_guarantee(
    case: tuple[dict[str, str], str],
) -> None:
    texts, what = case
    count(f"policy loader ({what.split()[0]})")
    try:
        policy = build_policy(texts)
    except PolicyError as e:
        assert e.reason, what  # noqa: PT017
        return
    assert_agents_confined(policy)
