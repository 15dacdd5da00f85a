"""Unix listeners, ``SO_PEERCRED``, and "which socket accepted this connection".

The principal of a request comes from the transport only:

- on an agent socket, :class:`AgentRegistry` maps the listening socket's path
  (the accepted connection's ``sockname``) to the agent it was created for, and
  the peer's uid (``SO_PEERCRED``) must equal that agent's configured uid;
- on ``core.sock``, the peer's uid must be the gateway's, and only then does the
  ``X-Hive-Principal: operator`` marker count (:func:`core_principal`).

Agent sockets are made by a :class:`SocketProvider`: :class:`LocalSocketProvider`
binds them itself (0600, owned by the agent's uid when running as root); a
provider that receives an already-listening fd from hive-priv fits the same
interface. :class:`AgentSites` adds and removes one ``web.SockSite`` per agent
on a running ``AppRunner``, without restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import socket
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from enforcer.errors import Forbidden, NotFound

__all__ = [
    "MAX_AGENT_CONNECTIONS",
    "AgentBinding",
    "AgentPrincipal",
    "AgentRegistry",
    "AgentSites",
    "LocalSocketProvider",
    "PeerCredentials",
    "SocketProvider",
    "agent_principal",
    "bind_unix_socket",
    "core_principal",
    "peer_credentials",
]

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The connecting process, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


# SO_PEERCRED is fixed when the peer connects, so it is read once per
# connection (keyed weakly by the transport, gone with the connection).
_PEERS: weakref.WeakKeyDictionary[object, PeerCredentials] = weakref.WeakKeyDictionary()


def peer_credentials(request: web.BaseRequest) -> PeerCredentials:
    """``SO_PEERCRED`` of the request's connection (:class:`Forbidden` if unavailable)."""
    transport = request.transport
    if transport is None:
        raise Forbidden("peer credentials are unavailable on this connection")
    cached = _PEERS.get(transport)
    if cached is not None:
        return cached
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        raise Forbidden("peer credentials are unavailable on this connection")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    peer = PeerCredentials(pid, uid, gid)
    _PEERS[transport] = peer
    return peer


def _sockname(request: web.BaseRequest) -> str | None:
    transport = request.transport
    if transport is None:
        return None
    name = transport.get_extra_info("sockname")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    return name if isinstance(name, str) and name else None


@dataclass(frozen=True, slots=True)
class AgentBinding:
    """What a listening socket path stands for."""

    name: str
    uid: int


class AgentPrincipal(str):
    """An agent socket's principal, ``agent:<name>``, with the binding it was admitted under.

    A plain ``str`` to everything else (the policy, the decision log, the
    request keys); a handler may read :attr:`binding` - the registration the
    transport found live, with ``SO_PEERCRED`` matching its uid, when it admitted
    this very request - instead of looking the agent up again.
    """

    binding: AgentBinding

    def __new__(cls, binding: AgentBinding) -> AgentPrincipal:
        self = super().__new__(cls, f"agent:{binding.name}")
        self.binding = binding
        return self


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A connection whose peer was found to be its socket's agent."""

    key: str
    binding: AgentBinding
    principal: AgentPrincipal


class AgentRegistry:
    """Listening socket path -> agent (name, uid). Mutated only by :class:`AgentSites`.

    It also remembers, per open connection served by :class:`AgentSites`,
    which agent that connection was admitted as: ``SO_PEERCRED`` and the
    accepting socket are fixed for a connection's life, so they are read once,
    and each request only checks that the agent is still registered.
    """

    def __init__(self) -> None:
        self._by_path: dict[str, AgentBinding] = {}
        self._by_name: dict[str, AgentBinding] = {}
        # connection (its aiohttp protocol) -> admission; None until its first request.
        self._connections: dict[object, _Admitted | None] = {}

    def track(self, connection: object) -> None:
        """A connection opened on an agent site (its admission may be remembered)."""
        self._connections[connection] = None

    def forget(self, connection: object) -> None:
        """The connection closed."""
        self._connections.pop(connection, None)

    def add(self, path: str, name: str, uid: int) -> None:
        """Map ``path`` to agent ``name`` with ``uid``."""
        binding = AgentBinding(name, uid)
        self._by_path[path] = binding
        self._by_name[name] = binding

    def remove(self, path: str) -> None:
        """Forget ``path``; connections still open on it are refused from now on."""
        binding = self._by_path.pop(path, None)
        if binding is not None:
            self._by_name.pop(binding.name, None)

    def paths(self) -> dict[str, AgentBinding]:
        """Listening socket path (as the kernel names it) -> agent, a copy."""
        return dict(self._by_path)

    def agent(self, name: str) -> AgentBinding | None:
        """The live binding of agent ``name``, if it has a socket."""
        return self._by_name.get(name)

    def lookup(self, path: str) -> AgentBinding | None:
        """The agent of the socket at ``path``, if any."""
        return self._by_path.get(path)

    def __len__(self) -> int:
        return len(self._by_path)


