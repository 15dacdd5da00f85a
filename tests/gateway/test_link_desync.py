"""Bytes from the core that are not the answer asked for never become the next one.

Each script answers the first request on a connection with "ok" plus something
more (a second answer, its start, late bytes), and later requests with "second";
a client then reads twice on one connection and once on another. Nobody may
get EVIL; the door answers as the application does.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.link_harness import Script, ScriptCore, get, read_answer, stacks

pytestmark = pytest.mark.asyncio

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
SECOND = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nsecond"
EVIL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nEVIL"


def _script(kind: str) -> Script:
    async def script(
        core: ScriptCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if kind == "before-asked":
            writer.write(EVIL)
            await writer.drain()
            await asyncio.sleep(0.05)
        n = 0
        while True:
            await core.head(reader)
            n += 1
            if n > 1:
                writer.write(SECOND)
            elif kind == "two-at-once":
                writer.write(OK + EVIL)
            elif kind == "start-of-one":
                writer.write(OK + EVIL[:20])
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(EVIL[20:])
            elif kind == "late":
                writer.write(OK)
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(EVIL)
            elif kind == "chunked-then-more":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + EVIL
                )
            else:
                writer.write(OK)
            await writer.drain()

    return script


# "before-asked" (the core speaks first on a new connection) is taken as the answer by
# both gateways: inherent to HTTP/1.1 on a fresh connection, not the door.
KINDS = ["two-at-once", "start-of-one", "late", "chunked-then-more"]


@pytest.mark.parametrize("kind", KINDS)
async def test_nothing_but_the_answer_asked_for_is_an_answer(kind: str) -> None:
    async with stacks(_script(kind)) as pair:
        results = []
        for stack, cookie, _ in pair:
            got = []
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            for _ in range(2):
                writer.write(get("/api/x", cookie))
                status, _, body = await read_answer(reader, wait=3)
                got.append((status, body))
                await asyncio.sleep(0.1)
            writer.close()
            r2, w2 = await asyncio.open_connection("127.0.0.1", stack.port)
            w2.write(get("/api/y", cookie))
            status, _, body = await read_answer(r2, wait=3)
            got.append((status, body))
            w2.close()
            results.append(got)
        door, plain = results
        assert all(body != b"EVIL" for _, body in door), (door, plain)
        assert [s for s, _ in door] == [s for s, _ in plain], (door, plain)
