"""The front door's own keep-alive connection to the core, driven by callbacks.

Each :class:`enforcer.frontdoor.FrontDoor` that serves requests itself keeps
one :class:`CoreLink` to ``core.sock`` and runs one exchange on it at a time:
the request head goes out in one write, the answer is parsed as it arrives
and handed to an :class:`Answer` (head, body pieces, end) with no task, future
or stream object per request - which is where the gateway's per-request cost
was (``bench/gateway.py``).

The rules are :mod:`enforcer.upstream`'s, kept here for this one exchange:

- **Framing is aiohttp's** C response parser (llhttp), as the application's
  client uses it: ``Content-Length``, chunked, or to the close; an answer
  with more than one ``Content-Length`` or with both ``Content-Length`` and
  ``Transfer-Encoding`` is refused; interim ``1xx`` answers are skipped; a
  ``101`` is an error (nothing here asked to switch protocols).
- **Reuse**: the link serves the next exchange only if the answer was
  complete, neither side asked to close, and nothing came after it; any
  byte from the core while no exchange runs closes the link.
- **Timeouts**: the core must start and keep answering within
  ``idle_timeout`` of the request and of each piece (while the client is
  not being waited for); past it the exchange fails with
  :class:`UpstreamTimeout`.
- **Errors** before the answer's head are :class:`UpstreamError`s (the
  caller answers 503 or 504, as the application does); after it, the caller
  cuts its client off. A link the core closed before answering a word
  reports it (``fresh=False``): the caller may send a ``GET`` again once on a
  new link, as the application's client does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from aiohttp.http_parser import HttpResponseParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

from enforcer.log import get_logger
from enforcer.proxy import NO_BODY_STATUS
from enforcer.upstream import (
    MAX_FIELD,
    MAX_HEADERS,
    MAX_LINE,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    ambiguous_framing,
    connect_unix,
)

__all__ = ["Answer", "CoreLink", "RelayFailed", "open_link"]


_log = get_logger("enforcer.corelink")


class RelayFailed(UpstreamError):
    """The answer could not be passed on (its :class:`Answer` raised): the caller's fault."""

    status = 500


class Answer(Protocol):
    """Where one exchange's answer goes."""

    def head(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        length: int | None,
        no_body: bool,
    ) -> None:
        """The answer's status and headers (``length``: its body's, when the core gave one)."""

    def data(self, chunk: bytes) -> None:
        """The next piece of the body."""

    def end(self) -> None:
        """The answer is complete."""

    def failed(self, error: UpstreamError, *, started: bool, spoke: bool) -> None:
        """The exchange failed (``started``: after the head; ``spoke``: any byte came)."""


