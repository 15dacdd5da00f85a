"""Properties of the gateway's paths and headers, with raw bytes on a real TCP socket.

Requests are written byte for byte (no client library to normalise them) to a
real gateway between a recording core double on core.sock and an agent UI
double (tests/gateway/stack.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from enforcer import paths
from enforcer.gateway import AGENT_CSP
from tests.gateway.stack import RawResponse, ThreadedStack, raw_request

PIECES = [
    "agent", "alpha", "ghost", "api", "agents", "static", "login", "questions", "7",
    ".", "..", "...", "", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "%5C",
    "\\", "%00", "%25", "%252e", "%61", "%41gent", "%C3%A9", "é", "日本", "a b", ";",
    "%3B", "%3F", "%23", "~", "a.b", ":", "@", "+", "%20", "%", "%g1", "alpha%2f..",
]  # fmt: skip


@st.composite
def raw_paths(draw: st.DrawFn, prefix: str = "") -> str:
    """Paths built from dangerous pieces: encodings, dot segments, slashes, unicode."""
    # Mostly printable ASCII (what reaches the application), some raw
    # controls and non-ASCII (what the HTTP parser or the path check refuses).
    chars = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(
        "é日\x00\x1f\x7f\x80"
    )
    parts = draw(st.lists(st.sampled_from(PIECES) | st.text(chars, max_size=4), max_size=7))
    path = prefix + "/".join(parts)
    if not prefix and draw(st.booleans()):
        path = "/" + path
    if draw(st.booleans()):
        path += "?" + draw(st.sampled_from(["", "a=1", "x=%2F", "q=..", "next=/api"]))
    return path


# --- pure ---------------------------------------------------------------------


@given(raw_paths())
def test_an_accepted_path_is_unchanged_and_has_no_dot_segment(raw: str) -> None:
    try:
        target = paths.parse_target(raw)
    except paths.PathRejected:
        return
    assert str(target) == raw
    assert paths.normalise(target.path) == target.path
    assert paths.normalise(paths.normalise(target.path)) == target.path
    for segment in target.path.split("/"):
        assert segment not in {".", ".."}
    # Decoding changes nothing that matters: no new slash, no dot segment,
    # and the same answer to "is this agent space?".
    decoded = unquote(target.path)
    assert decoded.count("/") == target.path.count("/")
    assert all(s not in {".", ".."} for s in decoded.split("/"))
    assert paths.in_agent_space(decoded) == paths.in_agent_space(target.path)
    assert "\\" not in decoded
    assert "\x00" not in decoded


@given(raw_paths(prefix="/agent/"))
def test_an_accepted_agent_path_stays_below_its_prefix(raw: str) -> None:
    try:
        target = paths.parse_target(raw)
    except paths.PathRejected:
        return
    agent = paths.agent_target(target)
    assert agent is not None
    if agent.name:
        assert target.path == agent.prefix + agent.path
        assert agent.upstream_target() == raw[len(agent.prefix) :]


# --- through a running gateway ------------------------------------------------

_REGISTRY_LOOKUP = re.compile(r"/api/agents/[a-z][a-z0-9-]{0,30}")


@pytest.fixture(scope="module")
def gw() -> Iterator[ThreadedStack]:
    with ThreadedStack() as running:
        yield running


def _send(
    gw: ThreadedStack,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    *,
    session: bool = True,
    body: bytes = b"",
) -> RawResponse:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{gw.stack.port}"]
    if session:
        lines.append(f"Cookie: hive_session={gw.cookie}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return raw_request(gw.stack.port, "\r\n".join(lines).encode("utf-8") + body)


METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])


@given(target=raw_paths(prefix="/agent/"), method=METHODS)
def test_no_request_under_agent_reaches_a_core_handler(
    gw: ThreadedStack, target: str, method: str
) -> None:
    assume(" " not in target)
    core_before = len(gw.stack.core.seen)
    changes_before = gw.stack.core.state_changes
    headers = {"Origin": gw.stack.origin, "X-CSRF-Token": gw.csrf}
    _send(gw, method, target, headers, body=b"answer=yes")
    for seen in gw.stack.core.seen[core_before:]:
        # The only thing the core sees is the gateway's own registry lookup.
        assert seen.method == "GET"
        assert _REGISTRY_LOOKUP.fullmatch(seen.raw_path), seen.raw_path
    assert gw.stack.core.state_changes == changes_before


@given(target=raw_paths(prefix="/agent/"), method=METHODS, session=st.booleans())
def test_every_agent_space_response_is_sandboxed_and_cookieless(
    gw: ThreadedStack, target: str, method: str, session: bool
) -> None:
    # Raw controls, spaces and non-ASCII bytes never reach the application:
    # the HTTP parser answers them with its own plain-text 400 before any
    # route or response hook runs (and no browser sends them: it
    # percent-encodes). Everything that does reach the gateway is checked here.
    assume(all("\x21" <= c <= "\x7e" for c in target))
    resp = _send(gw, method, target, session=session)
    assert resp.status != 0
    assert resp.headers.getall("Content-Security-Policy") == [AGENT_CSP]
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"
    assert "Set-Cookie" not in resp.headers
    assert not any(name.lower().startswith("access-control-") for name in resp.headers)


SPOOF_NAMES = [
    "X-Hive-Principal", "x-hive-principal", "X-HIVE-PRINCIPAL", "X-Hive-Agent", "X-Hive-Peer-Uid",
    "X-Forwarded-For", "X-Forwarded-User", "X-Forwarded-Prefix", "Forwarded", "X-Real-IP",
    "Authorization",
]  # fmt: skip
SPOOF_VALUES = ["operator", "agent:alpha", "service:core", "anonymous", "Bearer operator", "1"]


@st.composite
def spoofed_headers(draw: st.DrawFn) -> dict[str, str]:
    """Identity and forwarding headers a client has no right to set."""
    names = draw(st.lists(st.sampled_from(SPOOF_NAMES), min_size=1, max_size=5, unique=True))
    return {name: draw(st.sampled_from(SPOOF_VALUES)) for name in names}


@given(
    headers=spoofed_headers(),
    target=st.sampled_from(["/api/agents", "/questions", "/agent/alpha/", "/api/agents/alpha"]),
    session=st.booleans(),
)
def test_no_spoofed_header_changes_the_principal(
    gw: ThreadedStack, headers: dict[str, str], target: str, session: bool
) -> None:
    core_before = len(gw.stack.core.seen)
    agent_before = len(gw.stack.agent.seen)
    resp = _send(gw, "GET", target, headers, session=session)
    core_new = gw.stack.core.seen[core_before:]
    agent_new = gw.stack.agent.seen[agent_before:]
    if not session:
        assert resp.status in {401, 303}
        assert core_new == []
        assert agent_new == []
        return
    assert resp.status == 200
    for seen in core_new:
        assert seen.headers.getall("X-Hive-Principal") == ["operator"]
        assert not any(n.lower().startswith("x-forwarded-") for n in seen.headers)
    for seen in agent_new:
        assert "X-Hive-Principal" not in seen.headers
        assert "Authorization" not in seen.headers
        assert seen.headers.getall("X-Forwarded-Prefix") == ["/agent/alpha"]


@given(
    method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]),
    session=st.sampled_from(["none", "valid", "bogus"]),
    token=st.sampled_from(["none", "right", "wrong", "right-form", "wrong-form"]),
    origin=st.sampled_from(["none", "own", "null", "other", "http-variant"]),
    fetch_site=st.sampled_from(["none", "same-origin", "same-site", "cross-site"]),
    target=st.sampled_from(["/api/questions/7/answer", "/questions/7/answer", "/logout"]),
)
def test_state_changes_without_session_token_or_origin_never_happen(
    gw: ThreadedStack,
    method: str,
    session: str,
    token: str,
    origin: str,
    fetch_site: str,
    target: str,
) -> None:
    assume(target != "/logout" or method == "POST")
    headers: dict[str, str] = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"answer=yes"
    if token in {"right", "wrong"}:
        headers["X-CSRF-Token"] = gw.csrf if token == "right" else "nope"
    elif token.endswith("-form"):
        value = gw.csrf if token == "right-form" else "nope"
        body += f"&csrf_token={value}".encode()
    origins = {
        "own": gw.stack.origin,
        "null": "null",
        "other": "http://evil.example",
        "http-variant": gw.stack.origin.replace("127.0.0.1", "localhost"),
    }
    if origin in origins:
        headers["Origin"] = origins[origin]
    if fetch_site != "none":
        headers["Sec-Fetch-Site"] = fetch_site
    if session == "bogus":
        headers["Cookie"] = "hive_session=" + "A" * 43
    before = gw.stack.core.state_changes
    resp = _send(gw, method, target, headers, session=session == "valid", body=body)
    origin_ok = fetch_site in {"none", "same-origin"} and (
        origin == "own" or (origin == "none" and fetch_site == "same-origin")
    )
    allowed = session == "valid" and token.startswith("right") and origin_ok
    if target == "/logout":
        if allowed:  # the session just ended: log in again for the next example
            gw.call(gw._login())
        assert gw.stack.core.state_changes == before
        return
    assert gw.stack.core.state_changes == before + (1 if allowed else 0), resp.status
    assert (resp.status == 200) == allowed


# --- agent redirects (pure) ------------------------------------------------------

LOCATION_PIECES = [
    "", ".", "..", "%2e", "%2e%2e", "/", "//", "\\", "\t", "\n", " ", "evil.example",
    "https:", "javascript:alert(1)", "agent", "alpha", "beta", "@cap", "api", "x?y=1",
    "#f", "%2f", "%5c", "http:", "gateway.invalid",
]  # fmt: skip


@st.composite
def locations(draw: st.DrawFn) -> str:
    """Location values an agent UI might send: relative, absolute, hostile."""
    parts = draw(st.lists(st.sampled_from(LOCATION_PIECES), min_size=1, max_size=6))
    return draw(st.sampled_from(["", "/", "/agent/alpha/", "//"])) + "/".join(parts)


def _browser_resolves(location: str, request_path: str) -> tuple[str, str]:
    """(origin, path) as a browser would resolve it: tabs/newlines dropped, '\\' as '/'."""
    from urllib.parse import urljoin, urlsplit

    cleaned = location.replace("\t", "").replace("\n", "").replace("\\", "/").strip()
    resolved = urlsplit(urljoin("http://gw.test" + request_path, cleaned))
    return f"{resolved.scheme}://{resolved.netloc}", resolved.path


@given(
    locations(), st.sampled_from(["/agent/alpha/", "/agent/alpha/@cap/page", "/agent/alpha/a/b"])
)
def test_an_accepted_agent_redirect_stays_in_that_agents_pages(
    location: str, request_path: str
) -> None:
    if paths.agent_redirect_problem(location, request_path, "/agent/alpha/") is not None:
        return
    origin, path = _browser_resolves(location, request_path)
    assert origin == "http://gw.test"
    assert path.startswith("/agent/alpha/")
    assert paths.path_problem(path) is None


@pytest.mark.parametrize(
    ("location", "accepted"),
    [
        ("x", True),
        ("../x", True),
        ("/agent/alpha/done", True),
        ("?saved=1", True),
        ("/elsewhere", False),
        ("/api/agents", False),
        ("../../api/agents", False),
        ("/agent/beta/", False),
        ("//evil.example/", False),
        ("/\\evil.example/", False),
        ("https://evil.example/", False),
        ("javascript:alert(1)", False),
        ("/agent/alpha/%2e%2e/%2e%2e/api", False),
        ("\t//evil.example", False),
    ],
)
def test_agent_redirect_examples(location: str, accepted: bool) -> None:
    problem = paths.agent_redirect_problem(location, "/agent/alpha/@cap/page", "/agent/alpha/")
    assert (problem is None) == accepted, problem
