"""The lean core client: whole exchanges only are kept alive, heads never smuggle a line.

Every upstream here is a real server on a real unix socket: a scripted raw
HTTP/1.1 server (so each test controls every byte of the answer and sees
every byte of the request), and for streamed bodies a real aiohttp front
app running :func:`enforcer.proxy.forward_core`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import client_proto
from aiohttp.http_parser import HttpResponseParserPy
from multidict import CIMultiDict

from enforcer.upstream import Upstream, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from tests.gateway.scripted import front, get, ok, pool_to, scripted, send_raw, served, until


async def test_a_connection_is_kept_while_every_exchange_is_whole(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, r: ok(b"n%d" % n)) as (server, pool):
        for n in range(1, 6):
            assert await get(pool) == (200, b"n%d" % n)
    assert server.connections == 1


async def test_an_answer_not_read_to_its_end_closes_its_connection(sock_dir: Path) -> None:
    # The first answer announces 10 bytes and sends 5: the rest may come any time.
    def reply(n: int, request: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf." if n == 1 else ok()

    async with served(sock_dir, reply) as (server, pool):
        answer = await pool.request("GET", "/slow", CIMultiDict())
        assert await answer.content.readexactly(5) == b"half."
        answer.release()
        assert await get(pool) == (200, b"ok")
    assert server.connections == 2


async def test_chunked_and_close_delimited_answers_arrive_whole(sock_dir: Path) -> None:
    answers = {
        1: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        2: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    }
    async with served(sock_dir, lambda n, r: answers.get(n, ok())) as (server, pool):
        assert await get(pool) == (200, b"abcde")
        assert await get(pool) == (200, b"until the end")
        assert await get(pool) == (200, b"ok")
    # The chunked answer kept its connection; the close-delimited one could not.
    assert server.connections == 2


@pytest.mark.parametrize(
    ("name", "value", "target"),
    [
        ("X-Note", "a\r\nX-Hive-Principal: operator", "/x"),
        ("X-Note", "a\nGET /admin HTTP/1.1", "/x"),
        ("X-Note", "nul\x00byte", "/x"),
        ("X-Note\r\nX-Hive-Principal", "operator", "/x"),
        ("X-Note", "fine", "/x HTTP/1.1\r\nX-Hive-Principal: operator\r\n\r\nGET /y"),
        ("X-Note", "fine", "/x y"),
        ("X-Note", "fine", "http://elsewhere/x"),
        ("X-Note", "fine", "*"),
    ],
)
async def test_a_head_that_would_smuggle_a_line_is_never_sent(
    sock_dir: Path, name: str, value: str, target: str
) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool):
        with pytest.raises(UpstreamError):
            await pool.request("GET", target, CIMultiDict({name: value}))
        assert await get(pool) == (200, b"ok")  # the pool is unharmed
    assert len(server.requests) == 1
    assert b"operator" not in server.requests[0]


async def test_an_unasked_extra_answer_never_reaches_the_next_request(sock_dir: Path) -> None:
    # The first answer is followed by a second, unasked one on the same connection.
    def reply(n: int, request: bytes) -> bytes:
        if n == 1:
            return ok(b"first") + ok(b"INJECTED")
        return ok(b"second")

    async with served(sock_dir, reply) as (server, pool):
        assert await get(pool) == (200, b"first")
        await asyncio.sleep(0.05)
        assert await get(pool) == (200, b"second")
    assert server.connections == 2


async def test_an_idempotent_request_is_retried_once_on_a_kept_connection_closed_under_it(
    sock_dir: Path,
) -> None:
    # Request 2 arrives on the kept connection, which closes unanswered (as a
    # server does when its keep-alive ends just then); a new connection answers.
    async with served(sock_dir, lambda n, r: None if n == 2 else ok(b"n%d" % n)) as (server, pool):
        assert await get(pool) == (200, b"n1")
        assert await get(pool) == (200, b"n3")
    assert server.connections == 2


async def test_a_post_is_never_sent_twice(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, r: None if n == 2 else ok()) as (server, pool):
        assert await get(pool) == (200, b"ok")
        with pytest.raises(UpstreamUnreachable):
            await pool.request("POST", "/act", CIMultiDict(), b"{}")
    assert len(server.requests) == 2


async def test_a_refused_connection_is_unreachable(sock_dir: Path) -> None:
    async with pool_to(sock_dir / "nobody.sock") as pool:
        with pytest.raises(UpstreamUnreachable):
            await get(pool)


async def test_an_upstream_that_never_answers_times_out(sock_dir: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)
        writer.close()

    path = sock_dir / "silent.sock"
    srv = await asyncio.start_unix_server(silent, path)
    try:
        async with pool_to(path, idle=0.3) as pool:
            with pytest.raises(UpstreamTimeout):
                await get(pool)
    finally:
        srv.close()


async def test_a_full_pool_waits_at_most_the_connect_timeout(sock_dir: Path) -> None:
    async with scripted(sock_dir, lambda n, r: ok()) as (_, path):
        pool = Upstream(path, connect_timeout=0.2, idle_timeout=5.0, limit=1)
        held = await pool.request("GET", "/x", CIMultiDict())
        with pytest.raises(UpstreamTimeout):
            await get(pool)
        held.release()
        await held.content.read()
        assert await get(pool) == (200, b"ok")
        pool.close()


@pytest.fixture(params=["default", "pure-python"])
def response_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """aiohttp's response parser as installed, then its pure-Python one.

    As installed is llhttp's unless AIOHTTP_NO_EXTENSIONS=1. The pure-Python
    parser is more lenient (it takes the first of two Content-Length fields),
    so the client must refuse ambiguous framing itself, whichever parser runs.
    """
    if request.param == "pure-python":
        monkeypatch.setattr(client_proto, "HttpResponseParser", HttpResponseParserPy)
    return str(request.param)


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    ],
)
async def test_a_malformed_answer_is_a_bad_gateway_and_its_connection_is_dropped(
    sock_dir: Path, response_parser: str, garbage: bytes
) -> None:
    async with served(sock_dir, lambda n, r: garbage if n == 1 else ok()) as (server, pool):
        with pytest.raises(UpstreamError) as refused:
            await get(pool)
        assert refused.value.status == 502
        assert await get(pool) == (200, b"ok")
    assert server.connections == 2


async def test_head_and_interim_answers_frame_correctly(sock_dir: Path) -> None:
    answers = {
        1: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # HEAD: no body follows
        2: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + ok(b"final"),
    }
    async with served(sock_dir, lambda n, r: answers.get(n, ok())) as (server, pool):
        assert await get(pool, method="HEAD") == (200, b"")
        assert await get(pool) == (200, b"final")
        assert await get(pool) == (200, b"ok")
    assert server.connections == 1


async def test_a_streamed_body_arrives_with_exactly_its_length(sock_dir: Path) -> None:
    body = b"y" * 200_000
    async with served(sock_dir, lambda n, r: ok()) as (server, pool), front(pool) as fr:
        head = b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
        answer = await send_raw(fr, head + body)
        assert answer.startswith(b"HTTP/1.1 200")
    (request,) = server.requests
    assert request.endswith(b"\r\n\r\n" + body)
    assert b"content-length: 200000" in request.lower()


async def test_a_body_of_unknown_length_is_sent_chunked(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool), front(pool) as fr:
        head = b"POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer = await send_raw(fr, head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
    (request,) = server.requests
    assert b"transfer-encoding: chunked" in request.lower()
    assert b"content-length" not in request.lower()
    body = request.split(b"\r\n\r\n", 1)[1]
    chunks = body.split(b"\r\n")
    assert b"".join(chunks[1::2]) == b"hello world"


async def test_a_client_gone_mid_body_never_completes_the_upstream_request(
    sock_dir: Path,
) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool), front(pool) as fr:
        assert fr.host == "127.0.0.1"
        _, writer = await asyncio.open_connection(fr.host, fr.port)
        writer.write(b"POST /act HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
        writer.write(b"z" * 10)
        await writer.drain()
        await until(lambda: server.heads == 1)  # the upstream is inside the body
        writer.close()
        await until(lambda: server.incomplete == 1)
    assert server.requests == []
