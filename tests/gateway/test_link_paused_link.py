"""A streamed answer whose last piece fills the client's socket ends with its
link *held* (reading paused) and its exchange's slow-client timer still armed.

- ``_Exchange.end`` -> ``HotPath.release`` -> ``_put_back``: ``CoreLink.ready``
  does not look at ``_paused``, so the link goes back to the pool with
  ``transport.pause_reading()`` in force; the next request on it (anyone's)
  is written to the core, whose answer is never read: 504 after idle_timeout.
- ``_Exchange._slow`` (armed in ``data``) is cancelled only by
  ``_Exchange._writable``, but ``FrontDoor.served`` replaces the door's
  ``when_writable`` callback with its own ``_taken``: the timer fires
  idle_timeout later and aborts a client that read everything.

The application (Stack(hot_path=False)) answers 200 to both.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.link_harness import ScriptCore, get, path_of, read_answer, small_socket, stacks
from tests.gateway.stack import Stack

pytestmark = pytest.mark.asyncio

HUGE = 5_000_000  # fills the kernel's buffers towards a client with a small window
BIG = 200_000  # one read from the core, past the door's 64 KiB high-water mark


async def _script(
    core: ScriptCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        head = await core.head(reader)
        path = path_of(head)
        n = HUGE if path == b"/api/huge" else BIG if path == b"/api/big" else 2
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % n
            + b"b" * n
        )
        await writer.drain()


async def _read_slowly(reader: asyncio.StreamReader) -> int:
    """One answer read at about 5 MB/s (16 KiB every 3 ms): a slowish, steady client."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    got = 0
    while got < length:
        async with asyncio.timeout(3):
            chunk = await reader.read(min(16384, length - got))
        if not chunk:
            break
        got += len(chunk)
        await asyncio.sleep(0.003)
    return got


async def _huge_then_big(
    stack: Stack, cookie: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    sock = small_socket()
    await loop.sock_connect(sock, ("127.0.0.1", stack.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(get("/api/huge", cookie))
    await asyncio.sleep(0.05)
    writer.write(get("/api/big", cookie))  # kept by the door until the first answer is out
    await asyncio.sleep(0.5)  # not reading yet: the buffers fill
    assert await _read_slowly(reader) == HUGE
    assert await _read_slowly(reader) == BIG
    return reader, writer


async def test_the_next_read_after_a_big_answer_is_answered_not_timed_out() -> None:
    async with stacks(_script) as pair:
        statuses = []
        for stack, cookie, _core in pair:
            _, first = await _huge_then_big(stack, cookie)
            try:
                # Another client, a moment later: the pool's link serves it.
                reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                writer.write(get("/api/small", cookie))
                status, _, body = await read_answer(reader, wait=3.0)
                statuses.append((status, body, round(loop.time() - t0)))
                writer.close()
            finally:
                first.close()
        door, plain = statuses
        assert plain == (200, b"bb", 0)
        assert door == plain, f"door answered {door}, the application {plain}"


async def test_a_client_that_took_its_big_answer_is_not_cut_off_afterwards() -> None:
    async with stacks(_script) as pair:
        statuses = []
        for stack, cookie, _core in pair:
            reader, writer = await _huge_then_big(stack, cookie)
            try:
                # The client took everything; it reads on on its connection
                # (each request on a fresh link: open another client first
                # so the pool's link is busy elsewhere).
                got = []
                for pause in (0.2, 1.2):
                    await asyncio.sleep(pause)
                    other_r, other_w = await asyncio.open_connection("127.0.0.1", stack.port)
                    other_w.write(get("/api/small", cookie))
                    writer.write(get("/api/small", cookie))
                    status, _, _ = await read_answer(reader, wait=3.0)
                    got.append(status)
                    await read_answer(other_r, wait=3.0)
                    other_w.close()
                statuses.append(got)
            finally:
                writer.close()
        door, plain = statuses
        assert plain == [200, 200]
        assert door == plain, f"door answered {door}, the application {plain}"
