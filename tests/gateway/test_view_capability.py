"""View capabilities: how a sandboxed agent UI reaches its own space without the cookie.

The operator's ``SameSite=Strict`` session cookie is not sent with requests
made by a sandboxed (opaque-origin) document, so the gateway redirects the
frame's navigation to ``/agent/<name>/@<cap>/`` and lets that capability,
alone, open that one agent's UI space while the session lives. These tests
check each half of that promise on the real gateway: what the capability
opens (its own agent's UI, every method, streams, CORS for its own fetches)
and what it never opens (another agent, a core route, anything once the
session ended, anything forged or bent by path tricks).
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from enforcer.sessions import VIEW_CAPABILITY_LENGTH, SessionStore
from tests.gateway.stack import Stack, raw_request

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
_B64URL = string.ascii_letters + string.digits + "-_"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the store (pure) ---------------------------------------------------------------


def test_a_capability_opens_its_own_agent_for_its_own_live_session_only() -> None:
    clock = FakeClock()
    store = SessionStore(60, clock=clock)
    sid, session = store.create()
    _, other = store.create()
    cap = store.view_capability(session, "alpha")
    assert len(cap) == VIEW_CAPABILITY_LENGTH
    assert set(cap) <= set(_B64URL)
    assert sid not in cap
    assert session.csrf_token not in cap
    opened = store.view_session(cap, "alpha")
    assert opened is not None
    assert (opened.view_id, opened.expires_at) == (session.view_id, session.expires_at)
    assert opened.csrf_token == ""  # a capability carries no operator authority
    assert store.view_session(cap, "beta") is None
    assert store.view_capability(other, "alpha") != cap
    clock.now += 59.9
    assert store.view_session(cap, "alpha") is not None
    clock.now += 0.2
    assert store.view_session(cap, "alpha") is None


def test_logout_ends_a_sessions_capabilities_and_no_others() -> None:
    store = SessionStore(60)
    sid, session = store.create()
    _, other = store.create()
    cap = store.view_capability(session, "alpha")
    other_cap = store.view_capability(other, "alpha")
    store.revoke(sid)
    assert store.view_session(cap, "alpha") is None
    assert store.view_session(other_cap, "alpha") is not None


def test_a_capability_does_not_survive_a_new_store() -> None:
    # A capability verifies only under the session key that made it.
    one = SessionStore(60)
    _, session = one.create()
    cap = one.view_capability(session, "alpha")
    assert SessionStore(60).view_session(cap, "alpha") is None


_NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True)


@given(a=_NAMES, b=_NAMES)
def test_property_a_capability_for_one_agent_never_opens_another(a: str, b: str) -> None:
    store = SessionStore(60)
    _, session = store.create()
    cap = store.view_capability(session, a)
    assert (store.view_session(cap, b) is not None) == (a == b)


@given(forged=st.text(alphabet=_B64URL + "@.%/", max_size=60), name=_NAMES)
def test_property_a_made_up_capability_opens_nothing(forged: str, name: str) -> None:
    store = SessionStore(60)
    _, session = store.create()
    real = store.view_capability(session, name)
    if forged != real:
        assert store.view_session(forged, name) is None


@given(position=st.integers(0, VIEW_CAPABILITY_LENGTH - 1), char=st.sampled_from(_B64URL))
def test_property_changing_one_character_breaks_a_capability(position: int, char: str) -> None:
    store = SessionStore(60)
    _, session = store.create()
    cap = store.view_capability(session, "alpha")
    bent = cap[:position] + char + cap[position + 1 :]
    if bent != cap:
        assert store.view_session(bent, "alpha") is None


# --- through the real gateway ------------------------------------------------------------


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with stack.client() as session:
        await stack.login(session)
        yield session


async def _view_prefix(stack: Stack, client: aiohttp.ClientSession, name: str) -> str:
    """What the sandboxed frame's first navigation is sent to: ``/agent/<name>/@<cap>``."""
    async with client.get(
        stack.url(f"/agent/{name}/"), headers=NAVIGATE, allow_redirects=False
    ) as resp:
        assert resp.status == 303, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        assert "sandbox" in resp.headers["Content-Security-Policy"]
        location = resp.headers["Location"]
    prefix, slash, rest = location.rpartition("/")
    assert (slash, rest) == ("/", "")
    assert prefix.startswith(f"/agent/{name}/@")
    assert len(prefix) == len(f"/agent/{name}/@") + VIEW_CAPABILITY_LENGTH
    return prefix


