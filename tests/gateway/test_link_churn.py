"""The door's link pool under churn: every kind of exchange ending, many at once.

After it, the pool's own count (``HotPath._live``) must match the links the
core still sees, every open link must be idle in the pool, none may be busy
for a client long gone, and the file descriptors must come back when the
pool is closed.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from enforcer.gateway import LINK_LIMIT
from tests.gateway.link_harness import (
    ScriptCore,
    door_stack,
    fd_count,
    get,
    hot_of,
    path_of,
    read_answer,
)

pytestmark = pytest.mark.asyncio

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


async def _script(
    core: ScriptCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        head = await core.head(reader)
        path = path_of(head)
        if path == b"/api/slow":
            await asyncio.sleep(0.3)
            writer.write(OK)
        elif path == b"/api/drop":
            return
        elif path == b"/api/cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            await writer.drain()
            return
        elif path == b"/api/stream":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(20):
                writer.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")
        elif path == b"/api/stall":
            await asyncio.sleep(3)
            writer.write(OK)
        elif path == b"/api/extra":
            writer.write(OK + OK)
        elif path == b"/api/interim":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + OK)
        elif path == b"/api/big":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"b" * 300000)
        else:
            writer.write(OK)
        await writer.drain()


PATHS = [
    "/api/ok",
    "/api/slow",
    "/api/drop",
    "/api/cut",
    "/api/stream",
    "/api/stall",
    "/api/extra",
    "/api/interim",
    "/api/big",
]


async def _client(port: int, cookie: str, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(rng.randint(1, 4)):
            path = rng.choice(PATHS)
            writer.write(get(path, cookie))
            mode = rng.random()
            if mode < 0.25:
                await asyncio.sleep(rng.random() * 0.2)
                return  # leaves mid-exchange
            status, _, _ = await read_answer(reader, wait=2.5)
            if status == 0:
                return
    finally:
        writer.close()


async def test_the_pool_counts_what_is_open_and_gives_it_all_back() -> None:
    async with door_stack(_script) as (stack, cookie, core):
        hot = hot_of(stack)
        base = fd_count()
        rng = random.Random(7)
        for _round in range(3):
            await asyncio.gather(*(_client(stack.port, cookie, rng) for _ in range(150)))
        await asyncio.sleep(3.5)  # every stall and slow answer is over
        idle = list(hot._idle)
        assert hot._live <= LINK_LIMIT
        assert hot._live == len(idle), f"live {hot._live}, idle {len(idle)}"
        assert core.open == hot._live, f"core sees {core.open} links, pool counts {hot._live}"
        assert all(link.ready and not link._paused for link in idle)
        hot.close()
        await asyncio.sleep(0.3)
        assert hot._live == 0
        assert core.open == 0
        assert fd_count() <= base + 2, f"{fd_count() - base} descriptors more than before"
