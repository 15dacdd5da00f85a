"""The core's side of privilege separation: lifecycle and agent sockets through hive-priv.

The core runs unprivileged. With ``[core] backend = "priv"`` it does not start
processes or bind agent sockets itself; it asks hive-priv (``priv.sock``):

- :class:`PrivLifecycleBackend` implements :class:`enforcer.lifecycle.LifecycleBackend`
  with ``container.*`` requests (:class:`enforcer.priv_client.PrivClient`):
  each agent is a container of hive-priv's netns backend (own user, own
  network namespace, own process);
- :class:`PrivSocketProvider` implements :class:`enforcer.transport.SocketProvider`
  with ``socket.create``: hive-priv binds ``RUN/agents/<name>.sock`` (owner the
  agent's uid, 0600) and passes the *listening* fd over ``SCM_RIGHTS``. The
  core accepts on that fd; it needs (and has) no access to the socket file.

hive-priv has no status request, so :meth:`PrivLifecycleBackend.status` and
:meth:`PrivLifecycleBackend.ui_url` answer from the last status hive-priv
returned (every lifecycle call returns one).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

from enforcer.config import HiveConfig
from enforcer.errors import Conflict, NotFound, Unavailable
from enforcer.priv_client import PrivClient
from enforcer.store import AgentRecord

__all__ = ["PrivLifecycleBackend", "PrivSocketProvider", "priv_components"]

# hive-priv's container states -> the core's three words.
_STATUS = {"running": "running", "created": "stopped", "stopped": "stopped", "creating": "stopped"}


class PrivLifecycleBackend:
    """Agent lifecycle as hive-priv containers (netns + own uid)."""

    def __init__(self, client: PrivClient) -> None:
        self._client = client
        self._last: dict[str, dict[str, Any]] = {}

    def _remember(self, name: str, info: dict[str, Any]) -> None:
        self._last[name] = info

    async def create(self, agent: AgentRecord) -> None:
        """Create the container (user, directories, isolated network); idempotent.

        The agent's uid is the one registered with the core; a container whose
        user has another uid is refused (the socket would be unusable and
        ``SO_PEERCRED`` would never match).
        """
        if not agent.command:
            raise Conflict(f"agent {agent.name!r} has no command to run in its container")
        try:
            info = await self._client.container_create(agent.name, agent.command)
        except Conflict:
            # It exists (a core restart): confirm its network and read its status.
            info = await self._client.isolation_apply(agent.name)
        if info.get("uid") != agent.uid:
            raise Conflict(
                f"container {agent.name!r} runs as uid {info.get('uid')}, but the agent is "
                f"registered with uid {agent.uid}"
            )
        self._remember(agent.name, info)

    async def start(self, agent: AgentRecord) -> None:
        """Start the agent's process in its namespace."""
        self._remember(agent.name, await self._client.container_start(agent.name))

    async def stop(self, agent: AgentRecord) -> None:
        """Stop (and reap) the agent's process."""
        self._remember(agent.name, await self._client.container_stop(agent.name))

    async def restart(self, agent: AgentRecord) -> None:
        """Stop, then start."""
        self._remember(agent.name, await self._client.container_restart(agent.name))

    async def destroy(self, agent: AgentRecord) -> None:
        """Remove the container: process, network, socket, directories (absent: no-op)."""
        with contextlib.suppress(NotFound):
            await self._client.container_destroy(agent.name)
        self._last.pop(agent.name, None)

    def status(self, name: str) -> str:
        """``running``/``stopped`` from hive-priv's last answer, ``absent`` if none."""
        info = self._last.get(name)
        if info is None:
            return "absent"
        return _STATUS.get(str(info.get("state")), "stopped")

    def ui_url(self, name: str) -> str | None:
        """Where the agent's web UI listens (its veth address), if it has a network."""
        info = self._last.get(name)
        url = info.get("ui_url") if info else None
        return url if isinstance(url, str) else None

    async def close(self) -> None:
        """Nothing: the containers belong to hive-priv and outlive a core restart."""
        self._last.clear()


class PrivSocketProvider:
    """Agent sockets made by hive-priv; the core receives the listening fd."""

    def __init__(self, client: PrivClient) -> None:
        self._client = client

    async def open(self, name: str, uid: int, path: Path) -> socket.socket:
        """The listening socket hive-priv bound at ``path`` (owner ``uid``, 0600)."""
        sock = await self._client.socket_create(name)
        bound = sock.getsockname()
        bound = bound.decode() if isinstance(bound, bytes) else str(bound)
        if bound != str(path):
            sock.close()
            raise Unavailable(
                f"hive-priv bound {name}'s socket at {bound}, the core expects {path}: "
                "hive-priv and the core must use the same run_dir"
            )
        sock.setblocking(False)
        return sock

    async def close(self, name: str, path: Path) -> None:
        """Nothing to do: the file is hive-priv's (removed when the container is destroyed)."""


def priv_components(config: HiveConfig) -> tuple[PrivLifecycleBackend, PrivSocketProvider]:
    """The lifecycle backend and socket provider of a core that uses hive-priv."""
    client = PrivClient(config.priv_socket)
    return PrivLifecycleBackend(client), PrivSocketProvider(client)