def _cookieless() -> aiohttp.ClientSession:
    """What a sandboxed document is: no cookie jar at all."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def test_a_framed_navigation_is_sent_to_the_capability_and_that_works_without_cookies(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    prefix = await _view_prefix(stack, client, "alpha")
    async with _cookieless() as frame:
        for path in ("/", "/app.js", "/api/items?x=1"):
            async with frame.get(stack.url(prefix + path), allow_redirects=False) as resp:
                assert resp.status == 200, path
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert "Access-Control-Allow-Credentials" not in resp.headers
                assert resp.headers.getall("Content-Security-Policy") == [
                    "sandbox allow-scripts allow-forms; frame-ancestors 'self'"
                ]
                assert "Set-Cookie" not in resp.headers
    seen = stack.agent.seen[-3:]
    assert [s.raw_path for s in seen] == ["/", "/app.js", "/api/items?x=1"]
    for request in seen:
        assert request.headers.getall("X-Forwarded-Prefix") == [prefix]
        assert "Cookie" not in request.headers
        assert "Authorization" not in request.headers
        assert "X-Hive-Principal" not in request.headers


async def test_the_redirect_keeps_the_path_and_query_and_the_bare_capability_gets_its_slash(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    async with client.get(
        stack.url("/agent/alpha/deep/page?q=1"), headers=NAVIGATE, allow_redirects=False
    ) as resp:
        location = resp.headers["Location"]
    prefix = location.split("/deep/")[0]
    assert location == f"{prefix}/deep/page?q=1"
    async with (
        _cookieless() as frame,
        frame.get(stack.url(prefix + "?q=2"), allow_redirects=False) as resp,
    ):
        assert resp.status == 308
        assert resp.headers["Location"] == f"{prefix}/?q=2"


async def test_cookie_requests_that_are_not_navigations_are_proxied_as_before(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    async with client.get(stack.url("/agent/alpha/page"), allow_redirects=False) as resp:
        assert resp.status == 200
        assert not any(n.lower().startswith("access-control-") for n in resp.headers)
    assert stack.agent.seen[-1].headers.getall("X-Forwarded-Prefix") == ["/agent/alpha"]


async def test_anonymous_navigations_still_go_to_login_and_never_get_a_capability(
    stack: Stack,
) -> None:
    async with (
        _cookieless() as anon,
        anon.get(stack.url("/agent/alpha/"), headers=NAVIGATE, allow_redirects=False) as resp,
    ):
        assert resp.status == 303
        assert URL(resp.headers["Location"]).path == "/login"
    assert stack.agent.seen == []


async def test_a_capability_for_one_agent_does_not_open_another(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    down = await _view_prefix(stack, client, "down")
    cap = down.rpartition("@")[2]
    async with (
        _cookieless() as frame,
        frame.get(stack.url(f"/agent/alpha/@{cap}/"), allow_redirects=False) as resp,
    ):
        assert resp.status == 403
        assert resp.content_type == "text/html"
        assert "not valid" in await resp.text()
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "sandbox" in resp.headers["Content-Security-Policy"]
    # Even together with the operator's cookie: in the slot, the capability alone decides.
    async with client.get(stack.url(f"/agent/alpha/@{cap}/"), allow_redirects=False) as resp:
        assert resp.status == 403
    assert stack.agent.seen == []


def _forgeries(cap: str) -> list[str]:
    flipped = cap[:-1] + ("A" if cap[-1] != "A" else "B")
    return [
        "",
        "x",
        cap[:-1],
        cap + "A",
        flipped,
        cap[:22] + secrets.token_urlsafe(16),  # a live view id, a made-up mac
        secrets.token_urlsafe(16) + cap[22:],  # a made-up view id, a real mac
        secrets.token_urlsafe(33)[:VIEW_CAPABILITY_LENGTH],
        cap.swapcase(),
        cap + ";x",
        "@" + cap,
        # The live capability itself, one character percent-encoded: no decoding
        # game opens it (sent as written: see the encoded URL below).
        cap[:5] + f"%{ord(cap[5]):02X}" + cap[6:],
    ]


async def test_forged_malformed_or_missing_capabilities_open_nothing(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    cap = (await _view_prefix(stack, client, "alpha")).rpartition("@")[2]
    async with _cookieless() as frame:
        for forged in _forgeries(cap):
            for method in ("GET", "POST", "OPTIONS"):
                # encoded=True: yarl would otherwise decode %41 back to "A".
                url = URL(stack.url(f"/agent/alpha/@{forged}/x"), encoded=True)
                async with frame.request(method, url, allow_redirects=False) as resp:
                    assert resp.status in {400, 403}, (forged, method, resp.status)
                    assert "Access-Control-Allow-Origin" not in resp.headers
        # No capability at all: the anonymous rule (login), as before.
        async with frame.get(stack.url("/agent/alpha/app.js"), allow_redirects=False) as resp:
            assert resp.status == 303
    assert stack.agent.seen == []
    assert stack.core.state_changes == 0


async def test_logout_ends_the_capability_and_so_does_a_new_login(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    prefix = await _view_prefix(stack, client, "alpha")
    async with _cookieless() as frame:
        async with frame.get(stack.url(prefix + "/")) as resp:
            assert resp.status == 200
        await stack.login(client)  # a new session replaces the old one
        async with frame.get(stack.url(prefix + "/"), allow_redirects=False) as resp:
            assert resp.status == 403
        second = await _view_prefix(stack, client, "alpha")
        assert second != prefix
        async with client.post(
            stack.url("/logout"),
            headers={"Origin": stack.origin, "X-CSRF-Token": stack.csrf},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        async with frame.get(stack.url(second + "/"), allow_redirects=False) as resp:
            assert resp.status == 403


async def test_an_expired_session_ends_the_capability() -> None:
    async with Stack(gateway={"session_ttl_seconds": 1}) as stack, stack.client() as client:
        await stack.login(client)
        prefix = await _view_prefix(stack, client, "alpha")
        async with _cookieless() as frame:
            async with frame.get(stack.url(prefix + "/")) as resp:
                assert resp.status == 200
            await asyncio.sleep(1.1)
            async with frame.get(stack.url(prefix + "/"), allow_redirects=False) as resp:
                assert resp.status == 403


async def test_path_tricks_around_the_capability_never_leave_the_agents_space(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    prefix = await _view_prefix(stack, client, "alpha")
    cap = prefix.rpartition("@")[2]
    refused = {
        f"{prefix}/../../../api/agents": 400,
        f"{prefix}/..%2F..%2Fapi%2Fagents": 400,
        f"{prefix}%2F..%2F..%2Fapi": 400,
        f"/agent/alpha/%2e%2e/@{cap}/": 400,
        f"/agent/alpha//@{cap}/": 400,
        f"//agent/alpha/@{cap}/": 400,
        f"/agent/alpha@{cap}/": 404,
        f"/agent/@{cap}/": 404,
        f"/agent/alpha/x/@{cap}/": 303,  # not the slot: anonymous -> login
        f"/agent/alpha/%40{cap}/": 303,  # an encoded @ is not the slot either
        f"/@{cap}/api/agents": 303,  # outside the agent space a capability is nothing
        f"/api/agents/alpha/@{cap}": 401,
        f"/agents/alpha/@{cap}": 303,
    }
    core_before = len(stack.core.seen)
    for target, status in refused.items():
        request = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nConnection: close\r\n\r\n"
        ).encode()
        raw = await asyncio.to_thread(raw_request, stack.port, request)
        assert raw.status == status, (target, raw.status)
        assert "Access-Control-Allow-Origin" not in raw.headers, target
    assert stack.agent.seen == []
    # Only the anonymous static/none traffic: no operator request reached the core.
    for seen in stack.core.seen[core_before:]:
        assert "X-Hive-Principal" not in seen.headers
    # A second @ segment is the agent's own path, under the same (valid) prefix.
    async with _cookieless() as frame, frame.get(stack.url(f"{prefix}/@{cap}/x")) as resp:
        assert resp.status == 200
    assert stack.agent.seen[-1].raw_path == f"/@{cap}/x"


async def test_every_method_reaches_only_the_agent_without_csrf(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    prefix = await _view_prefix(stack, client, "alpha")
    async with _cookieless() as frame:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            async with frame.request(
                method,
                stack.url(prefix + "/api/items"),
                data=b"a=1",
                headers={"Origin": "null", "Content-Type": "application/x-www-form-urlencoded"},
            ) as resp:
                assert resp.status == 200, method
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert [s.method for s in stack.agent.seen[-4:]] == ["POST", "PUT", "PATCH", "DELETE"]
    assert all(s.body == b"a=1" for s in stack.agent.seen[-4:])
    assert stack.core.state_changes == 0


async def test_the_gateway_answers_cors_preflights_in_a_capability_space(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    prefix = await _view_prefix(stack, client, "alpha")
    agent_before = len(stack.agent.seen)
    async with _cookieless() as frame:
        preflight = {
            "Origin": "null",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, x-thing",
        }
        async with frame.options(stack.url(prefix + "/api/items"), headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "PUT" in resp.headers["Access-Control-Allow-Methods"]
            assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-thing"
            assert "Access-Control-Allow-Credentials" not in resp.headers
        odd = {**preflight, "Access-Control-Request-Headers": "a\tb, (c)"}
        async with frame.options(stack.url(prefix + "/api/items"), headers=odd) as resp:
            assert resp.status == 204
            assert "Access-Control-Allow-Headers" not in resp.headers
        # A plain OPTIONS (no preflight) is the agent's own business.
        async with frame.options(stack.url(prefix + "/api/items")) as resp:
            assert resp.status == 200
    assert len(stack.agent.seen) == agent_before + 1


async def test_event_streams_and_websockets_work_through_a_capability(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    prefix = await _view_prefix(stack, client, "alpha")
    async with _cookieless() as frame:
        async with frame.get(stack.url(prefix + "/events")) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert await resp.content.readline() == b"data: one\n"
            stack.agent.client_has_first.set()
            assert await resp.read() == b"\ndata: two\n\n"
        ws_url = stack.url(prefix + "/ws").replace("http://", "ws://")
        async with frame.ws_connect(ws_url, headers={"Origin": "null"}, protocols=("chat",)) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "echo:hi"
    assert stack.agent.seen[-1].raw_path == "/ws"
    assert "Cookie" not in stack.agent.seen[-1].headers


TOP_LEVEL = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


@pytest.mark.parametrize("with_capability", [False, True])
@pytest.mark.parametrize("path", ["/", "/app.js", "/deep/page?x=1"])
async def test_a_top_level_navigation_into_agent_space_gets_the_agents_framing_page(
    stack: Stack, client: aiohttp.ClientSession, with_capability: bool, path: str
) -> None:
    # A shift-click out of the sandboxed frame, "open frame in new tab", a
    # bookmark: agent content is never the top-level document on the operator's
    # origin (it could pose as the operator's login form there).
    prefix = await _view_prefix(stack, client, "alpha") if with_capability else "/agent/alpha"
    seen = len(stack.agent.seen)
    async with (
        _cookieless() as bare,
        client.get(stack.url(prefix + path), headers=TOP_LEVEL, allow_redirects=False) as resp,
    ):
        assert resp.status == 303
        assert resp.headers["Location"] == "/agents/alpha"
        if with_capability:  # the capability alone (no cookie) is sent the same way
            async with bare.get(
                stack.url(prefix + path), headers=TOP_LEVEL, allow_redirects=False
            ) as alone:
                assert alone.status == 303
                assert alone.headers["Location"] == "/agents/alpha"
    assert len(stack.agent.seen) == seen


@pytest.mark.parametrize(
    ("next_target", "landing"),
    [
        ("/agent/alpha/", "/agents/alpha"),
        ("/agent/alpha/@x/app.js", "/agents/alpha"),
        ("/agent/", "/"),
        ("/agents/alpha", "/agents/alpha"),
    ],
)
async def test_login_never_lands_in_agent_space(
    stack: Stack, next_target: str, landing: str
) -> None:
    async with (
        stack.client() as fresh,
        fresh.post(
            stack.url("/login"),
            data={"token": stack.token, "next": next_target},
            headers={"Origin": stack.origin},
            allow_redirects=False,
        ) as resp,
    ):
        assert resp.status == 303
        assert resp.headers["Location"] == landing
