"""Attacks on the lean core client: no desync, no poisoned connection, no leaked slot.

The upstreams are real servers on real unix sockets: the scripted raw server
of ``test_upstream`` (every byte of the answer chosen, every byte of the
request seen), an *echo* server that answers each request with its own target
after random pauses (so an answer that reaches the wrong request is caught),
and for client-side attacks the whole gateway stack on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from multidict import CIMultiDict

from enforcer.upstream import Upstream, UpstreamError
from tests.gateway.scripted import (
    Scripted,
    front,
    get,
    ok,
    pool_to,
    read_request,
    send_raw,
    served,
    unix_server,
)
from tests.gateway.stack import Stack

# --- an echo upstream: each answer names its own request ---------------------------


class Echo:
    """Answers each request with its target as the body, after random pauses.

    The head and the body go out in separate writes with a pause between, so
    a cancellation can land before the answer, inside its head, or mid-body.
    """

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.connections = 0
        self.open = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.writers.add(writer)
        try:
            while True:
                try:
                    request = await read_request(reader, Scripted(lambda n, r: None))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if request is None:
                    return
                target = request.split(b" ", 2)[1]
                # Some answers small (read whole by the relay), some streamed.
                body = (target + b"|") * self.random.choice((40, 5000))
                await asyncio.sleep(self.random.choice((0, 0, 0.001, 0.003)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                writer.write(body[:10])
                await asyncio.sleep(self.random.choice((0, 0.001, 0.002)))
                writer.write(body[10:])
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def echo(sock_dir: Path, seed: int = 7) -> AsyncIterator[tuple[Echo, Path]]:
    server = Echo(seed)
    path = sock_dir / "echo.sock"
    # A stopped server drops its connections too.
    async with unix_server(path, server.serve, drop=server.writers):
        yield server, path


async def _fetch_own(pool: Upstream, target: str) -> None:
    """One exchange; its answer must be its own (the echo of its target)."""
    answer = await pool.request("GET", target, CIMultiDict({"Host": "core"}))
    try:
        body = await answer.content.read()
    finally:
        answer.release()
    assert _is_echo_of(target, body), f"{target} got {body[:40]!r}"


def _is_echo_of(target: str, body: bytes) -> bool:
    return body.endswith(b"|") and set(body.split(b"|")[:-1]) == {target.encode()}


# --- pool poisoning by cancellation -------------------------------------------------


async def test_a_cancellation_at_any_await_never_leaks_a_slot_or_a_stale_answer(
    sock_dir: Path,
) -> None:
    async with echo(sock_dir) as (_, path):
        pool = Upstream(path, connect_timeout=2.0, idle_timeout=5.0, limit=4)
        try:
            rng = random.Random(11)
            for round_ in range(60):
                tasks = [
                    asyncio.ensure_future(_fetch_own(pool, f"/r{round_}-{i}")) for i in range(6)
                ]
                # Cancel some after a random number of loop turns (landing on
                # every await: the slot wait, the connect, the head, the body).
                for _ in range(rng.randrange(0, 12)):
                    await asyncio.sleep(0)
                for task in tasks:
                    if rng.random() < 0.5:
                        task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                assert pool._slots._value == 4
            # Whatever was cancelled where, the pool answers every request with its own answer.
            await asyncio.gather(*(_fetch_own(pool, f"/after-{i}") for i in range(12)))
            assert pool._slots._value == 4
        finally:
            pool.close()


async def test_timeouts_at_any_await_never_leak_a_slot_or_a_stale_answer(
    sock_dir: Path,
) -> None:
    async with echo(sock_dir, seed=3) as (_, path):
        pool = Upstream(path, connect_timeout=2.0, idle_timeout=5.0, limit=3)
        try:
            for n in range(80):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_fetch_own(pool, f"/t{n}"), (n % 8) * 0.0005)
                assert pool._slots._value == 3
            for n in range(10):
                await _fetch_own(pool, f"/after{n}")
        finally:
            pool.close()


async def _client(server_port: int, target: str, behaviour: str, rng: random.Random) -> None:
    """One client of a front app; only a whole exchange checks its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    body = b"q" * rng.randrange(0, 40_000)
    chunked = rng.random() < 0.4
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    wire = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked and body else body
    if chunked and not body:
        wire = b"0\r\n\r\n"
    head = b"PUT %b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n%b\r\n\r\n" % (
        target.encode(),
        framing,
    )
    try:
        if behaviour == "cut-body":
            writer.write(head + wire[: rng.randrange(0, len(wire) + 1) // 2])
            await writer.drain()
            await asyncio.sleep(rng.choice((0, 0.001, 0.005)))
            return
        writer.write(head + wire)
        await writer.drain()
        if behaviour == "cut-answer":
            await reader.read(rng.randrange(1, 300))
            return
        answer = await asyncio.wait_for(reader.read(), 10)
        status, _, answer_body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), answer[:200]
        assert _is_echo_of(target, answer_body), f"{target} got {answer_body[:40]!r}"
    finally:
        writer.close()


async def test_clients_that_vanish_anywhere_never_get_or_leave_a_wrong_answer(
    sock_dir: Path,
) -> None:
    # Through a real front app (forward_core and the relay): clients cut their
    # body short, cut the answer short, or stay; with few connections, each
    # is reused by many clients. Every client that stays gets its own answer.
    async with echo(sock_dir, seed=5) as (server, path):
        pool = Upstream(path, connect_timeout=5.0, idle_timeout=5.0, limit=3)
        rng = random.Random(17)
        async with front(pool) as fr:
            assert fr.host == "127.0.0.1"
            assert fr.port is not None
            for round_ in range(4):
                behaviours = [rng.choice(("whole", "cut-body", "cut-answer")) for _ in range(24)]
                await asyncio.gather(
                    *(_client(fr.port, f"/v{round_}-{i}", b, rng) for i, b in enumerate(behaviours))
                )
            await _until_true(lambda: pool._slots._value == 3)
            await asyncio.gather(*(_client(fr.port, f"/end{i}", "whole", rng) for i in range(9)))
        await _until_true(lambda: pool._slots._value == 3)
        assert server.open == len(pool._idle)  # no connection is lost track of
        pool.close()
        await _until_true(lambda: server.open == 0)


async def _until_true(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting")


# --- answers that must never reach the next request --------------------------------


async def test_a_101_and_whatever_follows_it_never_reach_the_next_request(sock_dir: Path) -> None:
    def reply(n: int, request: bytes) -> bytes:
        if n == 1:
            return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + ok(b"INJECTED")
        return ok(b"second")

    async with served(sock_dir, reply) as (server, pool):
        answer = await pool.request("GET", "/x", CIMultiDict())
        assert answer.status == 101
        answer.release()
        await asyncio.sleep(0.02)
        assert await get(pool) == (200, b"second")
    assert server.connections == 2


@pytest.mark.parametrize(
    "first",
    [
        # A body on an answer that has none by definition.
        b"HTTP/1.1 204 No Content\r\nContent-Length: 25\r\n\r\n" + ok(b"INJECTED"),
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 25\r\n\r\n" + ok(b"INJECTED"),
        # More than announced.
        ok(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED",
        # An extra answer, the head of which is still incomplete.
        ok(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n",
        # A chunked answer with more after its last chunk.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"
        + ok(b"INJECTED"),
    ],
)
async def test_bytes_beyond_an_answer_never_become_the_next_answer(
    sock_dir: Path, first: bytes
) -> None:
    async with served(sock_dir, lambda n, r: first if n == 1 else ok(b"second")) as (_, pool):
        with contextlib.suppress(UpstreamError):
            await get(pool)
        await asyncio.sleep(0.02)
        for _ in range(3):
            assert await get(pool) == (200, b"second")


# --- what the core receives is what the gateway authorised -------------------------


async def _raw(stack: Stack, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 1.5):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def test_header_bytes_that_are_not_utf8_reach_the_core_exactly_as_sent(
    stack: Stack,
) -> None:
    # The gateway sees these values with their raw bytes (surrogate escapes);
    # the core must see the same values, not a copy with bytes dropped.
    head = b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nX-Note: a\xffb\xc3\r\nAccept: t\xe9xt/css\r\n"
    head += b"Connection: close\r\n\r\n"
    answer = await _raw(stack, head)
    assert answer.startswith(b"HTTP/1.1 200")
    (seen,) = stack.core.seen
    assert seen.headers["X-Note"] == b"a\xffb\xc3".decode("utf-8", "surrogateescape")
    assert seen.headers["Accept"] == b"t\xe9xt/css".decode("utf-8", "surrogateescape")


async def test_a_target_the_serialiser_would_alter_is_refused(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool):
        for target in ("/a\udcff/../b", "/caf\u00e9", "/x\t"):
            with pytest.raises(UpstreamError):
                await pool.request("GET", target, CIMultiDict())
        assert await get(pool) == (200, b"ok")
    assert len(server.requests) == 1


# --- a read timer left running on a kept connection --------------------------------


async def test_an_early_answer_leaves_no_read_timer_on_its_kept_connection(
    sock_dir: Path,
) -> None:
    # The upstream answers as soon as it has a head, then reads the body.
    # Exchange 1's body is sent only after its whole answer was read; the
    # connection is kept (everything was whole). Exchange 2 on it has a body
    # that takes longer than the idle timeout to arrive: waiting for the
    # client is not waiting for the upstream, so it must not time out.
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(requests) == 0:
                    writer.write(ok(b"early"))
                    requests.append(head + await reader.readexactly(length))
                else:
                    requests.append(head + await reader.readexactly(length))
                    writer.write(ok(b"late"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    path = sock_dir / "early.sock"
    srv = await asyncio.start_unix_server(serve, path)
    loop = asyncio.get_running_loop()
    try:
        async with pool_to(path, idle=0.3) as pool:
            body = StreamReader(_Protocol(), 2**16, loop=loop)
            answer = await pool.request("PUT", "/one", CIMultiDict(), body, length=5)
            assert await answer.content.read() == b"early"
            body.feed_data(b"hello")
            body.feed_eof()
            await asyncio.sleep(0.02)  # the body goes out whole
            answer.release()
            assert len(pool._idle) == 1

            slow = StreamReader(_Protocol(), 2**16, loop=loop)

            async def trickle() -> None:
                for piece in (b"a", b"b", b"c", b"d", b"e"):
                    await asyncio.sleep(0.12)
                    slow.feed_data(piece)
                slow.feed_eof()

            feeder = asyncio.ensure_future(trickle())
            answer = await pool.request("PUT", "/two", CIMultiDict(), slow, length=5)
            await feeder
            assert (answer.status, await answer.content.read()) == (200, b"late")
            answer.release()
    finally:
        srv.close()
        await srv.wait_closed()
    assert requests[1].endswith(b"\r\n\r\nabcde")


class _Protocol(BaseProtocol):
    """The flow-control end of a hand-fed request body."""

    def __init__(self) -> None:
        super().__init__(asyncio.get_running_loop())

    @property
    def connected(self) -> bool:
        return True  # as a client's connection is while it sends


# --- smuggling from the client side, through the whole gateway ---------------------

_SMUGGLED = b"GET /api/secret HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "attempt",
    [
        # A body on a GET holding a whole second request.
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
        % (len(_SMUGGLED), _SMUGGLED),
        # The same as a chunked body, with a last-chunk inside the data.
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n0\r\n\r\n%b\r\n0\r\n\r\n" % (len(_SMUGGLED) + 5, _SMUGGLED),
        # Both framings at once (CL.TE / TE.CL).
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
        # Framing variants and obfuscations.
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + _SMUGGLED,
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
        b"0\r\n\r\n" + _SMUGGLED,
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n"
        b"0\r\n\r\n" + _SMUGGLED,
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + _SMUGGLED,
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nabcde" + _SMUGGLED,
        b"GET /static/a.css HTTP/1.1\nHost: x\nContent-Length: 0\n\n" + _SMUGGLED,
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\n\r\n%b" % (len(_SMUGGLED), _SMUGGLED),
        # A chunk extension and a trailer that try to carry a line.
        b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;x="\r\n"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n' + _SMUGGLED,
    ],
)
async def test_no_client_framing_makes_the_core_see_a_request_the_gateway_did_notsend_raw(
    stack: Stack, attempt: bytes
) -> None:
    # Pipelined after each attempt: an honest request on the same connection.
    await _raw(
        stack, attempt + b"GET /static/b.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    await _raw(
        stack, b"GET /static/c.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )  # a fresh client
    paths = [seen.raw_path for seen in stack.core.seen]
    assert all(p.startswith("/static/") for p in paths), paths
    assert paths[-1] == "/static/c.css"
    assert b"secret" not in b"".join(s.body for s in stack.core.seen)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("a\udcffb\udcc3", b"a\xffb\xc3"),  # raw bytes, as aiohttp's server hands them over
        ("caf\u00e9 \U0001f600", "caf\u00e9 \U0001f600".encode()),
        ("plain", b"plain"),
    ],
)
async def test_a_header_value_goes_out_as_the_bytes_it_came_as(
    sock_dir: Path, value: str, wire: bytes
) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool):
        answer = await pool.request("GET", "/x", CIMultiDict({"X-Note": value}))
        answer.release()
    assert b"\r\nX-Note: " + wire + b"\r\n" in server.requests[0]


@pytest.mark.parametrize("value", ["\ud800", "a\udcffb\r\nX-Hive-Principal: operator"])
async def test_a_header_value_that_stands_for_no_bytes_or_smuggles_a_line_is_refused(
    sock_dir: Path, value: str
) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool):
        with pytest.raises(UpstreamError):
            await pool.request("GET", "/x", CIMultiDict({"X-Note": value}))
        assert await get(pool) == (200, b"ok")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        # RFC 9110 8.6: a 304 may carry the length of the body it does not send.
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: "e"\r\n\r\n',
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_an_answer_without_a_body_by_definition_is_relayed_whole(
    sock_dir: Path, answer: bytes
) -> None:
    async with (
        served(sock_dir, lambda n, r: answer if n == 1 else ok()) as (server, pool),
        front(pool) as fr,
    ):
        relayed = await send_raw(fr, b"GET /n HTTP/1.1\r\nHost: a\r\n\r\n")
        assert relayed.split(b"\r\n", 1)[0] == answer.split(b"\r\n", 1)[0]
        assert await get(pool) == (200, b"ok")
    assert server.connections == 1


@pytest.mark.parametrize(
    ("pieces", "length"),
    [
        ((b"hello world",), 5),  # more than announced, in one piece
        ((b"hel",), 5),  # fewer than announced, then the end
    ],
)
async def test_a_streamed_body_that_breaks_its_length_is_never_a_whole_request(
    sock_dir: Path, pieces: tuple[bytes, ...], length: int
) -> None:
    async with served(sock_dir, lambda n, r: ok()) as (server, pool):
        body = StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())
        for piece in pieces:
            body.feed_data(piece)
        body.feed_eof()
        # The connection is cut before the answer: the request never became whole.
        with pytest.raises(UpstreamError):
            await pool.request("PUT", "/f", CIMultiDict(), body, length=length)
        assert await get(pool) == (200, b"ok")
        assert pool._slots._value == 8
    assert [r.split(b" ", 2)[1] for r in server.requests] == [b"/x"]


async def test_a_core_restart_under_load_leaks_no_slot_and_serves_again(sock_dir: Path) -> None:
    async with echo(sock_dir, seed=9) as (_, path):
        pool = Upstream(path, connect_timeout=1.0, idle_timeout=2.0, limit=4)
        await asyncio.gather(*(_fetch_own(pool, f"/warm{i}") for i in range(8)))
    # Down: kept connections are closed by the server, new ones refused.
    results = await asyncio.gather(
        *(_fetch_own(pool, f"/down{i}") for i in range(8)), return_exceptions=True
    )
    assert all(isinstance(r, UpstreamError) for r in results), results
    assert pool._slots._value == 4
    path.unlink(missing_ok=True)
    async with echo(sock_dir, seed=10) as (server, _):
        await asyncio.gather(*(_fetch_own(pool, f"/up{i}") for i in range(8)))
        assert pool._slots._value == 4
        pool.close()
        await _until_true(lambda: server.open == 0)
