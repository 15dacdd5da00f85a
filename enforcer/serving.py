"""How a gateway worker holds client connections: a cap, a head deadline, an fd budget.

aiohttp's server bounds only how long a kept-alive connection may sit between
requests (``keepalive_timeout``, whose default is an hour); a client could
otherwise hold connections without ever finishing a request. This module is
the worker's server (:class:`GatewayRunner`, used by
:func:`enforcer.gateway.make_runner`, so every site on the runner gets it):

- **Connection cap.** At most ``max_connections`` connections per worker are
  open at once; one accepted past the cap is closed before anything is read
  (the same idea as the core's ``_CappedSockSite`` in :mod:`enforcer.transport`).
  Counted when accepted, uncounted when lost: nothing per request.
- **Request-head deadline.** A new connection must deliver its first complete
  request head within ``header_timeout`` of being accepted (after the TLS
  handshake, which :class:`GatewaySite` bounds by the same time), else it is
  closed; afterwards the next head must be complete within
  ``keepalive_timeout`` of the previous response - idle or half-sent alike,
  which is how aiohttp's keep-alive check already treats a connection still
  waiting for a head. Both ride on aiohttp's one keep-alive timer per
  connection (moved earlier once, at accept): no timer per request.
- **File descriptors.** The cap is lowered, with a warning, to what
  ``RLIMIT_NOFILE`` allows for the clients, one upstream connection each (the
  upstream pools are bounded by :data:`UPSTREAM_LIMIT`) and a reserve; a
  worker first raises its soft limit towards that need (:func:`raise_fd_limit`).

A request body that stalls is the proxy's business
(:class:`enforcer.upstream.ClientBody`).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from enforcer import authz
from enforcer.dispatch import Dispatch
from enforcer.errors import BadRequest, HiveError
from enforcer.frontdoor import FrontDoor, Lane
from enforcer.log import get_logger

__all__ = [
    "FD_RESERVE",
    "UPSTREAM_LIMIT",
    "GatewayRunner",
    "GatewaySite",
    "HiveRunner",
    "connections_for",
    "fds_needed",
    "raise_fd_limit",
]

_log = get_logger("enforcer.serving")

UPSTREAM_LIMIT = 256
"""Connections each of the gateway's four upstream pools may hold.

