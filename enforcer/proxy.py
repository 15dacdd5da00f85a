"""Streaming reverse-proxy helpers: to a unix socket (the core) or TCP (agent UIs).

- Bodies stream both ways in chunks (``iter_any``), never read whole; the
  upstream gets ``Content-Length`` when the client sent one, else chunked.
- WebSocket upgrades are bridged message by message; server-sent events are
  ordinary streamed responses (each chunk is written as soon as it arrives).
- Timeouts: ``connect_timeout`` to reach the upstream, ``idle_timeout`` for
  each read from it (so a long SSE stream lives while it keeps talking), and
  for each wait on the client's request body while it streams upstream: a
  client silent that long mid-body gets its connection closed and the
  upstream request is cut off unfinished (:class:`BodyStalled`), never
  completed or answered.
- Hop-by-hop headers (RFC 9110 7.6.1: ``Connection`` and every header it
  names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``, ``Proxy-Authenticate``,
  ``Proxy-Authorization``) are dropped in both directions; so are
  client-sent identity and forwarding headers (:func:`is_spoofable`) and every
  ``Access-Control-*`` response header (there is no CORS anywhere).
- Upstream sessions never keep cookies and never decompress (bytes pass as sent).

Failures before the response starts raise :class:`UpstreamUnreachable` or
:class:`UpstreamTimeout` for the caller to turn into its own page; after the
response has started, the client connection is aborted (a truncated body must
not look complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from enforcer.errors import BadRequest
from enforcer.upstream import (
    BodyStalled,
    ClientBody,
    Upstream,
    UpstreamAnswer,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

__all__ = [
    "HOP_BY_HOP",
    "NO_BODY_STATUS",
    "SMALL_BODY",
    "BodyStalled",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "filter_request_headers",
    "filter_response_headers",
    "forward_core",
    "forward_http",
    "forward_websocket",
    "is_spoofable",
    "is_websocket_upgrade",
    "tcp_session",
    "unix_session",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
"""RFC 9110 7.6.1 (plus the common non-standard ``Proxy-Connection``)."""

# Handled by the proxy itself, never forwarded as received.
_REQUEST_OWN = frozenset({"host", "expect"})
_WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
    }
)
_SPOOFABLE_EXACT = frozenset({"forwarded", "x-real-ip"})
_SPOOFABLE_PREFIXES = ("x-hive-", "x-forwarded-")
_REQUEST_REFUSED = HOP_BY_HOP | _REQUEST_OWN
_RESPONSE_REFUSED_PREFIXES = ("access-control-", "x-hive-")
NO_BODY_STATUS = frozenset({204, 304})
"""Statuses whose answer has no body, whatever its headers say (RFC 9110 6.4.1)."""
SMALL_BODY = 16 * 1024
"""Bodies up to this size with a known length are sent with their headers in one write."""


def is_spoofable(name: str) -> bool:
    """Identity/forwarding headers that only the gateway itself may set."""
    lower = name.lower()
    return lower in _SPOOFABLE_EXACT or lower.startswith(_SPOOFABLE_PREFIXES)


def _connection_named(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    named: set[str] = set()
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


@functools.lru_cache(maxsize=64)
def _refused(base: frozenset[str], drop: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    # Callers pass the same few constant ``drop`` collections on every request:
    # the union is built once per distinct one, not per request.
    return base | {d.lower() for d in drop}


def _drop_key(drop: Iterable[str]) -> tuple[str, ...] | frozenset[str]:
    return drop if isinstance(drop, tuple | frozenset) else tuple(drop)


def filter_request_headers(
    headers: CIMultiDictProxy[str], *, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Client headers fit to forward: no hop-by-hop, spoofable, ``Host`` or ``drop`` names."""
    refused = _refused(_REQUEST_REFUSED, _drop_key(drop))
    if "Connection" in headers:
        refused = refused | _connection_named(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in refused or lower in _SPOOFABLE_EXACT or lower.startswith(_SPOOFABLE_PREFIXES):
            continue
        out.add(name, value)
    return out


def filter_response_headers(
    headers: CIMultiDictProxy[str], *, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Upstream headers fit to return: no hop-by-hop, ``Access-Control-*``, ``X-Hive-*``."""
    refused = _refused(HOP_BY_HOP, _drop_key(drop))
    if "Connection" in headers:
        refused = refused | _connection_named(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in refused or lower.startswith(_RESPONSE_REFUSED_PREFIXES):
            continue
        out.add(name, value)
    return out


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """A WebSocket handshake (``Connection: upgrade`` + ``Upgrade: websocket``)."""
    return request.headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in (
        _connection_named(request.headers)
    )


def _timeout(connect_timeout: float, idle_timeout: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=idle_timeout
    )


def _session(
    connector: aiohttp.BaseConnector, connect_timeout: float, idle_timeout: float
) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        timeout=_timeout(connect_timeout, idle_timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )


def unix_session(
    path: Path, *, connect_timeout: float, idle_timeout: float, limit: int = 256
) -> aiohttp.ClientSession:
    """A keep-alive client session whose every connection goes to the unix socket ``path``."""
    return _session(
        aiohttp.UnixConnector(path=str(path), limit=limit), connect_timeout, idle_timeout
    )


def tcp_session(
    *, connect_timeout: float, idle_timeout: float, limit: int = 256
) -> aiohttp.ClientSession:
    """A keep-alive client session for TCP upstreams (agent UIs)."""
    return _session(
        aiohttp.TCPConnector(limit=limit, use_dns_cache=False), connect_timeout, idle_timeout
    )


def _abort(request: web.BaseRequest, *, discard: bool = False) -> None:
    """Close the client's connection; ``discard``: at once, dropping what is still buffered."""
    transport = request.transport
    if transport is None:
        return
    if discard:
        transport.abort()
    else:
        transport.close()


def _client_body(request: web.Request, idle_timeout: float) -> ClientBody:
    """The client's body to stream upstream; a stall closes the client's connection."""
    return ClientBody(request.content, idle_timeout, functools.partial(_abort, request))


def _stalled(body: object, error: Exception) -> None:
    """Raise :class:`BodyStalled` when ``error`` came from the client's stalled body."""
    if isinstance(body, ClientBody) and body.stalled:
        raise BodyStalled("the request body stopped arriving") from error


async def forward_http(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    *,
    body: bytes | None = None,
    response_drop: Iterable[str] = (),
    check_response: Callable[[int, CIMultiDictProxy[str]], None] | None = None,
) -> web.StreamResponse:
    """Forward ``request`` to ``url`` (encoded, sent as is) and stream the answer back.

    ``headers`` are sent as given (the caller filtered them and set its own);
    ``body`` replaces the client's body when the caller had to read it (a small
    form), otherwise the client's body streams through. ``check_response``
    sees the upstream's status and headers before anything is sent and may
    refuse the answer by raising (e.g. :class:`UpstreamError`). A streamed
    body that stalls for the session's read timeout raises
    :class:`BodyStalled` (the client's connection is closed already).
    """
    data: object
    if body is not None:
        data = body
        headers["Content-Length"] = str(len(body))
    elif request.body_exists:
        timeout = session.timeout.sock_read
        data = _client_body(request, timeout) if timeout else request.content
    else:
        data = None
    try:
        upstream = await session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        )
    except TimeoutError as e:
        _stalled(data, e)
        raise UpstreamTimeout("the upstream did not answer in time") from e
    except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as e:
        _stalled(data, e)
        raise UpstreamUnreachable("the upstream is unreachable") from e
    except aiohttp.ClientError as e:
        _stalled(data, e)
        raise UpstreamError("the upstream failed") from e
    return await _relay(
        request,
        upstream,
        response_drop=response_drop,
        check_response=check_response,
        idle_timeout=session.timeout.sock_read,
    )


async def forward_core(
    request: web.Request,
    upstream: Upstream,
    target: str,
    headers: CIMultiDict[str],
    *,
    body: bytes | None = None,
) -> web.StreamResponse:
    """:func:`forward_http` over the lean core client (:class:`enforcer.upstream.Upstream`).

    ``target`` is the origin-form request target (path and query, encoded).
    """
    answer: UpstreamAnswer
    if body is not None:
        answer = await upstream.request(request.method, target, headers, body)
    elif request.body_exists:
        streamed = _client_body(request, upstream.idle_timeout)
        try:
            answer = await upstream.request(
                request.method, target, headers, streamed, length=request.content_length
            )
        except UpstreamError as e:
            _stalled(streamed, e)
            raise
    else:
        answer = await upstream.request(request.method, target, headers)
    return await _relay(request, answer, idle_timeout=upstream.idle_timeout)


async def _relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse | UpstreamAnswer,
    *,
    response_drop: Iterable[str] = (),
    check_response: Callable[[int, CIMultiDictProxy[str]], None] | None = None,
    idle_timeout: float | None = None,
) -> web.StreamResponse:
    """Send the upstream's answer to the client (small bodies whole, others streamed).

    A streamed answer the client takes no part of for ``idle_timeout`` cuts
    the client off and frees the upstream connection.
    """
    try:
        if upstream.status < 200:
            # A 1xx final answer (101 to a request that asked for no upgrade):
            # passed on, it would leave the client's connection in an
            # undefined state. WebSockets go through forward_websocket.
            raise UpstreamError(f"the upstream answered {upstream.status} to a plain request")
        if check_response is not None:
            check_response(upstream.status, upstream.headers)
        headers_out = filter_response_headers(upstream.headers, drop=response_drop)
        length = upstream.content_length
        if (
            length is not None
            and length <= SMALL_BODY
            and request.method != "HEAD"
            # No body by definition, whatever Content-Length says (RFC 9110 8.6).
            and upstream.status not in NO_BODY_STATUS
        ):
            # A small body of known length is read and sent with its headers
            # in one write: bounded by SMALL_BODY, so nothing large is held.
            try:
                data = await upstream.content.readexactly(length)
            except TimeoutError as e:
                raise UpstreamTimeout("the upstream did not answer in time") from e
            except (asyncio.IncompleteReadError, aiohttp.ClientError) as e:
                raise UpstreamError("the upstream's answer was cut short") from e
            headers_out.popall("Content-Length", None)
            small = web.Response(
                body=data, status=upstream.status, reason=upstream.reason, headers=headers_out
            )
            # web.Response would add a default Content-Type; keep the upstream's (or none).
            if "Content-Type" not in upstream.headers:
                small.headers.popall("Content-Type", None)
            return small
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers_out)
        await response.prepare(request)
        try:
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_any():
                    await _write_within(response, chunk, idle_timeout)
            await response.write_eof()
        except _ClientNotReading:
            # The client stopped taking the answer: it held the upstream
            # connection (and what was buffered) for as long as it liked. abort,
            # not close: close would keep the buffer until it is sent.
            _abort(request, discard=True)
        except (TimeoutError, aiohttp.ClientError):
            # Headers are gone already: cut the client off rather than let a
            # truncated body pass for a whole one.
            _abort(request)
        return response
    finally:
        upstream.release()


