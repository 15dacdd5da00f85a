"""Proxying: errors as clean pages, streaming, WebSocket, SSE, headers both ways, paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from enforcer import proxy
from tests.gateway.scripted import scripted, send_raw
from tests.gateway.stack import RawResponse, Stack, raw_request

SPOOFED = {
    "X-Hive-Principal": "operator",
    "X-Hive-Agent": "alpha",
    "X-Forwarded-For": "10.0.0.1",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=10.0.0.1;host=evil.example",
    "X-Real-IP": "10.0.0.1",
    "Authorization": "Bearer operator",
    "Proxy-Authorization": "Basic eA==",
    "Connection": "keep-alive, X-Drop-Me",
    "X-Drop-Me": "hop",
    "TE": "trailers",
}


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with stack.client() as session:
        await stack.login(session)
        yield session


async def _raw_get(stack: Stack, client: aiohttp.ClientSession, target: str) -> RawResponse:
    """GET exactly ``target`` (a client library would re-encode it) with the session."""
    cookie = {c.key: c.value for c in client.cookie_jar}["hive_session"]
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
        f"Cookie: hive_session={cookie}\r\nConnection: close\r\n\r\n"
    ).encode()
    return await asyncio.to_thread(raw_request, stack.port, request)


def _assert_clean_page(text: str) -> None:
    lowered = text.lower()
    for leak in ("traceback", "127.0.0.1", "core.sock", "/tmp/", "exception", "errno"):
        assert leak not in lowered, leak


async def test_an_unknown_agent_is_a_clean_404(stack: Stack, client: aiohttp.ClientSession) -> None:
    for path in ("/agent/ghost/", "/agent/Not_A_Name/", "/agent/"):
        async with client.get(stack.url(path)) as resp:
            assert resp.status == 404, path
            assert resp.content_type == "text/html"
            _assert_clean_page(await resp.text())
            assert "sandbox" in resp.headers["Content-Security-Policy"]


async def test_an_agent_ui_that_is_down_is_a_clean_502(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    for name in ("down", "broken"):
        async with client.get(stack.url(f"/agent/{name}/")) as resp:
            assert resp.status == 502
            _assert_clean_page(await resp.text())
            assert resp.headers["Content-Security-Policy"].startswith("sandbox")


async def test_a_slow_agent_ui_is_a_clean_504(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(stack.url("/agent/alpha/slow")) as resp:
        assert resp.status == 504
        _assert_clean_page(await resp.text())


async def test_the_core_down_is_a_clean_503() -> None:
    async with Stack(start_core=False) as stack, stack.client() as client:
        await stack.login(client)
        async with client.get(stack.url("/agents")) as resp:
            assert resp.status == 503
            assert resp.content_type == "text/html"
            _assert_clean_page(await resp.text())
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 503
            body = await resp.json()
            assert set(body) == {"error", "reason", "request_id"}
            _assert_clean_page(body["reason"])
        async with client.get(stack.url("/agent/alpha/")) as resp:
            assert resp.status == 503


async def test_an_agent_path_is_forwarded_exactly_below_its_prefix(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    async with client.get(stack.url("/agent/alpha")) as redirected:  # to the slash
        assert redirected.status == 200
    resp = await _raw_get(stack, client, "/agent/alpha/a/b%20c/%C3%A9?x=1&y=%2F")
    assert resp.status == 200
    assert [s.raw_path for s in stack.agent.seen] == ["/", "/a/b%20c/%C3%A9?x=1&y=%2F"]
    assert stack.agent.seen[-1].headers["X-Forwarded-Prefix"] == "/agent/alpha"


async def test_a_core_path_is_forwarded_exactly(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    target = "/api/agents/alpha/state/notes%20today.md?raw=1&q=%3F&p=%2F"
    resp = await _raw_get(stack, client, target)
    assert resp.status == 200
    assert stack.core.seen[-1].raw_path == target


async def test_agent_responses_are_sandboxed_and_cookieless(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    for path in ("/agent/alpha/", "/agent/alpha/page", "/agent/alpha/redirect"):
        async with client.get(stack.url(path), allow_redirects=False) as resp:
            assert resp.headers.getall("Content-Security-Policy") == [
                "sandbox allow-scripts allow-forms; frame-ancestors 'self'"
            ]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            for banned in (
                "Set-Cookie",
                "Access-Control-Allow-Origin",
                "Clear-Site-Data",
                "Strict-Transport-Security",
                "Refresh",
            ):
                assert banned not in resp.headers, (path, banned)
    # The agent's cookie did not land in the browser either.
    assert {c.key for c in client.cookie_jar} == {"hive_session", "hive_csrf"}


async def test_the_operators_credentials_never_reach_an_agent(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    headers = {**SPOOFED, "X-CSRF-Token": stack.csrf}
    async with client.post(stack.url("/agent/alpha/form"), data=b"x", headers=headers) as resp:
        assert resp.status == 200
    seen = stack.agent.seen[-1].headers
    for name in (
        "Cookie",
        "Authorization",
        "Proxy-Authorization",
        "X-CSRF-Token",
        "X-Hive-Principal",
        "X-Hive-Agent",
        "X-Forwarded-For",
        "Forwarded",
        "X-Real-IP",
        "X-Drop-Me",
        "TE",
    ):
        assert name not in seen, name
    assert seen.getall("X-Forwarded-Prefix") == ["/agent/alpha"]
    assert seen["X-Forwarded-Host"] == f"127.0.0.1:{stack.port}"


async def test_spoofed_headers_are_replaced_on_the_way_to_the_core(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    async with client.get(stack.url("/api/agents"), headers=SPOOFED) as resp:
        assert resp.status == 200
    seen = stack.core.seen[-1].headers
    assert seen.getall("X-Hive-Principal") == ["operator"]
    for name in ("X-Hive-Agent", "X-Forwarded-For", "X-Forwarded-Prefix", "Forwarded"):
        assert name not in seen, name
    for name in ("X-Real-IP", "Authorization", "Cookie", "X-Drop-Me", "TE"):
        assert name not in seen, name


async def test_a_spoofed_principal_does_not_make_an_anonymous_request_the_operator(
    stack: Stack,
) -> None:
    async with stack.client() as anon:
        for path in ("/api/agents", "/agent/alpha/"):
            async with anon.get(stack.url(path), headers=SPOOFED, allow_redirects=False) as resp:
                assert resp.status in {401, 303}
    assert stack.core.seen == []
    assert stack.agent.seen == []


async def test_backend_cors_and_hop_headers_are_dropped(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    async with client.get(stack.url("/api/leaky")) as resp:
        assert resp.status == 200
        for name in resp.headers:
            assert not name.lower().startswith("access-control-"), name
        assert "X-Secret-Hop" not in resp.headers
        assert resp.headers.getall("X-Hive-Principal", []) == []
        assert "frame-ancestors 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"


async def test_static_assets_are_public_and_carry_no_principal(stack: Stack) -> None:
    async with stack.client() as anon, anon.get(stack.url("/static/app.css")) as resp:
        assert resp.status == 200
        assert await resp.text() == "body{}"
    assert "X-Hive-Principal" not in stack.core.seen[-1].headers


async def test_health_is_public(stack: Stack) -> None:
    async with stack.client() as anon, anon.get(stack.url("/health")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "target",
    [
        "/agent/alpha/../../api/agents",
        "/agent/alpha/%2e%2e/x",
        "/agent/alpha%2f..%2fapi",
        "/api/./agents",
        "/api//agents",
        "/api\\agents",
        "/api/agents%00",
        "/%61pi/agents",
        "/%61gent/alpha/",
        "/api/%252e%252e/x",
        "/" + "a" * 5000,
    ],
)
async def test_odd_paths_are_refused_before_any_backend(stack: Stack, target: str) -> None:
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: hive_session=x\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    resp = await asyncio.to_thread(raw_request, stack.port, request)
    assert resp.status in {400, 414}, (target, resp.status)
    assert stack.core.seen == []
    assert stack.agent.seen == []


# --- streaming ----------------------------------------------------------------


async def _upload_through(stack: Stack, client: aiohttp.ClientSession, path: str) -> None:
    backend = stack.core if path.startswith("/api/") else stack.agent
    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 65536
        # Hold the rest back until the backend has the first chunk: if the
        # gateway buffered the whole body, the backend would never get it.
        await asyncio.wait_for(release.wait(), 10)
        for _ in range(16):
            yield b"y" * 65536

    async def watch() -> None:
        await asyncio.wait_for(backend.first_chunk.wait(), 10)
        release.set()

    watcher = asyncio.create_task(watch())
    headers = {"Origin": stack.origin, "X-CSRF-Token": stack.csrf}
    async with client.post(stack.url(path), data=body(), headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["bytes"] == 17 * 65536
    await watcher


async def test_request_bodies_stream_to_the_core(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    await _upload_through(stack, client, "/api/upload")


async def test_request_bodies_stream_to_an_agent(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    await _upload_through(stack, client, "/agent/alpha/upload")


@pytest.mark.parametrize("path", ["/api/download", "/agent/alpha/download"])
async def test_response_bodies_stream_back(
    stack: Stack, client: aiohttp.ClientSession, path: str
) -> None:
    backend = stack.core if path.startswith("/api/") else stack.agent
    async with client.get(stack.url(path)) as resp:
        first = await resp.content.readexactly(65536)
        assert first == b"a" * 65536
        backend.client_has_first.set()
        rest = await resp.read()
        assert rest == b"b" * 65536


@pytest.mark.parametrize("path", ["/api/events", "/agent/alpha/events"])
async def test_server_sent_events_pass_through(
    stack: Stack, client: aiohttp.ClientSession, path: str
) -> None:
    backend = stack.core if path.startswith("/api/") else stack.agent
    async with client.get(stack.url(path)) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.content.readline() == b"data: one\n"
        backend.client_has_first.set()
        rest = await resp.read()
        assert rest == b"\ndata: two\n\n"


@pytest.mark.parametrize("path", ["/api/ws", "/agent/alpha/ws"])
async def test_websockets_pass_through(
    stack: Stack, client: aiohttp.ClientSession, path: str
) -> None:
    ws_url = stack.url(path).replace("http://", "ws://")
    async with client.ws_connect(
        ws_url, headers={"Origin": stack.origin}, protocols=("chat",)
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "echo:hi"
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes(timeout=5) == b"cba"
    backend = stack.core if path.startswith("/api/") else stack.agent
    seen = backend.seen[-1].headers
    assert "Cookie" not in seen
    if path.startswith("/agent/"):
        assert "X-Hive-Principal" not in seen


@pytest.mark.parametrize(
    ("to", "location"),
    [
        ("elsewhere", "elsewhere"),
        ("../alpha/done", "../alpha/done"),
        ("/agent/alpha/done", "/agent/alpha/done"),
    ],
)
async def test_an_agent_may_redirect_within_its_own_pages(
    stack: Stack, client: aiohttp.ClientSession, to: str, location: str
) -> None:
    url = stack.url(f"/agent/alpha/redirect?to={quote(to, safe='')}")
    async with client.get(url, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == location


@pytest.mark.parametrize(
    "to",
    [
        "https://elsewhere.invalid/",
        "//elsewhere.invalid/",
        "/\\elsewhere.invalid/",
        "/api/agents",
        "/elsewhere",
        "/agent/beta/",
        "../../api/agents",
        "javascript:alert(1)",
    ],
)
async def test_an_agent_redirect_out_of_its_pages_is_refused(
    stack: Stack, client: aiohttp.ClientSession, to: str
) -> None:
    url = stack.url(f"/agent/alpha/redirect?to={quote(to, safe='')}")
    async with client.get(url, allow_redirects=False) as resp:
        assert resp.status == 502
        assert "Location" not in resp.headers
        page = await resp.text()
        assert "elsewhere" not in page
        assert "/api/agents" not in page
    # The agent answered: its UI is still reachable afterwards.
    async with client.get(stack.url("/agent/alpha/page")) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "answer",
    [
        # RFC 9110 8.6: a 304 may carry the length of the body it does not send.
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: "e"\r\n\r\n',
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_an_agent_answer_without_a_body_by_definition_is_relayed_whole(
    sock_dir: Path, answer: bytes
) -> None:
    # Agent UIs go through aiohttp's client session, not the core client.
    async with (
        scripted(sock_dir, lambda n, r: answer) as (_, path),
        proxy.unix_session(path, connect_timeout=2, idle_timeout=5) as session,
    ):

        async def handler(request: web.Request) -> web.StreamResponse:
            headers: CIMultiDict[str] = CIMultiDict({"Host": "agent"})
            return await proxy.forward_http(request, session, URL("http://agent/n"), headers)

        app = web.Application()
        app.router.add_get("/n", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            relayed = await send_raw(server, b"GET /n HTTP/1.1\r\nHost: a\r\n\r\n")
        finally:
            await server.close()
    assert relayed.split(b"\r\n", 1)[0] == answer.split(b"\r\n", 1)[0]
