"""Fuzz: hive-priv's request decoder (``enforcer.priv_protocol.decode_request``) on
mutations of valid request lines - hostile field values (traversal, NUL,
over-long names, unicode look-alikes), fields added, removed or retyped, bytes
flipped or cut.

Property (beyond tests/property/test_priv_protocol.py's "only HiveError"): an
accepted request is valid by an independent oracle - agent name of the
documented shape, a state path that stays beneath ``state/``, a NUL-free
absolute command - and encodes back to the same request.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.errors import HiveError
from enforcer.priv_protocol import (
    REQUEST_TYPES,
    ContainerCreate,
    ContainerStatus,
    StateRead,
    decode_request,
    encode_request,
)
from tests.reliability.fuzzstats import count

FUZZ = settings(max_examples=settings().max_examples * 10)
NAME = re.compile(r"[a-z][a-z0-9-]{0,24}")
HOSTILE = ["..", "../x", "a/../../etc/shadow", "/etc/shadow", "a\x00b", "a" * 300,
           "\uff41\uff4c\uff50\uff48\uff41", "alpha\n", "Alpha", "-a", "a/", "./a", "a//b", "",
           " ", "\\..\\x", "%2e%2e", "ǅ", "alpha", "notes.md", "/usr/bin/python3"]  # fmt: skip
VALID: dict[str, dict[str, Any]] = {
    kind: {**({"agent": "alpha"} if kind != "container.status" else {}),
           **({"rel_path": "notes/today.md"} if kind == "state.read" else {}),
           **({"command": ["/usr/bin/python3", "-c", "pass"]} if kind == "container.create"
              else {})}
    for kind in REQUEST_TYPES
}  # fmt: skip
values = (
    st.sampled_from(HOSTILE)
    | st.text(max_size=12)
    | st.integers()
    | st.none()
    | st.lists(st.sampled_from(HOSTILE) | st.text(max_size=6), max_size=4)
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(sorted(REQUEST_TYPES)))
    body: dict[str, Any] = {"request": kind, **VALID[kind]}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*body, "uid", "path", "request"]))
        if draw(st.integers(0, 4)) == 0:
            body.pop(key, None)
        else:
            body[key] = draw(values)
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    cut = draw(st.integers(0, 3))
    if cut == 1 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == 2 and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    return raw


@FUZZ
@given(lines())
def test_an_accepted_priv_request_is_valid_by_an_independent_oracle(line: bytes) -> None:
    count("priv_protocol.decode_request (mutated)")
    try:
        request = decode_request(line)
    except HiveError as e:
        assert 400 <= e.status < 500  # noqa: PT017
        return
    if isinstance(request, ContainerStatus):
        assert request.to_json() == {"request": "container.status"}  # no fields at all
        return
    assert NAME.fullmatch(request.agent), request
    if isinstance(request, StateRead):
        rel = request.rel_path
        assert rel
        assert not rel.startswith("/")
        assert "\x00" not in rel
        assert all(part not in {"", ".", ".."} for part in rel.split("/"))
        assert posixpath.normpath(posixpath.join("/state", rel)).startswith("/state/")
    if isinstance(request, ContainerCreate):
        assert request.command
        assert request.command[0].startswith("/")
        assert all("\x00" not in a for a in request.command)
    assert decode_request(encode_request(request)) == request
