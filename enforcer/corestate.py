"""What both surfaces of the core share: the store, the policy engine, the event
hub (long-poll waiters and SSE subscribers), the decision ring, the lifecycle
backend and the agent sockets. One :class:`CoreState` per core, reachable from
both applications under :data:`CORE`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from enforcer.config import HiveConfig
from enforcer.lifecycle import LifecycleBackend
from enforcer.policy import PolicyEngine
from enforcer.store import Store
from enforcer.transport import AgentRegistry, AgentSites, SocketProvider

__all__ = [
    "CORE",
    "TRANSFERS_PER_AGENT",
    "CoreState",
    "DecisionRing",
    "EventHub",
    "Instrument",
    "PerAgent",
]

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


_Entry = tuple[int, Mapping[str, Any], str]
"""(sequence number, the decision's fields without its request id, the request id)."""


class DecisionRing:
    """The newest policy decisions, kept fairly per principal, in bounded memory.

    Each principal has a ring of its own newest decisions: one agent's flood of
    requests only ever pushes out that agent's own older decisions, never
    another principal's. A ring holds up to ``per_principal`` decisions while
    few principals are active; with more, each holds ``budget // principals``
    (never fewer than ``min_per_principal``), so all rings together hold at
    most ``budget`` decisions. Past ``budget // min_per_principal`` principals,
    the one whose last decision is the oldest is forgotten to make room.

    :meth:`append` is the enforcers' decision sink, on the path of every
    request: one dict lookup and one append to a bounded deque, which drops
    its oldest entry itself (the rings are made, resized and dropped only
    when a principal comes or goes). The least recently active principal is
    the one whose newest entry has the lowest sequence number, found only
    when one must go. Reads merge the rings by sequence number (the order
    decisions were made).
    """

    __slots__ = ("_budget", "_cap", "_max_principals", "_min", "_per_principal", "_rings", "_seq")

    def __init__(
        self, *, budget: int = 32768, per_principal: int = 1000, min_per_principal: int = 16
    ) -> None:
        if not 1 <= min_per_principal <= per_principal <= budget:
            raise ValueError("need 1 <= min_per_principal <= per_principal <= budget")
        self._budget = budget
        self._per_principal = per_principal
        self._min = min_per_principal
        self._max_principals = budget // min_per_principal
        self._cap = per_principal
        # Principal -> its ring (a deque bounded at the cap: appending drops the oldest).
        self._rings: dict[str, collections.deque[_Entry]] = {}
        self._seq = itertools.count()

    def append(self, item: tuple[Mapping[str, Any], str]) -> None:
        """Record one decision: ``(its fields without the request id, the request id)``."""
        event, rid = item
        ring = self._rings.get(event["principal"])
        if ring is None:
            ring = self._add(event["principal"])
        ring.append((next(self._seq), event, rid))

    def _add(self, principal: str) -> collections.deque[_Entry]:
        rings = self._rings
        if len(rings) >= self._max_principals:
            # The least recently active principal: its newest decision is the oldest.
            del rings[min(rings, key=lambda p: rings[p][-1][0] if rings[p] else -1)]
        cap = max(self._min, min(self._per_principal, self._budget // (len(rings) + 1)))
        if cap < self._cap:
            # Fewer per principal now: every ring is cut to its newest ``cap``, so
            # the budget holds at once, and bounded at ``cap`` from now on.
            for other, ring in rings.items():
                rings[other] = collections.deque(ring, maxlen=cap)
        self._cap = cap
        ring = rings[principal] = collections.deque(maxlen=cap)
        return ring

    @property
    def per_principal(self) -> int:
        """How many decisions each principal's ring holds at most, now."""
        return self._cap

    def __len__(self) -> int:
        return sum(len(ring) for ring in self._rings.values())

    def _newest_first(self, principal: str = "") -> Iterator[_Entry]:
        if principal.endswith("*"):
            prefix = principal[:-1]
            rings = [r for p, r in self._rings.items() if p.startswith(prefix)]
        elif principal:
            found = self._rings.get(principal)
            rings = [] if found is None else [found]
        else:
            rings = list(self._rings.values())
        # Read whole by the caller, on the event loop: no append runs meanwhile.
        return heapq.merge(*(reversed(r) for r in rings), key=_seq_of, reverse=True)

    def newest(self, limit: int, *, principal: str = "") -> list[dict[str, Any]]:
        """The newest ``limit`` decisions, newest last; only ``principal``'s when given.

        ``principal`` matches exactly, or as a prefix when it ends in ``*``
        (``agent:*``).
        """
        picked = list(itertools.islice(self._newest_first(principal), limit))
        return [{**event, "request_id": rid} for _seq, event, rid in reversed(picked)]

    def all(self) -> list[dict[str, Any]]:
        """Every decision kept, oldest first."""
        return self.newest(self._budget)


def _seq_of(entry: _Entry) -> int:
    return entry[0]


TRANSFERS_PER_AGENT = 4
"""Request bodies or state files one agent may have in the core's memory at once."""


class PerAgent:
    """One semaphore per agent, made on first use and dropped when no one holds or awaits it.

    Memory follows the agents busy right now, not every name ever seen.
    """

    def __init__(self, make: Callable[[], asyncio.Semaphore]) -> None:
        self._make = make
        # agent -> [semaphore, holders and waiters]
        self._entries: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, agent: str) -> AsyncIterator[None]:
        """Hold ``agent``'s semaphore (waiting for it if need be)."""
        entry = self._entries.get(agent)
        if entry is None:
            entry = self._entries[agent] = [self._make(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._entries.get(agent) is entry:
                del self._entries[agent]


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
    # The enforcers' decision sink is this ring's append (fair per principal).
    decision_ring: DecisionRing = field(default_factory=DecisionRing)
    instrument: Instrument | None = None
    # One state/ write at a time per agent: its quota check and its write
    # together (concurrent writes each passed the check before any wrote).
    state_locks: PerAgent = field(default_factory=lambda: PerAgent(lambda: asyncio.Semaphore(1)))
    # At most TRANSFERS_PER_AGENT request bodies or state files (up to 4 MiB
    # each) in memory per agent at once: the others wait before theirs is read.
    transfer_slots: PerAgent = field(
        default_factory=lambda: PerAgent(lambda: asyncio.Semaphore(TRANSFERS_PER_AGENT))
    )

    def state_lock(self, agent: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold ``agent``'s ``state/`` write lock."""
        return self.state_locks.hold(agent)

    def transfer_slot(self, agent: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold one of ``agent``'s :data:`TRANSFERS_PER_AGENT` slots (a body or a state file)."""
        return self.transfer_slots.hold(agent)

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """Every decision event the ring keeps, oldest first (see :class:`DecisionRing`)."""
        return self.decision_ring.all()

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
