"""The gateway's front door: one narrow hot path before aiohttp, everything else to aiohttp.

A client connection first meets a :class:`FrontDoor` (an ``asyncio.Protocol``).
It serves one shape of request itself - the operator's plain reads of the
API, ``GET /api/...`` with no body, answered by the core - and hands every
other request, untouched and with its connection, to aiohttp's server:

- **What it takes.** Only a buffer that starts with ``GET /api/`` and holds
  exactly one complete request head (``CRLF CRLF`` at its very end: nothing
  pipelined behind it, no body bytes) is offered to the :class:`Lane`, which
  parses it with aiohttp's own request parser, checks it as the gateway does
  and either serves it or declines. A buffer that cannot become such a head
  (another method or target, a bare-LF head, one longer than
  :data:`HEAD_LIMIT`) is handed over at once.
- **Handing over** (:meth:`FrontDoor.hand_off`): aiohttp's request handler
  takes the transport and is fed every byte this door holds, as they came,
  so aiohttp sees the connection as if it had had it from the start - with
  the deadline the door was under, not a fresh one. The connection stays
  aiohttp's from then on.
- **One request at a time.** While the lane serves, bytes that arrive are
  kept (reading pauses past :data:`PENDING_LIMIT`) and looked at only after
  the answer is complete, in order.
- **Deadlines and the cap** are the gateway's (:mod:`enforcer.serving`): a
  first head within ``header_timeout`` of accept, a next one within
  ``keepalive_timeout`` of the last answer, else the connection is closed; a
  door counts against ``max_connections`` like aiohttp's handler, which
  replaces it in the count when it takes over.

Why it exists: aiohttp's per-request server and response machinery cost the
gateway about twice what nginx and an ``auth_request`` authoriser spend per
request (``bench/gateway.py``); this path does the same checks in a fraction
of that. The checks themselves are the gateway's own functions
(:mod:`enforcer.gateway`), not copies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from enforcer.log import get_logger

__all__ = [
    "HEAD_LIMIT",
    "PENDING_LIMIT",
    "PREFIX",
    "TAKEN",
    "Closable",
    "FrontDoor",
    "Lane",
    "Owner",
    "Taken",
]

_log = get_logger("enforcer.frontdoor")

PREFIX = b"GET /api/"
"""The only request line start the door looks at further."""

HEAD_LIMIT = 8190
"""A longer head is aiohttp's to judge (its own line and field limits apply)."""

PENDING_LIMIT = 64 * 1024
"""Bytes kept while an answer is under way before reading pauses."""


class Taken:
    """The lane took a request and answers it through callbacks (no task)."""

    __slots__ = ()


TAKEN = Taken()
"""What :meth:`Lane.admit` returns for a request it answers without a task."""


class Closable(Protocol):
    """The lane's per-connection object (its link to the core)."""

    def close(self) -> None:
        """Let go of it (the connection ended or was handed over)."""


class Lane(Protocol):
    """What serves the requests a door takes."""

    @property
    def idle_timeout(self) -> float:
        """How long a client may take none of an answer before it is cut off."""

    def admit(self, door: FrontDoor, head: bytes) -> Coroutine[Any, Any, None] | Taken | None:
        """Take the request whose whole head is ``head``, or decline it (None).

        Taken: a coroutine (run as a task) or :data:`TAKEN` (answered through
        callbacks); either way the lane calls :meth:`FrontDoor.served` once
        the answer is whole, or :meth:`FrontDoor.abort`. Declining must leave
        no trace: aiohttp will see the same bytes.
        """


class Owner(Protocol):
    """The server the door belongs to (:class:`enforcer.serving` ``_Server``)."""

    def take_over(self, door: FrontDoor, deadline: float | None) -> asyncio.Protocol:
        """aiohttp's handler for the door's connection, counted in the door's place."""

    def door_lost(self, door: FrontDoor) -> None:
        """The door's connection ended while still the door's."""