class CoreLink(asyncio.Protocol):
    """One connection to the core; one exchange at a time."""

    __slots__ = (
        "_answer",
        "_deadline",
        "_idle",
        "_loop",
        "_parser",
        "_paused",
        "_payload",
        "_should_close",
        "_spoke",
        "_started",
        "_timer",
        "idle_since",
        "on_lost",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, *, idle_timeout: float) -> None:
        self._loop = loop
        self._idle = idle_timeout
        self.transport: asyncio.Transport | None = None
        self._parser: HttpResponseParser | None = None
        self._answer: Answer | None = None
        self._payload: StreamReader | None = None
        self._started = False
        self._spoke = False
        self._should_close = False
        self._paused = False
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # when it last went back to its pool
        self.on_lost: Callable[[CoreLink], None] | None = None  # its pool's count

    # --- use -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected, idle, reading, and fit for another exchange."""
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and self._answer is None
            and not self._should_close
            and not self._paused
        )

    def send(self, head: bytes, answer: Answer) -> None:
        """Start an exchange: ``head`` (a whole request without a body) goes out now."""
        if not self.ready or self.transport is None:
            raise UpstreamUnreachable("the link to the core is not ready for an exchange")
        self._answer = answer
        self._payload = None
        self._started = self._spoke = False
        self._parser = HttpResponseParser(
            self,  # type: ignore[arg-type]  # the payload stream's flow-control hooks
            self._loop,
            2**16,
            response_with_body=True,
            read_until_eof=True,  # no length and not chunked: to the close (RFC 9112 6.3)
            auto_decompress=False,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        self._expect_within(self._idle)
        self.transport.write(head)

    def hold(self) -> None:
        """Stop reading the core's answer (its client is not taking it); no timeout meanwhile."""
        self._paused = True
        self._deadline = None
        if self.transport is not None:
            self.transport.pause_reading()

    def go_on(self) -> None:
        """Read on after :meth:`hold`; the core's idle timeout runs again."""
        if not self._paused:
            return
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            if self._answer is not None:
                self._expect_within(self._idle)

    # The body stream's own flow control: never needed, each piece is handed
    # on as soon as the parser has it (_pump), so nothing piles up in it.
    def pause_reading(self) -> None:
        """(the payload stream's hook; nothing to do)"""

    def resume_reading(self, resume_parser: bool = True) -> None:
        """(the payload stream's hook; nothing to do)"""

    def close(self) -> None:
        """Close the connection (an exchange under way is abandoned, not reported)."""
        self._answer = None
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        answer, parser = self._answer, self._parser
        if answer is None or parser is None:
            self._should_close = True  # bytes nobody asked for: never reuse this link
            if self.transport is not None:
                self.transport.close()
            return
        self._spoke = True
        if not self._paused:
            self._expect_within(self._idle)
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except Exception as e:  # the parser's refusal of a malformed answer
            self._fail(UpstreamError(f"the upstream's answer is malformed: {e}"))
            return
        if upgraded:
            self._fail(UpstreamError("the upstream switched protocols unasked"))
            return
        for message, payload in messages:
            if self._payload is not None:
                # Another answer behind the one asked for: never for a client.
                self._should_close = True
                continue
            code = message.code
            if 100 <= code < 200:
                if code == 101:
                    self._fail(UpstreamError("the upstream switched protocols unasked"))
                    return
                continue  # an interim answer is not the answer
            headers = message.headers
            if ambiguous_framing(headers):
                self._fail(UpstreamError("more than one framing header"))
                return
            cl = headers.getall("Content-Length", ())
            self._should_close = self._should_close or message.should_close
            no_body = code in NO_BODY_STATUS
            length = int(cl[0]) if cl and cl[0].isdigit() and not no_body else None
            self._started = True
            self._payload = EMPTY_PAYLOAD if no_body else payload
            if not self._deliver(
                answer, answer.head, code, message.reason, headers, length, no_body
            ):
                return
            if self._answer is not answer:
                return  # the caller gave up on it (its client went away)
        if tail:
            self._should_close = True
        self._pump()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost finishes the exchange

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._should_close = True
        self._cancel_timer()
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)
        answer, parser = self._answer, self._parser
        if answer is None or parser is None:
            return
        if self._payload is not None and self._payload is not EMPTY_PAYLOAD:
            # A body read to the close ends here; any other one is cut short.
            try:
                parser.feed_eof()
            except Exception:
                self._fail(UpstreamError("the upstream's answer was cut short"))
                return
            self._pump()
            if self._answer is None:
                return
        if self._spoke:
            self._fail(UpstreamError("the upstream's answer was cut short"))
        else:
            self._fail(UpstreamUnreachable("the upstream closed the connection"))

    # --- the exchange --------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand over what the body has so far; finish at its end."""
        answer, payload = self._answer, self._payload
        if answer is None or payload is None:
            return
        if payload is not EMPTY_PAYLOAD:
            if payload.exception() is not None:
                self._fail(UpstreamError("the upstream's answer was cut short"))
                return
            chunk = payload.read_nowait(-1)
            if chunk:
                if not self._deliver(answer, answer.data, chunk):
                    return
                if self._answer is not answer:
                    return
            if not payload.is_eof():
                return
        # The timer stays (it finds no exchange, or a later deadline, when it
        # fires): no timer made and cancelled per exchange.
        self._deadline = None
        if self._paused:
            # Held for a slow client to the very end: a link in the pool reads.
            self._paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        # Cleared first: end() hands the link back to its pool, where the
        # next exchange may start on it at once.
        self._answer = None
        self._deliver(answer, answer.end)

    def _deliver(self, answer: Answer, call: Callable[..., None], *args: object) -> bool:
        """``call(*args)``; if it raises, the exchange fails (never a client left waiting)."""
        try:
            call(*args)
        except Exception as e:  # a callback runs outside any task: nothing else would see it
            _log.error("corelink.relay_failed", error=repr(e))
            error = RelayFailed(f"the answer could not be passed on: {e}")
            if self._answer is None or self._answer is answer:
                self._answer = answer
                self._fail(error)
            else:  # the link already serves another exchange: this one alone fails
                answer.failed(error, started=True, spoke=True)
            return False
        return True

    def _fail(self, error: UpstreamError) -> None:
        answer = self._answer
        self._answer = None
        self._should_close = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()
        if answer is not None:
            answer.failed(error, started=self._started, spoke=self._spoke)

    # One timer per link, moved lazily (no timer per piece of an answer).
    def _expect_within(self, seconds: float) -> None:
        when = self._loop.time() + seconds
        self._deadline = when
        if self._timer is None or self._timer.when() > when:
            self._cancel_timer()
            self._timer = self._loop.call_at(when, self._expire)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _expire(self) -> None:
        self._timer = None
        when = self._deadline
        if when is None or self._answer is None:
            return
        if when > self._loop.time():
            self._timer = self._loop.call_at(when, self._expire)
            return
        self._fail(UpstreamTimeout("the upstream did not answer in time"))


async def open_link(path: str, *, connect_timeout: float, idle_timeout: float) -> CoreLink:
    """A new link to the core at ``path``; :class:`UpstreamError` as the application's client."""
    loop = asyncio.get_running_loop()
    return await connect_unix(
        path, lambda: CoreLink(loop, idle_timeout=idle_timeout), connect_timeout
    )
