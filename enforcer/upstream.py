"""A lean HTTP/1.1 client for the gateway's hop to the core over ``core.sock``.

Every operator request crosses this hop, so it is on the gateway's hot path.
``aiohttp.ClientSession`` spends about as much per request as the gateway's
whole server side (URL objects, tracing, cookie jar, timers, a request and a
response object); this client keeps only what one trusted upstream on a unix
socket needs. ``bench/gateway.py`` measures the difference.

What is whose:

- **Response framing is aiohttp's.** Each connection is aiohttp's own client
  protocol (``ResponseHandler``) with its llhttp-based response parser, the
  very code ``ClientSession`` runs: ``Content-Length`` / chunked / close
  framing, header limits, 1xx handling and payload errors are unchanged.
  One check is added, so that the answer's framing does not depend on which
  parser aiohttp runs: an answer with more than one ``Content-Length``, or
  with both ``Content-Length`` and ``Transfer-Encoding``, is refused (502,
  connection closed). llhttp refuses both; aiohttp's pure-Python parser
  (``AIOHTTP_NO_EXTENSIONS=1``, or no C extension) takes the first of two
  lengths, and the bytes beyond it would be read as the next answer.
- **The request head** is serialised by aiohttp's header serialiser, which
  refuses control characters (CR, LF, NUL, ...) in the request line, in every
  name and in every value, so no header can smuggle a line. The target must
  be origin-form (``/...``) in printable ASCII without spaces. A name or value
  with bytes that are not UTF-8 (which aiohttp's server hands over as
  surrogate escapes) is sent as exactly those bytes: aiohttp's C serialiser
  would silently drop them, and the upstream would see another value than
  the one the gateway checked. The body is framed here: exactly
  ``Content-Length`` bytes, or chunked when its length is unknown.
- **Keep-alive.** A connection returns to the pool only when its answer was
  final (not a ``101``: the upstream switched protocols), read to the end,
  the request was sent whole, neither side asked to close, and the parser
  holds nothing left over; anything else is closed. A kept connection runs
  no read timer (an answer that ended before its request's body did would
  otherwise leave one, to fire in a later exchange). Idle
  connections older than ``keepalive`` seconds are dropped (the core's server
  closes idle ones after 75 s). A request that fails on a reused connection
  before any answer (the core closed it while idle, or restarted) is retried
  once on a new connection when its method is idempotent and its body can be
  sent again, as ``ClientSession`` does.
- **Timeouts.** ``connect_timeout`` to get a connection (waiting for a free
  slot, then connecting); ``idle_timeout`` for each read of the answer, and
  for each wait on a streamed request body (:class:`ClientBody`): a client
  that stops sending mid-body fails the request with :class:`BodyStalled`,
  and the upstream connection is cut, so the upstream never takes the part
  it got for a whole request.
- **Errors** before the answer starts are :class:`UpstreamError` subclasses
  (502 unreachable or broken, 504 timeout); errors while the body streams are
  aiohttp's payload errors, as with ``ClientSession``.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from aiohttp import ClientOSError, ServerDisconnectedError, hdrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD, EofStream, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from enforcer.errors import HiveError

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

__all__ = [
    "BodyStalled",
    "ClientBody",
    "Upstream",
    "UpstreamAnswer",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "ambiguous_framing",
    "connect_unix",
    "serialize_request_head",
]

# RFC 9110 9.2.2: a request with these methods may be sent again.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose request has a body by definition: an absent one is sent as 0 bytes.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128
"""The answer parser's limits (line, field, header count), for every client of the core."""
# What aiohttp's serialiser refuses in a head (RFC 9110 5.5: CTLs but HTAB).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTENT_LENGTH = hdrs.CONTENT_LENGTH
_TRANSFER_ENCODING = hdrs.TRANSFER_ENCODING
# Most bytes of a streamed body taken from the client's buffer at once.
_BODY_CHUNK = 1 << 16


class UpstreamError(HiveError):
    """The upstream failed before a response could start."""

    status = 502
    code = "bad_gateway"


