"""Attacks on the real gateway: a hostile agent UI, odd methods, and raw request bytes.

The gateway runs on 127.0.0.1 between the recording core double on ``core.sock``
(tests/gateway/stack.py) and, here, an agent UI written to misbehave: it sends
every origin-wide header it can think of, tries to split its response, and
redirects into the operator's API. Each test passes when the boundary holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from enforcer.gateway import AGENT_CSP
from tests.gateway.stack import Stack, raw_request

# Response headers that speak for the whole origin (or the operator's browser),
# which agent content must never set on the operator's origin.
ORIGIN_WIDE = {
    "Set-Cookie": "hive_session=tossed; Path=/",
    "SET-COOKIE": "hive_csrf=tossed; Path=/",
    "set-cookie": "third=1",
    "Set-Cookie2": "legacy=1",
    "Content-Security-Policy": "default-src *",
    "Content-Security-Policy-Report-Only": "default-src 'none'; report-uri /collect",
    "X-Frame-Options": "ALLOWALL",
    "Clear-Site-Data": '"cookies", "storage"',
    "Strict-Transport-Security": "max-age=0",
    "Public-Key-Pins-Report-Only": 'pin-sha256="x"; report-uri="/r"',
    "Expect-CT": "max-age=0",
    "Alt-Svc": 'h2=":1"; ma=2592000; persist=1',
    "Service-Worker-Allowed": "/",
    "Origin-Agent-Cluster": "?0",
    # Network Error Logging: every request to the origin reported to the agent.
    "NEL": '{"report_to":"g","max_age":31536000,"success_fraction":1.0}',
    "Report-To": '{"group":"g","max_age":31536000,"endpoints":[{"url":"https://c.invalid/r"}]}',
    "Reporting-Endpoints": 'g="https://c.invalid/r"',
    "Accept-CH": "Sec-CH-UA-Full-Version-List",
    "Critical-CH": "Sec-CH-UA-Full-Version-List",
    "Set-Login": "logged-in",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Credentials": "true",
    "X-Hive-Principal": "operator",
    "Referrer-Policy": "unsafe-url",
    "X-Content-Type-Options": "sniff",
}
BANNED = [
    name
    for name in ORIGIN_WIDE
    if name.lower() not in {"content-security-policy", "referrer-policy", "x-content-type-options"}
]


def _hostile_ui() -> web.Application:
    async def headers(request: web.Request) -> web.Response:
        response = web.Response(text="<script>document.cookie</script>", content_type="text/html")
        for name, value in ORIGIN_WIDE.items():
            response.headers.add(name, value)
        response.headers.add("Content-Security-Policy", "script-src *")
        return response

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        for name, value in ORIGIN_WIDE.items():
            response.headers.add(name, value)
        await response.prepare(request)
        await response.write(b"x" * (256 * 1024))  # past the small-body path
        await response.write_eof()
        return response

    async def into_api(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/api/questions/7/answer", headers=ORIGIN_WIDE)

    async def error(request: web.Request) -> web.Response:
        return web.json_response(
            {"reason": "<img src=x onerror=alert(1)>"}, status=418, headers=ORIGIN_WIDE
        )

    app = web.Application()
    app.router.add_get("/headers", headers)
    app.router.add_get("/streamed", streamed)
    app.router.add_route("*", "/into-api", into_api)
    app.router.add_get("/error", error)
    return app


async def _raw_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An agent UI that answers with hand-written bytes (response splitting attempts)."""
    head = await reader.readuntil(b"\r\n\r\n")
    target = head.split(b" ")[1]
    ok = b"Content-Length: 2\r\n\r\nok"
    replies = {
        b"/cr": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: hive_session=split\r\n" + ok,
        b"/fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n Set-Cookie: hive_session=folded\r\n" + ok,
        b"/lf": b"HTTP/1.1 200 OK\nSet-Cookie: hive_session=lf\nContent-Length: 2\n\nok",
        b"/nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00Set-Cookie: hive_session=nul\r\n" + ok,
        b"/two": (
            b"HTTP/1.1 200 OK\r\n"
            + ok
            + b"HTTP/1.1 200 OK\r\nSet-Cookie: hive_session=second\r\n"
            + ok
        ),
        b"/101": (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ),
    }
    writer.write(replies.get(target, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    await writer.drain()
    writer.close()


@pytest.fixture
async def hostile(stack: Stack) -> AsyncIterator[Stack]:
    """The stack with two more agents: ``evil`` (aiohttp) and ``raw`` (hand-written bytes)."""
    runner = web.AppRunner(_hostile_ui(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server = await asyncio.start_server(_raw_agent, "127.0.0.1", 0)
    raw_port = server.sockets[0].getsockname()[1]
    stack.agents["evil"] = f"http://127.0.0.1:{port}"
    stack.agents["raw"] = f"http://127.0.0.1:{raw_port}"
    try:
        yield stack
    finally:
        server.close()
        await server.wait_closed()
        await runner.cleanup()


@pytest.fixture
async def operator(hostile: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with hostile.client() as client:
        await hostile.login(client)
        yield client


def _assert_sandboxed(headers: CIMultiDictProxy[str], where: str) -> None:
    assert headers.getall("Content-Security-Policy", []) == [AGENT_CSP], where
    assert headers.getall("X-Content-Type-Options", []) == ["nosniff"], where
    assert headers.getall("Referrer-Policy", []) == ["no-referrer"], where
    for name in BANNED:
        assert headers.getall(name, []) == [], (where, name)


@pytest.mark.parametrize("path", ["/headers", "/streamed", "/into-api", "/error"])
async def test_a_hostile_agent_sets_no_origin_wide_header(
    hostile: Stack, operator: aiohttp.ClientSession, path: str
) -> None:
    async with operator.get(hostile.url(f"/agent/evil{path}"), allow_redirects=False) as resp:
        await resp.read()
        _assert_sandboxed(resp.headers, path)
    assert {c.key for c in operator.cookie_jar} == {"hive_session", "hive_csrf"}
    assert {c.value for c in operator.cookie_jar}.isdisjoint({"tossed"})


async def test_an_agent_redirect_into_the_api_changes_nothing(
    hostile: Stack, operator: aiohttp.ClientSession
) -> None:
    """A 307 keeps the method and body. The gateway does not pass on a Location
    outside the agent's pages at all; and a browser that posted there anyway,
    from the sandboxed frame, would arrive with ``Origin: null`` and no CSRF
    token, and be refused."""
    async with operator.post(
        hostile.url("/agent/evil/into-api"), data={"answer": "yes"}, allow_redirects=False
    ) as resp:
        assert resp.status == 502
        assert "Location" not in resp.headers
        _assert_sandboxed(resp.headers, "307")
    async with operator.post(
        hostile.url("/api/questions/7/answer"), data={"answer": "yes"}, headers={"Origin": "null"}
    ) as resp:
        assert resp.status == 403
    assert hostile.core.state_changes == 0


@pytest.mark.parametrize("path", ["/cr", "/fold", "/lf", "/nul", "/two", "/101"])
async def test_a_split_agent_response_sets_no_cookie(
    hostile: Stack, operator: aiohttp.ClientSession, path: str
) -> None:
    async with operator.get(hostile.url(f"/agent/raw{path}"), allow_redirects=False) as resp:
        await resp.read()
        assert resp.status in {200, 502}, (path, resp.status)
        assert "Set-Cookie" not in resp.headers
        assert resp.headers.getall("Content-Security-Policy") == [AGENT_CSP]
    values = {c.key: c.value for c in operator.cookie_jar}
    assert values.keys() == {"hive_session", "hive_csrf"}
    assert values["hive_session"] not in {"split", "folded", "lf", "nul", "second"}


@pytest.mark.parametrize(
    "method", ["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT"]
)
async def test_unsafe_methods_without_a_csrf_token_never_reach_the_core(
    hostile: Stack, operator: aiohttp.ClientSession, method: str
) -> None:
    """Only GET/HEAD/OPTIONS go to the core without the token: every other method
    might change state, whatever the core does with it today."""
    before = len(hostile.core.seen)
    async with operator.request(
        method, hostile.url("/api/questions/7/answer"), headers={"Origin": "null"}, data=b"{}"
    ) as resp:
        assert resp.status == 403, await resp.text()
    assert hostile.core.seen[before:] == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1/api/agents",
        "http://127.0.0.1/agent/alpha/../../api/agents",
        "//agent/alpha/",
        "/agent/alpha/..;/..;/api/agents",
        "/agent/alpha%2F..%2F..%2Fapi%2Fagents",
        "/agent/alpha/%2e%2e/%2e%2e/api/agents",
        "/agent/alpha\\..\\..\\api\\agents",
        "/agent/%61lpha/",
        "/agent/alpha?/../../api/agents",
        "*",
    ],
)
async def test_agent_space_tricks_never_reach_the_core(hostile: Stack, target: str) -> None:
    """Raw targets (no client normalisation), with the operator's cookie: refused, or
    answered by the agent's own UI, but never by the core."""
    async with hostile.client() as client:
        await hostile.login(client)
        cookie = next(c.value for c in client.cookie_jar if c.key == "hive_session")
    before_core = len(hostile.core.seen)
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{hostile.port}\r\n"
        f"Cookie: hive_session={cookie}\r\nConnection: close\r\n\r\n"
    ).encode()
    resp = await asyncio.to_thread(raw_request, hostile.port, request)
    assert resp.status < 500, (target, resp.status, resp.body[:200])
    if resp.status < 400:
        # Accepted only as the agent's own path (a literal `..;` segment, a query):
        # it went to alpha's UI, sandboxed, or was redirected within its prefix.
        assert resp.headers["Content-Security-Policy"] == AGENT_CSP
        assert resp.headers.get("Location", "/agent/alpha/").startswith("/agent/alpha/")
    # Only the registry's own lookup of an agent's address may have reached the core.
    assert all(
        s.raw_path.startswith("/api/agents/") and s.method == "GET"
        for s in hostile.core.seen[before_core:]
    )