def agent_principal(registry: AgentRegistry) -> Callable[[web.Request], str]:
    """The agent surface's ``principal_of``: ``agent:<name>`` of the accepting socket.

    Synchronous (nothing here waits): the middleware calls it without a coroutine.
    """

    connections = registry._connections
    by_path = registry._by_path

    def principal_of(request: web.Request) -> str:
        connection = request.protocol
        admitted = connections.get(connection)
        # Fast path: admitted before, and its agent is still the one registered
        # on that socket (a removed agent's open connections are refused).
        if admitted is not None and by_path.get(admitted.key) is admitted.binding:
            return admitted.principal
        path = _sockname(request)
        agent = registry.lookup(path) if path is not None else None
        if path is None or agent is None:
            raise Forbidden("this socket belongs to no registered agent")
        peer = peer_credentials(request)
        if peer.uid != agent.uid:
            raise Forbidden(
                f"peer uid {peer.uid} is not agent {agent.name}'s uid; "
                "only the agent itself may use its socket"
            )
        principal = AgentPrincipal(agent)
        if connection in connections:  # tracked: forgotten when it closes
            connections[connection] = _Admitted(path, agent, principal)
        return principal

    return principal_of


OPERATOR_MARKER = "X-Hive-Principal"


def core_principal(gateway_uid: int) -> Callable[[web.Request], str]:
    """``core.sock``'s ``principal_of``: only the gateway's uid; operator only with its marker."""

    def principal_of(request: web.Request) -> str:
        peer = peer_credentials(request)
        if peer.uid != gateway_uid:
            raise Forbidden("core.sock accepts connections from the gateway only")
        # Exactly one marker header with exactly this value; anything else,
        # including other X-Hive-* or forwarding headers, is ignored.
        markers = request.headers.getall(OPERATOR_MARKER, [])
        return "operator" if markers == ["operator"] else "anonymous"

    return principal_of


