"""What both surfaces of the core share: the store, the policy engine, the event
hub (long-poll waiters and SSE subscribers), the decision ring, the lifecycle
backend and the agent sockets. One :class:`CoreState` per core, reachable from
both applications under :data:`CORE`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from enforcer.config import HiveConfig
from enforcer.lifecycle import LifecycleBackend
from enforcer.policy import PolicyEngine
from enforcer.store import Store
from enforcer.transport import AgentRegistry, AgentSites, SocketProvider

__all__ = ["CORE", "CoreState", "EventHub", "Instrument"]

Instrument = Callable[[str, Handler], Handler]
"""Wraps every handler with its action name (metrics; tests count operator calls)."""


class EventHub:
    """Change notifications: wakes long-poll waiters and feeds SSE subscribers."""

    def __init__(self, queue_size: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._changed = asyncio.Event()
        self._seq = itertools.count(1)
        self._queue_size = queue_size
        self.closed = False

    def publish(self, kind: str, **data: Any) -> None:
        """Announce a change (``kind`` like ``question.answered``) to everyone waiting."""
        event = {"seq": next(self._seq), "kind": kind, "at": time.time(), **data}
        for queue in self._subscribers:
            if queue.full():
                # A slow subscriber loses its oldest events, never blocks the core.
                queue.get_nowait()
            queue.put_nowait(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, seconds: float) -> None:
        """Return at the next change, at close, or after ``seconds``."""
        if self.closed or seconds <= 0:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of future events (``None`` means the hub closed)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Stop delivering to ``queue``."""
        self._subscribers.discard(queue)

    def close(self) -> None:
        """Wake everyone for shutdown."""
        self.closed = True
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self._changed.set()


@dataclass(slots=True)
class CoreState:
    """Everything the core's handlers share (created once per core)."""

    config: HiveConfig
    engine: PolicyEngine
    backend: LifecycleBackend
    provider: SocketProvider
    store: Store | None = None
    hub: EventHub | None = None
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    sites: AgentSites | None = None
    agent_app: web.Application | None = None
    # (the decision's fields without its request id, the request id): the
    # enforcer shares the first part between requests, so recording is one append
    # (the enforcers' decision sink is this ring's append).
    decision_ring: collections.deque[tuple[Mapping[str, Any], str]] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )
    instrument: Instrument | None = None

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """The newest decision events (at most 1000), oldest first."""
        return [{**event, "request_id": rid} for event, rid in self.decision_ring]

    @property
    def db(self) -> Store:
        """The open store (only between start-up and shutdown)."""
        assert self.store is not None, "the core is not started"
        return self.store

    @property
    def events(self) -> EventHub:
        """The event hub (only between start-up and shutdown)."""
        assert self.hub is not None, "the core is not started"
        return self.hub

    @property
    def agent_sites(self) -> AgentSites:
        """The agent sockets (only between start-up and shutdown)."""
        assert self.sites is not None, "the core is not started"
        return self.sites


CORE: web.AppKey[CoreState] = web.AppKey("core_state", CoreState)
