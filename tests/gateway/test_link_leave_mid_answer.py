"""A client that leaves mid-answer: its link is closed, never pooled with the rest
of that answer in it; the next client gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.link_harness import ScriptCore, door_stack, get, hot_of, path_of, read_answer

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("framing", ["chunked", "length", "small"])
async def test_a_client_leaving_mid_answer_takes_its_link_with_it(framing: str) -> None:
    async def script(
        core: ScriptCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            head = await core.head(reader)
            if path_of(head) == b"/api/stream":
                if framing == "chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n"
                    )
                    await writer.drain()
                    await asyncio.sleep(0.4)
                    writer.write(b"4\r\nTAIL\r\n0\r\n\r\n")
                else:
                    n = 40000 if framing == "length" else 9
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\npart1" % n)
                    await writer.drain()
                    await asyncio.sleep(0.4)
                    writer.write(b"TAIL" + b"t" * (n - 9))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            await writer.drain()

    async with door_stack(script) as (stack, cookie, core):
        _r1, w1 = await asyncio.open_connection("127.0.0.1", stack.port)
        w1.write(get("/api/stream", cookie))
        await asyncio.sleep(0.1)
        w1.transport.abort()
        await asyncio.sleep(0.05)
        r2, w2 = await asyncio.open_connection("127.0.0.1", stack.port)
        w2.write(get("/api/next", cookie))
        status, _, body = await read_answer(r2)
        assert (status, body) == (200, b"second")
        w2.close()
        await asyncio.sleep(0.6)
        hot = hot_of(stack)
        assert core.open == hot._live == len(hot._idle)
        # The first link is gone: only the second's remains.
        assert core.open <= 1
