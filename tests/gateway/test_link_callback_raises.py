"""A core answer the gateway cannot re-serialise (a control character in its reason
phrase or in a kept header) makes ``_Exchange.end`` / ``_Exchange.head`` raise
``ValueError`` (aiohttp's ``_serialize_headers``) inside ``CoreLink.data_received``.

The exception leaves the callback for asyncio's transport ("Fatal error:
protocol.data_received() call failed"). For a small (gathered) answer
``CoreLink._pump`` had already cleared ``_answer`` before ``end()``, so
``connection_lost`` finds nothing to fail: the door stays ``_busy`` with no
deadline armed and the client waits forever (its connection counted against
max_connections). The application answers at once.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.link_harness import always, get, stacks

pytestmark = pytest.mark.asyncio

ANSWERS = {
    "reason": b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
    "header": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Note: a\x01b\r\n"
    b"Content-Length: 2\r\n\r\nok",
    # Streamed (past SMALL_BODY): head() raises while the exchange is still set.
    "streamed": b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/plain\r\nContent-Length: 20000\r\n\r\n"
    + b"s" * 20000,
    "chunked": b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("where", list(ANSWERS))
async def test_an_unserialisable_small_answer_is_answered_not_left_hanging(where: str) -> None:
    async with stacks(always(ANSWERS[where])) as pair:
        results = []
        for stack, cookie, _core in pair:
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            writer.write(get("/api/x", cookie))
            # idle_timeout and connect_timeout are 1 s in the Stack: 5 s is plenty.
            try:
                async with asyncio.timeout(5):
                    data = await reader.read(65536)
                outcome = data.split(b"\r\n", 1)[0] if data else b"closed"
            except TimeoutError:
                outcome = b"still waiting after 5 s"
            except ConnectionError:
                outcome = b"reset"
            results.append((outcome, loop.time() - t0 < 4))
            writer.close()
        door, plain = results
        assert plain[1], plain
        # At once, and nothing of the core's: the application's own outcome
        # (a 500, or for a small answer a closed connection), or the door's
        # JSON 500 - the gateway's fixed words, never a head it could not check.
        assert door[1], door
        assert door[0] in {plain[0], b"HTTP/1.1 500 Internal Server Error"}, (door, plain)
