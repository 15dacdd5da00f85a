"""Fuzz: request-target normalisation (gateway, ``enforcer.paths``), the core's raw
path check (``authz.unsafe_raw_path_reason``) and state paths
(``confined.split_rel_path``) on arbitrary text.

Property: nothing but the module's own refusal is ever raised, and anything
accepted satisfies an independent oracle (no dot segment once decoded, no
encoded separator, stays below its root).
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer import authz, paths
from enforcer.confined import split_rel_path
from enforcer.errors import BadRequest
from tests.reliability.fuzzstats import count

PIECES = ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "%25", "%",
          "?", "#", ";", "agent", "api", "v1", "state", "é", "\x00", "\r\n", " ", "%c0%ae",
          "\uff5e"]  # fmt: skip

# Pure and fast: ten times the profile's examples.
FUZZ = settings(max_examples=settings().max_examples * 10)

texts = st.text(max_size=80) | st.lists(
    st.sampled_from(PIECES) | st.text(max_size=3), max_size=12
).map("".join)


def _decoded_segments(path: str) -> list[str]:
    return [unquote(unquote(s)) for s in path.split("/")]


@FUZZ
@given(texts)
def test_gateway_targets_only_raise_path_rejected_and_accepted_ones_are_clean(raw: str) -> None:
    count("paths.parse_target")
    try:
        target = paths.parse_target(raw)
    except paths.PathRejected as e:
        assert 400 <= e.status < 500  # noqa: PT017
        return
    assert target.path.startswith("/")
    assert not any(c in target.path for c in "\\\x00\r\n")
    for segment in _decoded_segments(target.path)[1:-1]:
        assert segment not in {".", ".."}
        assert "/" not in segment
        assert "\\" not in segment
    # Interpreted by any normaliser, it stays what it is.
    assert posixpath.normpath(target.path) in {target.path, target.path.rstrip("/")}


@FUZZ
@given(texts)
def test_the_cores_raw_path_check_never_lets_a_traversal_through(raw: str) -> None:
    count("authz.unsafe_raw_path_reason")
    reason = authz.unsafe_raw_path_reason(raw)
    if reason is not None:
        assert isinstance(reason, str)
        assert reason
        return
    path = raw.split("?", 1)[0]
    assert path.startswith("/")
    assert "//" not in path
    assert not any(ord(c) < 0x20 or c == "\x7f" or c == "\\" for c in path)
    for segment in _decoded_segments(path)[1:]:
        assert segment not in {".", ".."}
        assert "/" not in segment
        assert "\x00" not in segment


@FUZZ
@given(texts)
def test_state_paths_stay_below_state(rel: str) -> None:
    count("confined.split_rel_path")
    try:
        parts = split_rel_path(rel)
    except BadRequest as e:
        assert 400 <= e.status < 500  # noqa: PT017
        return
    assert parts
    assert all(p and p not in {".", ".."} and "/" not in p and "\x00" not in p for p in parts)
    assert "/".join(parts) == rel
    assert posixpath.normpath(posixpath.join("/state", rel)).startswith("/state/")