(The core's HTTP, the core's WebSockets, agent UIs, the front door's links to the core.)
"""

FD_RESERVE = 64
"""Descriptors a worker keeps for itself: the listener, the loop, logs, session and policy files."""

_UPSTREAM_FDS = 4 * UPSTREAM_LIMIT
# asyncio's default TLS handshake timeout: the longest a site on our runner may
# let a connection handshake before the handler ever hears of it.
_HANDSHAKE_LIMIT = 60.0


def fds_needed(connections: int) -> int:
    """Descriptors a worker needs for ``connections`` clients at once.

    Each client holds at most one upstream connection at a time, and the
    upstream pools never hold more than :data:`UPSTREAM_LIMIT` each.
    """
    return connections + min(connections, _UPSTREAM_FDS) + FD_RESERVE


def connections_for(fd_limit: int) -> int:
    """The most clients :func:`fds_needed` fits into ``fd_limit`` descriptors (at least 1)."""
    room = fd_limit - FD_RESERVE
    if room >= 2 * _UPSTREAM_FDS:
        return room - _UPSTREAM_FDS
    return max(1, room // 2)


def _soft_nofile() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def raise_fd_limit(max_connections: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards what ``max_connections`` needs.

    Never above the hard limit, never lowered. Returns the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = fds_needed(max_connections)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            except (OSError, ValueError):
                return soft
            return new
    return _soft_nofile()


class _Refused(asyncio.Protocol):
    """Past the cap: close the connection before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


# aiohttp's own answers (below) get what the gateway's hook gives every other one.
_OWN_ANSWER_HEADERS = {
    "Server": "hive-boundary",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


class _Handler(RequestHandler):
    """aiohttp's request handler whose first head is due ``header_timeout`` after accept.

    It also answers what aiohttp answers itself - a request its parser
    refused (a target or method it cannot read, an HTTP/2 preface, a bad
    header), a handler that failed past the application - the gateway's way:
    a request id, one ``request.refused`` line, a JSON reason; never
    aiohttp's page, which names aiohttp and its version and echoes the
    request line back.
    """

    __slots__ = ("first_deadline",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set when a front door hands its connection over: the deadline it was
        # under, instead of a fresh header_timeout from now.
        self.first_deadline: float | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Our answer to a request aiohttp itself refused or could not serve (logged, JSON)."""
        if request.writer.output_size > 0:
            # aiohttp's own rule: with a response under way, only closing is left.
            raise ConnectionError("the response is under way: the connection is closed")
        server = cast(_Server, self._manager)
        error: HiveError
        if status < 500:
            error = BadRequest("the request could not be read as HTTP/1.1")
            error.status = status
        elif isinstance(exc, ConnectionError):
            # The client went away mid-request (aiohttp's "Connection lost"):
            # nothing failed here, and nothing can be answered.
            _log.info("request.client_gone", channel=server.channel)
            error = HiveError("the client went away")
            error.status = status
        else:
            error = HiveError("this request could not be answered")
            error.status = status
            _log.error("request.failed", channel=server.channel, status=status, error=repr(exc))
        response = authz.refuse_before_routing(request, server.channel, error)
        response.headers.update(_OWN_ANSWER_HEADERS)
        response.headers["X-Hive-Request-Id"] = request[authz.REQUEST_ID]
        response.force_close()
        return response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = cast(_Server, self._manager)
        if server.header_timeout is None:
            return
        # aiohttp just armed its keep-alive timer at keepalive_timeout; a new
        # connection gets header_timeout instead. _process_keepalive closes the
        # connection then if start() is still waiting for a complete head (none
        # or half of one arrived); once a request ran, start() sets the next
        # deadline at keepalive_timeout and the timer follows it.
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        deadline = self.first_deadline or self._loop.time() + server.header_timeout
        self._next_keepalive_close_time = deadline
        self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)


class _Server(web.Server):
    """aiohttp's server with the worker's connection cap; hands out :class:`_Handler`."""

    def __init__(
        self,
        plain: web.Server,
        *,
        request_handler: Dispatch | None = None,
        cap: int | None,
        header_timeout: float | None,
        channel: str,
        lane: Lane | None = None,
    ) -> None:
        # The same request handler, factory and handler arguments aiohttp built
        # for the application (AppRunner._make_server), with our handler class.
        self._handler_kwargs: dict[str, Any] = dict(plain._kwargs)
        super().__init__(
            request_handler if request_handler is not None else plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **self._handler_kwargs,
        )
        self.cap = cap
        self.header_timeout = header_timeout
        self.channel = channel
        self.lane = lane
        # Every connection handed a handler (or a front door) and not yet lost
        # -> when accepted.
        self._open: dict[asyncio.Protocol, float] = {}

    # The loop takes any protocol; aiohttp's annotation names its own handler.
    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self.cap is not None and len(self._open) >= self.cap and not self._purge():
            return _Refused()
        protocol: asyncio.Protocol
        if self.lane is not None:
            protocol = FrontDoor(
                self,
                self.lane,
                loop=self._loop,
                header_timeout=self.header_timeout,
                keepalive_timeout=float(self._handler_kwargs.get("keepalive_timeout", 75.0)),
            )
        else:
            protocol = _Handler(self, loop=self._loop, **self._handler_kwargs)
        self._open[protocol] = self._loop.time()
        return protocol

    def take_over(self, door: FrontDoor, deadline: float | None) -> asyncio.Protocol:
        """aiohttp's handler for ``door``'s connection, counted (since its accept) in its place."""
        handler = _Handler(self, loop=self._loop, **self._handler_kwargs)
        handler.first_deadline = deadline
        self._open[handler] = self._open.pop(door, self._loop.time())
        return handler

    def door_lost(self, door: FrontDoor) -> None:
        """``door``'s connection ended before any handler took it."""
        self._open.pop(door, None)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        """aiohttp's shutdown, after closing the connections front doors still hold."""
        for protocol in list(self._open):
            if isinstance(protocol, FrontDoor):
                protocol.close()
        await super().shutdown(timeout)

    def _purge(self) -> bool:
        """Forget handlers whose TLS handshake failed (the loop never told them); any room now?"""
        stale = self._loop.time() - _HANDSHAKE_LIMIT - 1.0
        for protocol, accepted in list(self._open.items()):
            if accepted < stale and getattr(protocol, "transport", None) is None:
                del self._open[protocol]
        return self.cap is None or len(self._open) < self.cap

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._open.pop(handler, None)
        super().connection_lost(handler, exc)

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet lost (those still handshaking included)."""
        return len(self._open)


class HiveRunner(web.AppRunner):
    """An ``AppRunner`` whose handlers answer aiohttp's own refusals the hive way.

    A request aiohttp's parser refuses (or one failing past the application)
    gets a request id, one ``request.refused`` line on ``channel`` and a JSON
    reason, not aiohttp's page (its name and version, the request line echoed
    back, a traceback in the log). Used by the core's agent sockets; the
    gateway's :class:`GatewayRunner` adds its connection limits.
    """

    __slots__ = ("_cap", "_channel", "_header_timeout", "_lane")

    def __init__(self, app: web.Application, *, channel: str, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._channel = channel
        self._cap: int | None = None
        self._header_timeout: float | None = None
        self._lane: Lane | None = None

    def _unrouted(self, request: web.Request) -> web.Response:
        return authz.refuse_unrouted(request, self._channel)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(
            plain,
            # Without middlewares or sub-applications (the agent surface):
            # plain routes by one lookup.
            request_handler=Dispatch(self._app, unrouted=self._unrouted)
            if Dispatch.serves(self._app)
            else None,
            cap=self._cap,
            header_timeout=self._header_timeout,
            channel=self._channel,
            lane=self._lane,
        )


class GatewayRunner(HiveRunner):
    """A :class:`HiveRunner` whose server caps connections and bounds the first request head.

    The cap is ``max_connections``, lowered (with a warning) to what the
    worker's file limit allows. ``keepalive_timeout`` and the other handler
    arguments are passed on to aiohttp as usual (keyword arguments).
    """

    __slots__ = ("_max_connections",)

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        header_timeout: float,
        lane: Lane | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, channel="gateway", **kwargs)
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        # The front door's hot path (enforcer.frontdoor), for plain-HTTP sites.
        self._lane = lane

    async def _make_server(self) -> web.Server:
        # The file limit as it is at set-up (the worker raises it before).
        fd_limit = _soft_nofile()
        self._cap = min(self._max_connections, connections_for(fd_limit))
        if self._cap < self._max_connections:
            _log.warning(
                "gateway.max_connections.lowered",
                max_connections=self._max_connections,
                now=self._cap,
                fd_limit=fd_limit,
                fds_needed=fds_needed(self._max_connections),
            )
        return await super()._make_server()


class GatewaySite(web.SockSite):
    """``SockSite`` whose TLS handshake must finish within ``handshake_timeout``."""

    __slots__ = ("_handshake_timeout",)

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        self._handshake_timeout = min(handshake_timeout, _HANDSHAKE_LIMIT)

    async def start(self) -> None:
        """Listen (``web.SockSite.start`` with the handshake timeout passed on)."""
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        tls = self._ssl_context
        self._server = await loop.create_server(
            server,
            sock=self._sock,
            ssl=tls,
            backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout if tls is not None else None,
        )
