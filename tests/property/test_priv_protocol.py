"""Property: whatever bytes arrive on priv.sock, the decoder answers with a typed
request or a HiveError (a 4xx for the client) - never another exception."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from enforcer.errors import HiveError
from enforcer.priv_protocol import REQUEST_TYPES, decode_request, encode_error

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def request_like(draw: st.DrawFn) -> bytes:
    """Objects that look like requests: a real type, plausible and hostile fields."""
    body = draw(
        st.dictionaries(
            st.sampled_from(["agent", "rel_path", "command", "uid", "request"]), JSON, max_size=5
        )
    )
    if draw(st.booleans()):
        body["request"] = draw(st.sampled_from([*REQUEST_TYPES, "exec", ""]))
    return json.dumps(body).encode()


@given(st.binary(max_size=400) | request_like())
def test_decoder_never_fails_with_anything_but_a_hive_error(line: bytes) -> None:
    error: HiveError | None = None
    try:
        request = decode_request(line)
    except HiveError as e:
        error = e
    if error is not None:
        assert 400 <= error.status < 500
        assert json.loads(encode_error(error))["ok"] is False
        return
    assert type(request) in REQUEST_TYPES.values()
    assert set(json.loads(line)) == {"request", *request.to_json()}
