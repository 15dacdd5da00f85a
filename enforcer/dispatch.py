"""Routing for an application without middlewares: plain routes found by one lookup.

aiohttp's ``Application._handle`` asks the event loop for itself
(``asyncio.get_event_loop()``: on Python 3.11 a ``getpid(2)`` per request)
and walks the router from the full path back to ``/`` on every request.
:class:`Dispatch` is that same step for the core's agent surface, whose
application has no middlewares (every route is enforced by its
:class:`enforcer.authz.Enforcer`): a request whose (method, path) the
router once resolved to a route of a *plain* resource (a fixed path, no
variable part) goes straight to that route; everything else is resolved
by the router as ``Application._handle`` does it. A request the router
cannot place at all (no route, not even a catch-all: a target that is not
a path, ``OPTIONS *``, ``CONNECT host:port``) goes to ``unrouted`` when
given - the agent surface's logged JSON refusal - instead of aiohttp's
plain 404.

Why that is the same answer: the router is frozen once the application
starts, and a plain resource matches on exactly the method and the decoded
path (``rel_url.path_safe``) the router walks with, so the router gives the
same route for the same (method, path) every time - and the same match
info, empty, which is why a learnt route's one match info (read-only) serves
all its requests. The table is learnt from
the router's own answers, never worked out beside it: a key becomes a
shortcut only after the router resolved a real request with it to that
route, and only keys of registered plain routes are ever looked up twice
(so the table is bounded by the routes). What follows the routing is
``_handle``'s own tail: the match info joined to the application and frozen,
an ``Expect`` header given to the route's expect handler, then the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, cast

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import (
    MatchedSubAppResource,
    PlainResource,
    PrefixedSubAppResource,
    UrlMappingMatchInfo,
)

__all__ = ["Dispatch"]


class Dispatch:
    """``app._handle`` for ``app`` (no middlewares, started), plain routes by one lookup."""

    __slots__ = ("_app", "_candidates", "_handle", "_routes", "_unrouted")

    def __init__(
        self,
        app: web.Application,
        *,
        unrouted: Callable[[web.Request], web.StreamResponse] | None = None,
    ) -> None:
        if not self.serves(app):
            raise ValueError(
                "Dispatch serves applications without middlewares or sub-applications only"
            )
        if not app.frozen:
            raise ValueError("Dispatch needs the started (frozen) application")
        self._app = app
        self._unrouted = unrouted
        self._handle: Callable[[web.Request], Awaitable[web.StreamResponse]] = app._handle
        # (method, path) of every plain route: the only keys worth asking the router about.
        self._candidates: frozenset[tuple[str, str]] = frozenset(
            (route.method, route.resource.get_info()["path"])
            for route in app.router.routes()
            if isinstance(route.resource, PlainResource) and route.method != hdrs.METH_ANY
        )
        # (method, path) -> the handler of the route the router resolved it to
        # (confirmed) and that route's one match info, shared and read-only.
        self._routes: dict[tuple[str, str], tuple[Handler, _PlainMatch]] = {}

    @staticmethod
    def serves(app: web.Application) -> bool:
        """Whether ``app`` is one Dispatch routes as ``_handle`` would.

        No middlewares (``_run`` runs none) and no sub-applications: their
        middlewares, their ``request.app``, and a domain's dependence on
        ``Host`` are ``_handle``'s business, not a (method, path) table's.
        """
        return not app.middlewares and not any(
            isinstance(resource, PrefixedSubAppResource | MatchedSubAppResource)
            for resource in app.router.resources()
        )

    async def __call__(self, base: web.BaseRequest) -> web.StreamResponse:
        """Route ``request`` and run its handler, as ``Application._handle`` does."""
        # The application's request factory makes a web.Request (as for _handle).
        request = cast(web.Request, base)
        key = (request.method, request.rel_url.path_safe)
        learnt = self._routes.get(key)
        if learnt is not None:
            handler, shared = learnt
            request._match_info = shared
            if request.headers.get(hdrs.EXPECT):
                answer = await self._expect(shared, request)
                if answer is not None:
                    return answer
            return await handler(request)
        match_info = await self._app.router.resolve(request)
        if not isinstance(match_info, UrlMappingMatchInfo):  # not aiohttp's router: its way
            return await self._handle(request)
        if match_info.http_exception is not None and self._unrouted is not None:
            # The router could not place it (with a catch-all route, as the
            # agent surface has: only a target that is not a path, "OPTIONS *"
            # or "CONNECT host:port"). The owner's answer, not aiohttp's 404.
            return self._unrouted(request)
        if key in self._candidates:
            route = match_info.route
            if isinstance(route.resource, PlainResource) and route.method == key[0]:
                one = _PlainMatch(route)
                one.add_app(self._app)
                one.freeze()
                self._routes[key] = (route.handler, one)
        # Application._handle's tail, for an application without middlewares.
        match_info.add_app(self._app)
        match_info.freeze()
        request._match_info = match_info
        if request.headers.get(hdrs.EXPECT):
            answer = await self._expect(match_info, request)
            if answer is not None:
                return answer
        return await match_info.handler(request)

    @staticmethod
    async def _expect(
        match_info: UrlMappingMatchInfo, request: web.Request
    ) -> web.StreamResponse | None:
        answer = await match_info.expect_handler(request)
        await request.writer.drain()
        return answer


class _PlainMatch(UrlMappingMatchInfo):
    """A plain route's match info, one for all its requests: nothing in it can change.

    A plain route matches no variable part, so every request of it has the
    same match info; sharing one saves making it per request. Read-only, so
    that no request can leave anything in it for the next: a write raises.
    """

    __slots__ = ()  # no attribute can be left on it either

    def __init__(self, route: web.AbstractRoute) -> None:
        super().__init__({}, route)

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a plain route's match info is shared: it cannot change")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = clear = setdefault = _read_only

    @property
    def current_app(self) -> web.Application:
        return super().current_app

    @current_app.setter
    def current_app(self, app: web.Application) -> None:
        self._read_only(app)