class UpstreamUnreachable(UpstreamError):
    """Could not connect to the upstream (down, refused, no socket)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer within its timeout."""

    status = 504
    code = "gateway_timeout"


class BodyStalled(HiveError):
    """The client sent nothing of its request body for ``idle_timeout`` seconds."""

    status = 408
    code = "request_timeout"


class ClientBody:
    """A client's request body on its way upstream; it fails when the client stalls.

    Iterating gives the chunks as they arrive. Only a read that must wait for
    the client is timed, by one timer per body, armed at the first wait and
    moved along by later ones (never re-created per chunk): a body that came
    with its head costs no timer at all. When a wait lasts ``idle`` seconds,
    the client's stream is failed with :class:`BodyStalled` (so whoever reads
    it - this client or aiohttp's - stops, and must not finish the upstream
    request), :attr:`stalled` is set and ``on_stall`` runs (the gateway cuts
    the client's connection: nothing half-forwarded is answered).
    """

    __slots__ = ("_content", "_deadline", "_idle", "_on_stall", "_timer", "_waiting", "stalled")

    def __init__(
        self,
        content: StreamReader,
        idle: float,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self._content = content
        self._idle = idle
        self._on_stall = on_stall
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiting = False
        self.stalled = False

    def __aiter__(self) -> ClientBody:
        return self

    async def __anext__(self) -> bytes:
        content = self._content
        chunk = content.read_nowait(
            _BODY_CHUNK
        )  # what has arrived (raises a failed stream's error)
        if chunk:
            return chunk
        if not content.at_eof():
            chunk = await self._wait()
        if not chunk:
            self._stop()
            raise StopAsyncIteration
        return chunk

    async def _wait(self) -> bytes:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._idle
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check)
        self._waiting = True
        try:
            return await self._content.readany()
        except BaseException:  # failed, cut off or abandoned: the body ends here
            self._stop()
            raise
        finally:
            self._waiting = False

    def _check(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # the client sent something; the next wait arms a timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # a later wait moved the deadline
            self._timer = loop.call_at(self._deadline, self._check)
            return
        self.stalled = True
        self._content.set_exception(
            BodyStalled(f"no request body bytes for {self._idle:g} seconds")
        )
        if self._on_stall is not None:
            self._on_stall()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Connection(ResponseHandler):
    """aiohttp's client protocol, plus when it was last put back idle."""

    idle_since: float = 0.0


class _Sent:
    """How sending the request went; the answer may start before it ends."""

    __slots__ = ("task", "whole")

    def __init__(self) -> None:
        self.whole = False
        self.task: asyncio.Future[None] | None = None


class UpstreamAnswer:
    """The upstream's status and headers; ``content`` streams the body.

    Read ``content`` to its end, then :meth:`release` (always, also on
    failure): the connection goes back to the pool only if everything about
    the exchange was complete.
    """

    __slots__ = ("_conn", "_pool", "_sent", "content", "headers", "reason", "status")

    def __init__(
        self,
        pool: Upstream,
        conn: _Connection,
        sent: _Sent,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._sent = sent
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def content_length(self) -> int | None:
        """The body's length when the upstream gave one (the parser checked it).

        None also for an answer without a body by definition (to ``HEAD``;
        ``204``, ``304``), whatever its ``Content-Length`` says: RFC 9110 8.6
        lets it give the length of a body it does not send, and ``content`` is
        then an empty stream that no exact read of that length can satisfy.
        """
        if self.content is EMPTY_PAYLOAD:
            return None
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def release(self) -> None:
        """Give the connection back (kept alive only if the exchange was whole)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        sent = self._sent
        whole = (
            self.status >= 200  # after a 101 the connection speaks another protocol
            and sent.whole
            and self.content.is_eof()
            and self.content.exception() is None
        )
        if sent.task is not None and not sent.task.done():
            sent.task.cancel()
        self._pool._put_back(conn, keep=whole)


class Upstream:
    """A pool of keep-alive HTTP/1.1 connections to one unix socket."""

    def __init__(
        self,
        path: Path,
        *,
        connect_timeout: float,
        idle_timeout: float,
        limit: int = 256,
        keepalive: float = 15.0,
    ) -> None:
        self._path = str(path)
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._keepalive = keepalive
        self._slots = asyncio.Semaphore(limit)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._closed = False

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def idle_timeout(self) -> float:
        """Seconds any one read may wait: of the answer, or of a streamed request body."""
        return self._idle_timeout

    def close(self) -> None:
        """Close idle connections now and every busy one when it is released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | StreamReader | ClientBody | None = None,
        *,
        length: int | None = None,
    ) -> UpstreamAnswer:
        """Send one request; the answer once its status and headers are in.

        ``headers`` are sent as given, except that the body's framing headers
        (``Content-Length``, ``Transfer-Encoding``) are set here. ``body`` is
        the whole body, or a stream of ``length`` bytes (``None``: unknown,
        sent chunked); a bare stream is read as a :class:`ClientBody` with
        ``idle_timeout``.
        """
        if isinstance(body, StreamReader):
            body = ClientBody(body, self._idle_timeout)
        if (
            not target.startswith("/")
            or " " in target
            or not (target.isascii() and target.isprintable())
        ):
            raise UpstreamError("refused to send a request target that is not origin-form")
        headers.popall("Content-Length", None)
        headers.popall("Transfer-Encoding", None)
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif body is not None:
            if length is not None:
                headers["Content-Length"] = str(length)
            else:
                headers["Transfer-Encoding"] = "chunked"
        elif method in _BODY_METHODS:
            headers["Content-Length"] = "0"
        try:
            head = serialize_request_head(f"{method} {target} HTTP/1.1", headers)
        except (ValueError, TypeError) as e:
            raise UpstreamError(f"refused to send a malformed request head: {e}") from e
        retry = method in _IDEMPOTENT and not isinstance(body, ClientBody)
        while True:
            conn, reused = await self._acquire()
            try:
                return await self._exchange(conn, method, head, body, length)
            except (ServerDisconnectedError, ClientOSError, EofStream) as e:
                # Closed under us before any answer: on a reused connection the
                # usual cause is an idle close we had not seen yet.
                self._put_back(conn, keep=False)
                if reused and retry:
                    retry = False
                    continue
                raise UpstreamUnreachable("the upstream closed the connection") from e
            except TimeoutError as e:
                self._put_back(conn, keep=False)
                raise UpstreamTimeout("the upstream did not answer in time") from e
            except HttpProcessingError as e:
                self._put_back(conn, keep=False)
                raise UpstreamError(f"the upstream's answer is malformed: {e.message}") from e
            except BaseException:
                self._put_back(conn, keep=False)
                raise

    async def _acquire(self) -> tuple[_Connection, bool]:
        if self._closed:
            raise UpstreamUnreachable("the upstream pool is closed")
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._slots.acquire()
            except TimeoutError as e:
                raise UpstreamTimeout("no free connection to the upstream in time") from e
        else:
            await self._slots.acquire()
        idle = self._idle
        if idle:
            stale_before = asyncio.get_running_loop().time() - self._keepalive
            while idle:
                conn = idle.pop()  # the most recently used: the likeliest to be alive
                if conn.idle_since < stale_before:
                    conn.close()
                    while idle:  # everything further in is older still
                        idle.pop().close()
                    break
                if conn.is_connected() and not conn.should_close:
                    return conn, True
                conn.close()
        try:
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        return await connect_unix(self._path, lambda: _Connection(loop), self._connect_timeout)

    def _put_back(self, conn: _Connection, *, keep: bool) -> None:
        self._slots.release()
        if keep and not self._closed and conn.is_connected() and not conn.should_close:
            # The body's sender starts the read timer when the body is out; if
            # the answer had already ended, that timer is still running.
            conn._drop_timeout()
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: bytes | ClientBody | None,
        length: int | None,
    ) -> UpstreamAnswer:
        conn.set_response_params(
            skip_payload=method == "HEAD",
            # No length and not chunked: the body runs to the close (RFC 9112 6.3).
            read_until_eof=True,
            auto_decompress=False,
            read_timeout=self._idle_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        transport = conn.transport
        if transport is None:
            raise ServerDisconnectedError()
        sent = _Sent()
        if isinstance(body, ClientBody):
            transport.write(head)
            sent.task = asyncio.ensure_future(_send_stream(conn, body, length, sent))
        else:
            transport.write(head + body if body else head)
            sent.whole = True
            conn.start_timeout()
        try:
            while True:
                message, payload = await conn.read()
                # Interim answers (1xx other than 101) are not the answer.
                if not 100 <= message.code < 200 or message.code == 101:
                    break
            if ambiguous_framing(message.headers):
                raise BadHttpMessage(
                    "more than one framing header (Content-Length, Transfer-Encoding)"
                )
        except BaseException:
            if sent.task is not None:
                sent.task.cancel()
            raise
        return UpstreamAnswer(
            self, conn, sent, message.code, message.reason, message.headers, payload
        )


async def connect_unix(path: str | Path, factory: Callable[[], _P], connect_timeout: float) -> _P:
    """A connection to the unix socket ``path`` speaking ``factory()``'s protocol.

    :class:`UpstreamTimeout` past ``connect_timeout``, :class:`UpstreamUnreachable`
    when it cannot be reached: the errors every client of the core reports.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _, protocol = await loop.create_unix_connection(factory, str(path))
    except TimeoutError as e:
        raise UpstreamTimeout("the upstream did not accept a connection in time") from e
    except OSError as e:
        raise UpstreamUnreachable("the upstream is unreachable") from e
    return protocol


def ambiguous_framing(headers: CIMultiDictProxy[str]) -> bool:
    """Whether the parsed answer's fields frame its body in more than one way.

    The multidict holds every field line the parser read, duplicates
    included (it is built from the same lines as ``raw_headers``). One answer
    costs two C lookups, about 0.1 us; a Python loop over ``raw_headers``
    would cost about 0.3 us.
    """
    if _TRANSFER_ENCODING in headers:
        return _CONTENT_LENGTH in headers
    return len(headers.getall(_CONTENT_LENGTH, ())) > 1


def serialize_request_head(status_line: str, headers: CIMultiDict[str]) -> bytes:
    """A request head; raw bytes a client sent (surrogate escapes) go out as they came.

    :class:`ValueError` for a control character anywhere in it.
    """
    ascii_only = status_line.isascii() and "".join(headers.values()).isascii()
    if ascii_only and "".join(headers.keys()).isascii():
        head: bytes = _serialize_headers(status_line, headers)  # refuses control characters
        return head
    # Rare, so plain Python: aiohttp's C serialiser would drop the surrogates,
    # this encoding sends the bytes they stand for (and refuses any that stand
    # for none); control characters are refused as aiohttp refuses them.
    fields = [f"{name}: {value}" for name, value in headers.items()]
    for text in (status_line, *headers.keys(), *headers.values()):
        if _CONTROL.search(text) is not None:
            raise ValueError("a control character in the request head")
    return "\r\n".join([status_line, *fields, "", ""]).encode("utf-8", "surrogateescape")


async def _send_stream(
    conn: _Connection, body: ClientBody, length: int | None, sent: _Sent
) -> None:
    """Stream the client's body upstream: exactly ``length`` bytes, or chunked."""
    transport = conn.transport
    count = 0
    try:
        async for chunk in body:
            if transport is None or transport.is_closing():
                return
            count += len(chunk)
            if length is not None:
                if count > length:
                    return  # more than announced: never sent, the connection dies
                transport.write(chunk)
            elif chunk:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            if conn.writing_paused:
                await conn._drain_helper()
        if transport is None or transport.is_closing():
            return
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif count != length:
            return  # fewer than announced: the request is not whole
        sent.whole = True
        conn.start_timeout()
    except Exception:
        # The client went away mid-body (or the upstream did): the request is
        # not whole, so the connection must not be reused; cut it now so the
        # upstream stops waiting for the rest.
        conn.abort()
    finally:
        if not sent.whole and conn.transport is not None:
            conn.abort()
