"""The core's client for hive-priv (``priv.sock``): async, one connection per request.

Each call connects, sends one request line, reads one response line (and, for
:meth:`PrivClient.socket_create`, the listening socket's fd passed as
``SCM_RIGHTS`` ancillary data), and closes. The blocking exchange runs in a
worker thread (``asyncio.to_thread``) so it never stalls the core's event loop
and fd passing uses the plain ``socket.recv_fds``.

Errors come back as the matching :class:`enforcer.errors.HiveError` subclass
(``NotFound``, ``Conflict``, ``Forbidden``, ``BadRequest``...); hive-priv
being down or unreachable is :class:`enforcer.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enforcer.errors import Unavailable
from enforcer.priv_protocol import (
    MAX_RESPONSE_BYTES,
    ContainerCreate,
    ContainerDestroy,
    ContainerRestart,
    ContainerStart,
    ContainerStatus,
    ContainerStop,
    IsolationApply,
    IsolationRemove,
    PrivRequest,
    SocketCreate,
    StateRead,
    decode_response,
    encode_request,
    parse_status_result,
)

__all__ = ["PrivClient", "exchange"]


def exchange(path: Path, line: bytes, timeout: float) -> tuple[bytes, list[int]]:
    """Blocking: send ``line`` on a fresh connection; return (response line, fds received)."""
    fds: list[int] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(line)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise Unavailable("hive-priv response too large")
                data, got, _flags, _addr = socket.recv_fds(
                    sock, 1 << 16, 4, socket.MSG_CMSG_CLOEXEC
                )
                fds.extend(got)
                if not data:
                    raise Unavailable("hive-priv closed the connection without a response")
                buf += data
            return bytes(buf), fds
    except OSError as e:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise Unavailable(f"hive-priv unreachable at {path}: {e}") from e
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


class PrivClient:
    """Typed async calls to hive-priv. Every method returns hive-priv's result dict
    (the container status for lifecycle calls) unless said otherwise."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    async def call(
        self, request: PrivRequest, *, socket_timeout: float | None = None
    ) -> tuple[dict[str, Any], list[int]]:
        """Send any request; return (result, received fds - the caller owns them).

        ``socket_timeout`` (seconds, per socket operation, in the worker thread) overrides
        the client's.
        """
        request.validate()  # refuse locally what hive-priv would refuse
        line, fds = await asyncio.to_thread(
            exchange, self.path, encode_request(request), socket_timeout or self.timeout
        )
        try:
            return decode_response(line), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    async def _result(
        self, request: PrivRequest, *, socket_timeout: float | None = None
    ) -> dict[str, Any]:
        result, fds = await self.call(request, socket_timeout=socket_timeout)
        for fd in fds:  # none expected: never leak one
            os.close(fd)
        return result

    async def container_create(self, agent: str, command: Sequence[str]) -> dict[str, Any]:
        """User, directories and isolated network for ``agent``; not started."""
        return await self._result(ContainerCreate(agent, tuple(command)))

    async def container_start(self, agent: str) -> dict[str, Any]:
        """Start the agent process in its namespace."""
        return await self._result(ContainerStart(agent))

    async def container_stop(self, agent: str) -> dict[str, Any]:
        """Stop and reap the agent process."""
        return await self._result(ContainerStop(agent))

    async def container_restart(self, agent: str) -> dict[str, Any]:
        """Stop, then start."""
        return await self._result(ContainerRestart(agent))

    async def container_destroy(self, agent: str) -> dict[str, Any]:
        """Remove everything the container made."""
        return await self._result(ContainerDestroy(agent))

    async def container_status(
        self, *, socket_timeout: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every container hive-priv knows: ``{name: status}`` (one request for all)."""
        return parse_status_result(
            await self._result(ContainerStatus(), socket_timeout=socket_timeout)
        )

    async def isolation_apply(self, agent: str) -> dict[str, Any]:
        """Bring up (or confirm) the container's isolated network; returns its status."""
        return await self._result(IsolationApply(agent))

    async def isolation_remove(self, agent: str) -> dict[str, Any]:
        """Remove the container's network (refused while it runs)."""
        return await self._result(IsolationRemove(agent))

    async def socket_create(self, agent: str) -> socket.socket:
        """A listening socket bound at ``RUN/agents/<agent>.sock`` (owner: the agent, 0600).

        Hand it to aiohttp with ``web.SockSite(runner, sock)``. The core needs no
        file access to the socket: it holds the listening fd.
        """
        result, fds = await self.call(SocketCreate(agent))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise Unavailable(f"hive-priv sent {len(fds)} fds for {agent}'s socket, expected 1")
        sock = socket.socket(fileno=fds[0])
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise Unavailable("hive-priv passed something that is not a unix stream socket")
        _ = result
        return sock

    async def read_state_file(self, agent: str, rel_path: str) -> bytes:
        """``ReadAgentStateFile{agent, rel_path}``: the file's bytes, confined to ``state/``."""
        result = await self._result(StateRead(agent, rel_path))
        return base64.b64decode(result["content_b64"], validate=True)
