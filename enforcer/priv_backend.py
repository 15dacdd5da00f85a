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

The lifecycle interface's :meth:`~PrivLifecycleBackend.status` is synchronous
(the operator API calls it while rendering), so it answers from a cache: every
lifecycle call's answer, refreshed by a background task that sends one
``container.status`` (every container at once) every ``poll_interval``
seconds. A status is therefore at most about one interval (plus one
round-trip) old. While hive-priv does not answer, an agent's status is
``unknown`` - unless a lifecycle call about it was answered after the last
poll failed (see ``docs/backends.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from enforcer.config import HiveConfig
from enforcer.errors import Conflict, HiveError, NotFound, Unavailable
from enforcer.log import get_logger
from enforcer.priv_client import PrivClient
from enforcer.store import AgentRecord

__all__ = ["PrivLifecycleBackend", "PrivSocketProvider", "core_status", "priv_components"]


def _log() -> Any:
    # Looked up at each use: structlog is configured after import.
    return get_logger("hive.priv_backend")


# hive-priv's container states -> the lifecycle interface's words.
_STATUS = {
    "running": "running",
    "failed": "failed",
    "created": "stopped",
    "stopped": "stopped",
    "creating": "stopped",
}


def core_status(info: dict[str, Any] | None) -> str:
    """A hive-priv status dictionary as ``running``/``stopped``/``failed``/``absent``."""
    if info is None:
        return "absent"
    return _STATUS.get(str(info.get("state")), "stopped")


class PrivLifecycleBackend:
    """Agent lifecycle as hive-priv containers (netns + own uid).

    ``poll_interval``: seconds between two ``container.status`` requests;
    ``poll_timeout``: how long one may take before hive-priv counts as down.
    """

    def __init__(
        self, client: PrivClient, *, poll_interval: float = 1.5, poll_timeout: float = 5.0
    ) -> None:
        self._client = client
        self._interval = poll_interval
        self._poll_timeout = poll_timeout
        self._last: dict[str, dict[str, Any]] = {}
        # When each agent's entry was last set by a lifecycle answer
        # (monotonic): a poll that started before that carries older news.
        self._touched: dict[str, float] = {}
        self._poller: asyncio.Task[None] | None = None
        self._reachable: bool | None = None  # None: not polled yet
        self._failures = 0  # polls failed in a row
        self._closed = False
        self._polled_at: float | None = None
        # When the first of the polls failing now was sent (None: the last one answered).
        self._down_since: float | None = None

    def _remember(self, name: str, info: dict[str, Any] | None) -> None:
        if info is None:
            self._last.pop(name, None)
        else:
            self._last[name] = info
        self._touched[name] = time.monotonic()

    # --- the status cache ---------------------------------------------------------

    def _ensure_poller(self, *, reopen: bool = True) -> None:
        """Start the background refresh on the running loop, once (lazily).

        ``reopen=False`` (from :meth:`status`): not after :meth:`close` - a
        page rendered during shutdown must not leave a task behind.
        """
        if self._closed and not reopen:
            return
        self._closed = False
        if self._poller is not None and not self._poller.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller outside any loop: nothing to start
            return
        self._poller = loop.create_task(self._poll_loop(), name="priv-status-poll")

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not end the polling silently
                _log().exception("priv.status_poll_failed")
            # While hive-priv does not answer, ask less often (each connection
            # to a socket-activated hive-priv tries to start it): up to 8
            # intervals, at most 10 s, between tries.
            backoff = min(2 ** min(self._failures, 3), max(1.0, 10.0 / self._interval))
            await asyncio.sleep(self._interval * backoff)

    async def refresh(self) -> bool:
        """Ask hive-priv for every container's status now; False if it could not answer.

        An unreachable or refusing hive-priv is logged once (and once again
        when it answers again); meanwhile :meth:`status` says ``unknown``.
        """
        started = time.monotonic()
        try:
            containers = await self._client.container_status(socket_timeout=self._poll_timeout)
        except HiveError as e:
            if self._reachable is not False:
                _log().warning(
                    "priv.status_unavailable",
                    error=e.code,
                    reason=e.reason,
                    status="unknown until it answers",
                )
            self._reachable = False
            if self._down_since is None:
                self._down_since = started
            self._failures += 1
            return False
        if self._reachable is False:
            _log().info("priv.status_restored")
        self._reachable, self._polled_at, self._failures = True, time.monotonic(), 0
        self._down_since = None
        self._apply(containers, started)
        return True

    def _apply(self, containers: dict[str, dict[str, Any]], started: float) -> None:
        # A lifecycle answer recorded after this poll was sent is newer than it.
        newer = {n for n, t in self._touched.items() if t >= started}
        for name in set(self._last) - set(containers) - newer:
            del self._last[name]
        for name, info in containers.items():
            if name not in newer:
                self._last[name] = info
        # Forget answers far older than any poll still in flight could be.
        horizon = started - 60.0 - self._poll_timeout
        self._touched = {n: t for n, t in self._touched.items() if t >= horizon}

    @property
    def status_age(self) -> float | None:
        """Seconds since hive-priv last answered a status poll (None: never)."""
        return None if self._polled_at is None else time.monotonic() - self._polled_at

    async def create(self, agent: AgentRecord) -> None:
        """Create the container (user, directories, isolated network); idempotent.

        The agent's uid is the one registered with the core; a container whose
        user has another uid is refused (the socket would be unusable and
        ``SO_PEERCRED`` would never match).
        """
        self._ensure_poller()
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

    async def allocate_uid(self, name: str, command: tuple[str, ...]) -> int | None:
        """Create the container of a new agent and return the uid hive-priv gave it.

        hive-priv allocates agent uids from a range past a durable mark, never
        one twice; :meth:`create` then finds the container made and confirms
        the uid. A container of that name already there is a conflict: its uid
        belongs to whatever made it.
        """
        self._ensure_poller()
        if not command:
            raise Conflict(f"agent {name!r} has no command to run in its container")
        info = await self._client.container_create(name, command)
        self._remember(name, info)
        uid = info.get("uid")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            raise Conflict(f"hive-priv gave agent {name!r} no usable uid ({uid!r})")
        return uid

    async def start(self, agent: AgentRecord) -> None:
        """Start the agent's process in its namespace."""
        self._ensure_poller()
        self._remember(agent.name, await self._client.container_start(agent.name))

    async def stop(self, agent: AgentRecord) -> None:
        """Stop (and reap) the agent's process."""
        self._ensure_poller()
        self._remember(agent.name, await self._client.container_stop(agent.name))

    async def restart(self, agent: AgentRecord) -> None:
        """Stop, then start."""
        self._ensure_poller()
        self._remember(agent.name, await self._client.container_restart(agent.name))

    async def destroy(self, agent: AgentRecord) -> None:
        """Remove the container: process, network, socket, directories (absent: no-op)."""
        self._ensure_poller()
        with contextlib.suppress(NotFound):
            await self._client.container_destroy(agent.name)
        self._remember(agent.name, None)

    def status(self, name: str) -> str:
        """``running``, ``stopped``, ``failed``, ``absent`` or ``unknown``.

        From the cache: hive-priv's last answer about ``name`` (a lifecycle
        call's or the last poll's), so up to about one poll interval old.
        ``absent``: hive-priv has no such container (or was never asked).
        ``unknown``: hive-priv stopped answering status polls and has said
        nothing about ``name`` since - what it said before may no longer hold.
        """
        self._ensure_poller(reopen=False)
        down_since = self._down_since
        if down_since is not None and self._touched.get(name, -1.0) < down_since:
            return "unknown"
        return core_status(self._last.get(name))

    def resources(self, name: str) -> dict[str, Any] | None:
        """The agent's limits and use (its control group), as of hive-priv's last answer."""
        info = self._last.get(name)
        found = info.get("resources") if info else None
        return found if isinstance(found, dict) else None

    def ui_url(self, name: str) -> str | None:
        """Where the agent's web UI listens (its veth address), if it has a network."""
        info = self._last.get(name)
        url = info.get("ui_url") if info else None
        return url if isinstance(url, str) else None

    async def close(self) -> None:
        """Stop polling; the containers belong to hive-priv and outlive a core restart."""
        self._closed = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        self._last.clear()
        self._touched.clear()


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
