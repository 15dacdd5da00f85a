"""The front door (enforcer.frontdoor, gateway.HotPath): the same answers, nothing more.

The gateway serves the operator's plain API reads (``GET /api/...``, no body)
at the protocol level and hands every other request, with its connection and
its bytes as they came, to the aiohttp application. What that must never
change: the answer a client gets (the same status, body and headers as the
application gives), what the core receives, that every decision is logged
exactly once, and the connection rules (deadlines, pipelining, keep-alive).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from enforcer.log import configure_logging
from enforcer.sessions import CSRF_HEADER, cookie_name
from tests.gateway.stack import Stack

pytestmark = pytest.mark.asyncio

_VARIABLE = {"date", "x-hive-request-id"}


async def _logged_in(stack: Stack) -> str:
    async with stack.client() as client:
        await stack.login(client)
        for cookie in client.cookie_jar:
            if cookie.key == cookie_name(False):
                return cookie.value
    raise AssertionError("no session cookie")


class Conn:
    """One raw keep-alive connection: send bytes, read whole answers (length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, list[tuple[str, str]], bytes]:
        async with asyncio.timeout(5):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = [
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            ]
            names = dict(headers)
            if "content-length" in names:
                body = await self.reader.readexactly(int(names["content-length"]))
            elif names.get("transfer-encoding") == "chunked":
                parts = []
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                    parts.append(await self.reader.readexactly(size + 2))
                    if size == 0:
                        break
                body = b"".join(p[:-2] for p in parts)
            else:
                body = b""
            return status, headers, body

    async def closed_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                return await self.reader.read() == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def _get(path: str, cookie: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"
        f"Cookie: {cookie_name(False)}={cookie}\r\n{extra}\r\n"
    ).encode()


def _comparable(answer: tuple[int, list[tuple[str, str]], bytes]) -> tuple[object, ...]:
    status, headers, body = answer
    kept = sorted((k, v) for k, v in headers if k not in _VARIABLE)
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            data.pop("request_id", None)
        shown: object = data
    except ValueError:
        shown = body
    return status, kept, shown


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Stack, Stack, str, str]]:
    """Two gateways, one with the front door's lane, one without, each before its own core."""
    async with Stack() as fast, Stack(hot_path=False) as plain:
        yield fast, plain, await _logged_in(fast), await _logged_in(plain)


@pytest.mark.parametrize(
    "path",
    ["/api/agents", "/api/leaky", "/api/x?y=1&z=%41", "/api/a/b/c", "/api/agents/nobody"],
)
async def test_the_front_door_answers_exactly_as_the_application_does(
    pair: tuple[Stack, Stack, str, str], path: str
) -> None:
    fast, plain, fast_cookie, plain_cookie = pair
    answers = []
    for stack, cookie in ((fast, fast_cookie), (plain, plain_cookie)):
        conn = await Conn.open(stack.port)
        try:
            await conn.send(_get(path, cookie))
            answers.append(_comparable(await conn.answer()))
        finally:
            conn.close()
    assert answers[0] == answers[1]
    # And the core was asked the same thing, with the gateway's own headers.
    seen_fast, seen_plain = fast.core.seen[-1], plain.core.seen[-1]
    assert seen_fast.raw_path == seen_plain.raw_path == path
    drop = {"x-hive-request-id", "x-hive-csrf-token", "host"}  # each gateway's own
    assert sorted(
        (k.lower(), v) for k, v in seen_fast.headers.items() if k.lower() not in drop
    ) == sorted((k.lower(), v) for k, v in seen_plain.headers.items() if k.lower() not in drop)
    assert seen_fast.headers["X-Hive-Principal"] == "operator"


async def test_with_the_core_down_the_answer_is_the_applications_503() -> None:
    async with Stack(start_core=False) as fast, Stack(start_core=False, hot_path=False) as plain:
        answers = []
        for stack in (fast, plain):
            cookie = await _logged_in(stack)
            conn = await Conn.open(stack.port)
            try:
                await conn.send(_get("/api/agents", cookie))
                answers.append(_comparable(await conn.answer()))
            finally:
                conn.close()
        assert answers[0] == answers[1]
        assert answers[0][0] == 503


@pytest.fixture
def decision_log() -> Iterator[Path]:
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
        path = Path(f.name)
    stream = path.open("a")
    configure_logging(stream)
    try:
        yield path
    finally:
        configure_logging(sys.stderr)
        stream.close()
        path.unlink()


async def test_every_request_through_the_door_is_decided_and_logged_exactly_once(
    decision_log: Path,
) -> None:
    async with Stack() as stack:
        cookie = await _logged_in(stack)
        conn = await Conn.open(stack.port)
        ids = []
        try:
            for i in range(20):
                await conn.send(_get(f"/api/n{i}", cookie))
                status, headers, _ = await conn.answer()
                assert status == 200
                ids.append(dict(headers)["x-hive-request-id"])
        finally:
            conn.close()
        assert [s.headers["X-Hive-Request-Id"] for s in stack.core.seen[-20:]] == ids
    text = await asyncio.to_thread(decision_log.read_text)
    lines = [json.loads(line) for line in text.splitlines()]
    decided = [line for line in lines if line.get("request_id") in set(ids) and "decision" in line]
    assert sorted(line["request_id"] for line in decided) == sorted(ids)
    assert {(d["principal"], d["action"], d["decision"]) for d in decided} == {
        ("operator", "dashboard.view", "allow")
    }