class FrontDoor(asyncio.Protocol):
    """One client connection until its first request the lane does not take."""

    __slots__ = (
        "_buffer",
        "_busy",
        "_close_at",
        "_deadline",
        "_keepalive",
        "_lane",
        "_owner",
        "_reading_paused",
        "_slow",
        "_task",
        "_timer",
        "_writable",
        "_writing_paused",
        "link",
        "loop",
        "transport",
    )

    def __init__(
        self,
        owner: Owner,
        lane: Lane,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float | None,
        keepalive_timeout: float,
    ) -> None:
        self._owner = owner
        self._lane = lane
        # Public: the lane uses it too (asyncio.get_running_loop() costs a getpid(2) a call).
        self.loop = loop
        self._keepalive = keepalive_timeout
        self._buffer = bytearray()
        self._busy = False  # an answer is under way (a task's or callbacks')
        self._task: asyncio.Task[None] | None = None
        self._writable: Callable[[], None] | None = None
        # The lane's own per-connection object (its link to the core), closed
        # with the connection or at the hand-over.
        self.link: Closable | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._close_at: float | None = None
        self._deadline: float | None = header_timeout
        self._reading_paused = False
        self._writing_paused = False
        self._slow: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._deadline is not None:
            self._arm(self.loop.time() + self._deadline)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._busy:
            # An answer is under way: later bytes wait their turn (bounded).
            if len(self._buffer) > PENDING_LIMIT and not self._reading_paused:
                self._reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._next()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self._task is not None:
            self._task.cancel()
        slow, self._slow = self._slow, None
        if slow is not None:
            slow.cancel()
        self._close_link()
        self._writable = None
        self.transport = None
        self._owner.door_lost(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        writable, self._writable = self._writable, None
        if writable is not None:
            writable()

    # --- for the lane -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client (nothing if it is gone)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def writing_paused(self) -> bool:
        """Whether the client's socket is full (its transport asked us to pause)."""
        return self._writing_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the client's socket takes data again."""
        self._writable = callback

    def abort(self) -> None:
        """Cut the client off at once (an answer that cannot be finished must not look whole)."""
        if self.transport is not None:
            self.transport.abort()

    def _close_link(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            link.close()

    # --- the door's own work ------------------------------------------------------------

    def _next(self) -> None:
        """Serve the buffered request if the lane takes it, else hand the connection over."""
        buffer = self._buffer
        if not buffer:
            return
        if not buffer.startswith(PREFIX[: len(buffer)]):
            self.hand_off()
            return
        if buffer.count(b"\n") != buffer.count(b"\r\n"):
            # A bare LF: aiohttp's strict parser refuses it at once, so does it.
            self.hand_off()
            return
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            # Still coming - unless it cannot become a head the lane would take.
            if len(buffer) > HEAD_LIMIT:
                self.hand_off()
            return
        if end + 4 != len(buffer):
            self.hand_off()  # a body or a pipelined request behind it: aiohttp's
            return
        serving = self._lane.admit(self, bytes(buffer))
        if serving is None:
            self.hand_off()
            return
        buffer.clear()
        self._disarm()
        self._busy = True
        if serving is not TAKEN:
            assert not isinstance(serving, Taken)
            self._task = task = self.loop.create_task(serving)
            task.add_done_callback(self._served)

    def served(self) -> None:
        """The lane's last word on an answer it completed: the next request's turn.

        Called by the lane when the answer is whole (from its callbacks or from
        inside its task: no extra turn of the event loop per request).
        """
        self._task = None
        if self.transport is None or self.transport.is_closing():
            self._busy = False
            return
        if self._writing_paused:
            # The client has not taken the answer yet: no next request (whose
            # answer would pile up here) until it does, within idle_timeout.
            self.transport.pause_reading()
            self._reading_paused = True
            self._writable = self._taken
            self._slow = self.loop.call_later(self._lane.idle_timeout, self.abort)
            return
        self._busy = False
        self._arm(self.loop.time() + self._keepalive)
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._next()

    def _taken(self) -> None:
        """The client took what was waiting: on to its next request."""
        slow, self._slow = self._slow, None
        if slow is not None:
            slow.cancel()
        self.served()

    def _served(self, task: asyncio.Task[None]) -> None:
        failed = task.cancelled() or task.exception() is not None
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("frontdoor.failed", error=repr(error))
        if task is self._task:
            self._task = None
            if failed:
                # An answer that may be unfinished must not look whole.
                self.abort()

    def hand_off(self) -> None:
        """aiohttp's handler takes the connection, with every byte held here, as they came."""
        transport = self.transport
        if transport is None:
            return
        deadline = self._deadline_left()
        self._close_link()
        self._disarm()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        handler = self._owner.take_over(self, deadline)
        self.transport = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:
            # The transport told this door, and will not tell the handler again.
            handler.pause_writing()
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _deadline_left(self) -> float | None:
        return self._close_at

    def _arm(self, when: float) -> None:
        # One timer per connection, moved lazily (as aiohttp's keep-alive is):
        # a deadline later than the armed timer is only noted, and the timer,
        # when it fires early, re-arms itself for it. No timer per request.
        self._close_at = when
        if self._timer is None or self._timer.when() > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._expire)

    def _disarm(self) -> None:
        self._close_at = None

    def _expire(self) -> None:
        self._timer = None
        when = self._close_at
        if when is None or self.transport is None:
            return  # serving, or gone: no deadline runs now
        if when > self.loop.time():
            self._timer = self.loop.call_at(when, self._expire)
            return
        # No complete head by its deadline (slowloris, or an idle keep-alive).
        if not self._busy:
            self._shut()

    def close(self) -> None:
        """Close the connection (server shutdown): an answer under way is cut off."""
        self._close_link()  # now, not when a client that reads nothing takes the rest
        with contextlib.suppress(RuntimeError):
            self._shut()

    def _shut(self) -> None:
        # abort, not close, with bytes unsent: close would wait for a client
        # that takes nothing, holding them and the connection's place.
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
