"""Fuzz: the agent API's request bodies (``enforcer.bodies.parse_body`` with every
body schema of ``enforcer.agent_api.ROUTES``) on arbitrary bytes and on JSON
shaped like the real bodies.

Property: only a 4xx :class:`HiveError` is ever raised, and an accepted body
satisfies its schema exactly (no unknown field, every required field, each
value of its kind and within its limits).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.agent_api import ROUTES
from enforcer.bodies import Field, Schema, parse_body
from enforcer.errors import HiveError
from tests.reliability.fuzzstats import count

FUZZ = settings(max_examples=settings().max_examples * 10)
SCHEMAS: dict[str, Schema] = {r.action: r.body for r in ROUTES if r.body is not None}
MAX = 1 << 16

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "a" * 9000, "x\x00y", "\ud800", "busy", "é" * 3000, "A-b"])
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=20) | st.dictionaries(st.text(max_size=5), c),
    max_leaves=10,
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    action = draw(st.sampled_from(sorted(SCHEMAS)))
    names = [*SCHEMAS[action].fields, "agent", "principal", "id", "__proto__"]
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return action, draw(st.binary(max_size=200))
    if kind == 1:
        return action, json.dumps(draw(values), allow_nan=True).encode()
    obj: dict[str, Any] = draw(st.dictionaries(st.sampled_from(names), values, max_size=5))
    raw = json.dumps(obj) if kind == 2 else repr(obj)  # repr: Python, not JSON
    return action, raw.encode("utf-8", "surrogatepass")


def _valid(spec: Field, value: object) -> bool:
    if spec.kind == "str":
        ok = isinstance(value, str) and spec.min_len <= len(value) <= spec.max_len
        ok = ok and "\x00" not in str(value)
        if ok and spec.pattern is not None:
            ok = re.fullmatch(spec.pattern, str(value)) is not None
        return ok and (spec.enum is None or value in spec.enum)
    if spec.kind == "str_list":
        return (
            isinstance(value, list)
            and len(value) <= spec.max_items
            and all(isinstance(v, str) and len(v) <= spec.max_len for v in value)
        )
    if spec.kind == "bool":
        return isinstance(value, bool)
    if spec.kind in {"int", "number"}:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if spec.kind == "int" and not isinstance(value, int):
            return False
        return (spec.minimum is None or value >= spec.minimum) and (
            spec.maximum is None or value <= spec.maximum
        )
    return False


@FUZZ
@given(bodies())
def test_an_agent_body_is_either_refused_with_a_4xx_or_exactly_valid(
    case: tuple[str, bytes],
) -> None:
    action, raw = case
    count(f"agent body ({action})")
    schema = SCHEMAS[action]
    try:
        parsed = parse_body(raw, schema, max_bytes=MAX)
    except HiveError as e:
        assert 400 <= e.status < 500, e  # noqa: PT017
        return
    assert set(parsed) <= set(schema.fields)
    for name, spec in schema.fields.items():
        if spec.required:
            assert name in parsed, name
        if name in parsed:
            assert _valid(spec, parsed[name]), (name, parsed[name])
    # What was accepted is what was sent (nothing invented or coerced).
    sent = json.loads(raw)
    assert {k: sent[k] for k in parsed} == parsed