def bind_unix_socket(
    path: Path, *, mode: int, uid: int | None, backlog: int = 128
) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` (and owner ``uid`` if given).

    Bound under a temporary name, chmod/chown-ed, then renamed into place, so
    the final path never exists with looser permissions than ``mode``.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        os.chmod(tmp, mode)
        if uid is not None:
            os.chown(tmp, uid, -1)
        os.replace(tmp, path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return sock


class SocketProvider(Protocol):
    """Makes (or obtains) the listening socket of an agent."""

    async def open(self, name: str, uid: int, path: Path) -> socket.socket:
        """A listening AF_UNIX socket at ``path`` that only ``uid`` can connect to."""
        ...

    async def close(self, name: str, path: Path) -> None:
        """Remove the socket file (the listener is already closed)."""
        ...


class LocalSocketProvider:
    """Binds agent sockets itself: mode 0600, owner = the agent's uid when root."""

    async def open(self, name: str, uid: int, path: Path) -> socket.socket:
        """Bind ``path`` (replacing a stale file), 0600, chown to ``uid`` if we can."""
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = uid if os.geteuid() == 0 else None
        return bind_unix_socket(path, mode=0o600, uid=owner)

    async def close(self, name: str, path: Path) -> None:
        """Unlink the socket file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


MAX_AGENT_CONNECTIONS = 64
"""Connections one agent may hold open on its socket at once (long polls included).

A connection accepted beyond this is closed at once. Without a cap, one agent
holding idle connections exhausts the core's file descriptors, and then the
gateway (``core.sock``) and every other agent are refused: one agent would
take the operator's UI down.
"""


FD_RESERVE = 128
"""File descriptors the core keeps out of agents' reach (core.sock, SQLite, files)."""


def _soft_nofile() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _Counted(asyncio.Protocol):
    """Delegates to aiohttp's request handler; leaves ``live`` when the connection ends."""

    __slots__ = ("_all", "_inner", "_live", "_registry", "_transport", "data_received")

    def __init__(
        self,
        inner: asyncio.Protocol,
        live: set[object],
        registry: AgentRegistry,
        every: set[object],
    ) -> None:
        self._inner = inner
        self._live = live
        self._all = every
        self._registry = registry
        self._transport: asyncio.BaseTransport | None = None
        live.add(self)
        every.add(self)
        registry.track(inner)
        # Every request arrives through data_received: the handler's own bound
        # method in a slot, not a delegating method (one Python call per request).
        self.data_received = inner.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def abort(self) -> None:
        """Cut the connection now (requests in flight on it end unanswered)."""
        transport = self._transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self._all.discard(self)
        self._registry.forget(self._inner)
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """Over the cap: close the connection before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _CappedSockSite(web.SockSite):
    """A ``SockSite`` that holds at most ``max_connections`` connections open."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        max_connections: int,
        registry: AgentRegistry,
        every: set[object],
        room: Callable[[], bool],
    ) -> None:
        super().__init__(runner, sock)
        self._max_connections = max_connections
        self._registry = registry
        self._live: set[object] = set()
        self._every = every  # every agent connection, all sites together
        self._room = room

    def abort_connections(self) -> None:
        """Cut every connection still open on this site: its agent is being removed."""
        for conn in list(self._live):
            if isinstance(conn, _Counted):
                conn.abort()

    def _protocol(self) -> asyncio.Protocol:
        if len(self._live) >= self._max_connections or not self._room():
            return _Refused()
        server = self._runner.server
        assert server is not None
        return _Counted(server(), self._live, self._registry, self._every)

    async def start(self) -> None:
        # web.SockSite.start with our factory in place of the runner's server.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, sock=self._sock, backlog=self._backlog
        )


@dataclass(slots=True)
class _Site:
    site: _CappedSockSite
    path: Path
    key: str


class AgentSites:
    """One listening site per agent on a shared runner; added/removed at run time."""

    def __init__(
        self,
        runner: web.BaseRunner,
        registry: AgentRegistry,
        provider: SocketProvider,
        path_of: Callable[[str], Path],
        *,
        fd_limit: int | None = None,
    ) -> None:
        self._runner = runner
        self._registry = registry
        self._provider = provider
        self._path_of = path_of
        self._sites: dict[str, _Site] = {}
        self._every: set[object] = set()
        self._fd_limit = fd_limit if fd_limit is not None else _soft_nofile()

    async def add(self, name: str, uid: int) -> Path:
        """Open ``name``'s socket and start serving the agent surface on it."""
        if name in self._sites:
            return self._sites[name].path
        path = self._path_of(name)
        sock = await self._provider.open(name, uid, path)
        sockname = sock.getsockname()
        key = sockname.decode() if isinstance(sockname, bytes) else str(sockname)
        # The registry maps what the kernel reports as an accepted connection's
        # sockname: the name the listener was bound under (which may be a
        # temporary name renamed into place, or hive-priv's path).
        self._registry.add(key, name, uid)
        site = _CappedSockSite(
            self._runner, sock, MAX_AGENT_CONNECTIONS, self._registry, self._every, self._room
        )
        try:
            await site.start()
        except BaseException:
            self._registry.remove(key)
            sock.close()
            raise
        self._sites[name] = _Site(site, path, key)
        return path

    def _room(self) -> bool:
        # All agents' connections together stay below the core's file limit,
        # minus one listener per agent and a reserve for core.sock (the
        # operator's way in), SQLite and the state files: a few agents each
        # within their own cap must not lock the operator out.
        budget = self._fd_limit - FD_RESERVE - len(self._sites)
        return len(self._every) < budget

    async def remove(self, name: str) -> None:
        """Stop ``name``'s site, forget it, remove its socket file."""
        entry = self._sites.pop(name, None)
        if entry is None:
            raise NotFound(f"agent {name!r} has no socket")
        self._registry.remove(entry.key)
        # Connections still open would keep a request in flight for an agent
        # that no longer exists (its body still coming): cut them.
        entry.site.abort_connections()
        await entry.site.stop()
        await self._provider.close(name, entry.path)

    def names(self) -> list[str]:
        """Agents with a live socket."""
        return sorted(self._sites)

    async def close(self) -> None:
        """Remove every site."""
        for name in list(self._sites):
            await self.remove(name)
