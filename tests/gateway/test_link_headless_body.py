"""A streamed core answer whose head the gateway cannot re-serialise reaches the
client as its *body alone*, with no status line and none of the gateway's
headers - and the connection stays open for the next answer.

``_Exchange.head`` raises ``ValueError`` (a control character in the core's
reason phrase) inside ``CoreLink.data_received``; asyncio closes the link;
``CoreLink.connection_lost`` then feeds EOF to the parser, ``_pump``s the body
that had already arrived to ``_Exchange.data`` -> ``door.write`` and ends the
exchange normally (``door.served()``). The client's HTTP parser reads the
core's body as the answer's head: whatever status and headers the body spells
(here a ``Set-Cookie`` for the session cookie and no CSP) - response
splitting past every header filter. The application answers a 500.
"""

from __future__ import annotations

import asyncio

import pytest

from enforcer.sessions import cookie_name
from tests.gateway.link_harness import always, get, read_answer, stacks

pytestmark = pytest.mark.asyncio

FAKE = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: " + cookie_name(False).encode() + b"=planted; Path=/\r\n"
    b"Content-Type: text/html\r\nContent-Length: %d\r\n\r\n"
)
PAGE = b"<script>alert(document.domain)</script>" + b" " * 20000
BODY = FAKE % len(PAGE) + PAGE
ANSWER = (
    b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    + BODY
)


async def test_a_core_body_never_reaches_the_client_as_an_answer_head() -> None:
    async with stacks(always(ANSWER)) as pair:
        answers = []
        for stack, cookie, _core in pair:
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            writer.write(get("/api/anything", cookie))
            status, headers, _body = await read_answer(reader, wait=3.0)
            answers.append((status, headers.get("set-cookie")))
            writer.close()
        door, plain = answers
        assert plain == (500, None)
        assert door[1] is None, f"the client took the core's body as a head: {door}"
        assert door == plain
