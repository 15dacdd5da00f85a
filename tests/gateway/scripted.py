"""Scripted upstreams for the gateway's client tests: every byte of both directions seen.

A raw HTTP/1.1 server on a unix socket answers each request as a test says
(:class:`Scripted`); :func:`served` pairs it with a pool of
:class:`enforcer.upstream.Upstream` connections; :func:`front` puts a real
aiohttp app running :func:`enforcer.proxy.forward_core` in front of a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from enforcer import proxy
from enforcer.upstream import Upstream

__all__ = [
    "Reply",
    "Scripted",
    "front",
    "get",
    "ok",
    "pool_to",
    "read_request",
    "scripted",
    "send_raw",
    "served",
    "unix_server",
    "until",
]

Reply = Callable[[int, bytes], bytes | None]
"""(request number from 1, the request's bytes) -> the answer's bytes, or None: close unanswered."""


def ok(body: bytes = b"ok", *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), head.encode(), body)


class Scripted:
    """A raw HTTP/1.1 server: reads whole requests, answers as ``reply`` says."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.heads = 0  # request heads read (whole requests or not)
        self.incomplete = 0  # connections that ended inside a request body

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    request = await read_request(reader, self)
                except asyncio.IncompleteReadError:
                    if self.heads > len(self.requests):
                        self.incomplete += 1
                    return
                if request is None:
                    return
                self.requests.append(request)
                answer = self.reply(len(self.requests), request)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    return
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader, server: Scripted) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n")
    server.heads += 1
    lower = head.lower()
    body = b""
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip(), 16)
            chunk = await reader.readexactly(size + 2)
            body += size_line + chunk
            if size == 0:
                break
    elif b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    return head + body


@contextlib.asynccontextmanager
async def unix_server(
    path: Path,
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    drop: Iterable[asyncio.StreamWriter] = (),
) -> AsyncIterator[None]:
    """Serve ``serve`` on ``path``; on the way out, close the connections in ``drop`` too."""
    srv = await asyncio.start_unix_server(serve, path)
    try:
        yield
    finally:
        srv.close()
        for writer in list(drop):
            writer.close()
        await srv.wait_closed()


@contextlib.asynccontextmanager
async def scripted(sock_dir: Path, reply: Reply) -> AsyncIterator[tuple[Scripted, Path]]:
    server = Scripted(reply)
    path = sock_dir / "up.sock"
    async with unix_server(path, server.serve):
        yield server, path


def pool_to(path: Path, *, idle: float = 5.0, limit: int = 8) -> Upstream:
    return Upstream(path, connect_timeout=2.0, idle_timeout=idle, limit=limit)


@contextlib.asynccontextmanager
async def served(sock_dir: Path, reply: Reply) -> AsyncIterator[tuple[Scripted, Upstream]]:
    """A scripted upstream and a pool of connections to it."""
    async with scripted(sock_dir, reply) as (server, path), pool_to(path) as pool:
        yield server, pool


async def get(pool: Upstream, target: str = "/x", method: str = "GET") -> tuple[int, bytes]:
    answer = await pool.request(method, target, CIMultiDict({"Host": "core"}))
    try:
        return answer.status, await answer.content.read()
    finally:
        answer.release()


@contextlib.asynccontextmanager
async def front(pool: Upstream) -> AsyncIterator[TestServer]:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict({"Host": "core"})
        if "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]
        return await proxy.forward_core(request, pool, request.raw_path, headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def send_raw(server: TestServer, data: bytes) -> bytes:
    assert server.host == "127.0.0.1"
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting")