class _ClientNotReading(Exception):
    """The client took no part of a streamed answer for ``idle_timeout``."""


async def _write_within(response: web.StreamResponse, chunk: bytes, idle: float | None) -> None:
    """``response.write(chunk)``, which waits while the client's socket is full: bounded."""
    if idle is None:
        await response.write(chunk)
        return
    try:
        async with asyncio.timeout(idle):
            await response.write(chunk)
    except TimeoutError as e:
        raise _ClientNotReading from e


def _protocols(request: web.BaseRequest) -> tuple[str, ...]:
    value = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(p.strip() for p in value.split(",") if p.strip())


async def _pump(
    source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
) -> None:
    """Copy text and binary messages from ``source`` to ``sink`` until anything else."""
    async for msg in source:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        else:
            break


async def forward_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    *,
    max_msg_size: int = 4 << 20,
) -> web.WebSocketResponse:
    """Bridge a WebSocket: connect upstream first (errors become 502/504), then accept.

    A client handshake that could not be accepted (no or a malformed
    ``Sec-WebSocket-Key``, another version) is a :class:`BadRequest` before
    anything is opened upstream.
    """
    probe = web.WebSocketResponse()
    if not probe.can_prepare(request).ok:
        raise BadRequest("not a valid WebSocket handshake (Sec-WebSocket-Key / -Version)")
    for name in list(headers):
        if name.lower() in _WEBSOCKET_HANDSHAKE or name.lower() == "sec-websocket-protocol":
            headers.popall(name, None)
    try:
        upstream = await session.ws_connect(
            url,
            headers=headers,
            protocols=_protocols(request),
            autoping=True,
            max_msg_size=max_msg_size,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )
    except TimeoutError as e:
        raise UpstreamTimeout("the upstream did not answer in time") from e
    except aiohttp.WSServerHandshakeError as e:
        raise UpstreamError(f"the upstream refused the WebSocket ({e.status})") from e
    except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as e:
        raise UpstreamUnreachable("the upstream is unreachable") from e
    except aiohttp.ClientError as e:
        raise UpstreamError("the upstream failed") from e
    protocols = (upstream.protocol,) if upstream.protocol else ()
    client = web.WebSocketResponse(protocols=protocols, autoping=True, max_msg_size=max_msg_size)
    try:
        try:
            await client.prepare(request)
        except web.HTTPException as e:  # checked above; a client that changed its mind
            raise BadRequest("not a valid WebSocket handshake") from e
        tasks = [
            asyncio.ensure_future(_pump(upstream, client)),
            asyncio.ensure_future(_pump(client, upstream)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    finally:
        await upstream.close()
        if client.prepared:
            await client.close()
    return client