async def test_what_the_door_does_not_take_reaches_the_application_untouched() -> None:
    async with Stack() as stack:
        cookie = await _logged_in(stack)
        conn = await Conn.open(stack.port)
        try:
            # Served at the door, then a state change on the same connection
            # (handed over with its body), then a read again (aiohttp's now).
            await conn.send(_get("/api/one", cookie))
            assert (await conn.answer())[0] == 200
            body = b'{"a":1}'
            await conn.send(
                b"POST /api/two HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Cookie: {cookie_name(False)}={cookie}\r\n".encode()
                + f"{CSRF_HEADER}: {stack.csrf}\r\nOrigin: {stack.origin}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n"
                + body
            )
            status, _, answer = await conn.answer()
            assert status == 200, answer
            assert json.loads(answer)["body_len"] == 7
            await conn.send(_get("/api/three", cookie))
            assert (await conn.answer())[0] == 200
        finally:
            conn.close()
        assert [s.raw_path for s in stack.core.seen[-3:]] == ["/api/one", "/api/two", "/api/three"]
        assert stack.core.state_changes == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with Stack() as stack:
        cookie = await _logged_in(stack)
        conn = await Conn.open(stack.port)
        try:
            await conn.send(_get("/api/p1", cookie) + _get("/api/p2", cookie) + _get("/health", ""))
            paths = [json.loads((await conn.answer())[2])["path"] for _ in range(2)]
            assert paths == ["/api/p1", "/api/p2"]
            assert (await conn.answer())[0] == 200  # /health, the gateway's own
        finally:
            conn.close()


async def test_a_head_that_trickles_in_is_still_served_and_odd_ones_are_the_applications() -> None:
    async with Stack() as stack:
        cookie = await _logged_in(stack)
        conn = await Conn.open(stack.port)
        try:
            for byte in _get("/api/slow", cookie):
                await conn.send(bytes([byte]))
            status, _, body = await conn.answer()
            assert (status, json.loads(body)["path"]) == (200, "/api/slow")
        finally:
            conn.close()
        # Bare LF, an absolute target, HTTP/1.0, Connection: close, a body on a
        # GET, an encoded slash: each gets what the application says of it.
        odd = [
            b"GET /api/lf HTTP/1.1\nHost: x\n\n",
            b"GET /api/%2e%2e/agents HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /api/old HTTP/1.0\r\nHost: x\r\n\r\n",
            _get("/api/close", cookie, "Connection: close\r\n"),
            _get("/api/body", cookie, "Content-Length: 2\r\n") + b"{}",
            _get("/api/agents", "forged"),
        ]
        for raw in odd:
            for target in (stack,):
                conn = await Conn.open(target.port)
                try:
                    await conn.send(raw)
                    got = _comparable(await conn.answer())
                finally:
                    conn.close()
            async with Stack(hot_path=False) as plain:
                plain_cookie = await _logged_in(plain)
                conn = await Conn.open(plain.port)
                try:
                    await conn.send(raw.replace(cookie.encode(), plain_cookie.encode()))
                    expected = _comparable(await conn.answer())
                finally:
                    conn.close()
            assert got == expected, raw


async def test_the_deadlines_hold_at_the_door() -> None:
    settings = {"header_timeout": 0.5, "keepalive_timeout": 0.8}
    async with Stack(gateway=settings) as stack:
        cookie = await _logged_in(stack)
        # Half a head: closed at header_timeout (not held while it trickles).
        conn = await Conn.open(stack.port)
        try:
            await conn.send(b"GET /api/")
            started = time.monotonic()
            assert await conn.closed_within(3)
            assert time.monotonic() - started < 1.5
        finally:
            conn.close()
        # An answer, then silence: closed at keepalive_timeout.
        conn = await Conn.open(stack.port)
        try:
            await conn.send(_get("/api/k", cookie))
            assert (await conn.answer())[0] == 200
            started = time.monotonic()
            assert await conn.closed_within(3)
            assert 0.6 < time.monotonic() - started < 2.0
        finally:
            conn.close()


async def test_the_connection_cap_counts_connections_at_the_door() -> None:
    async with Stack(gateway={"max_connections": 3}) as stack:
        held = [socket.create_connection(("127.0.0.1", stack.port)) for _ in range(3)]
        try:
            await asyncio.sleep(0.2)
            extra = await Conn.open(stack.port)
            try:
                assert await extra.closed_within(2)
            finally:
                extra.close()
        finally:
            for s in held:
                s.close()
