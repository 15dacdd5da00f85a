"""Route -> action binding, the one default-deny enforcer per daemon, decision logging.

Every route of every daemon is registered through :meth:`Enforcer.bind` with
exactly one catalogue action and a function that computes the resource from
the request. :func:`check_routes` runs at start-up (:meth:`Enforcer.install`
wires it) and refuses a daemon with a route that has no binding, a binding to
an unknown action, or an action whose authority class does not belong on the
daemon's channel (only ``agent-self`` on an agent socket: operator actions
have no route there by construction).

The :class:`Enforcer` computes ``(principal, channel, resource, action)`` in
one place, asks the policy engine, logs exactly one decision event per routed
request and denies by default: a request that matches no bound route is
answered by its fallback and never reaches a handler. It runs on the routes
themselves: :meth:`Enforcer.bind` is the only way to bind a route, and each
bound handler is reached only through the enforcer. Every error becomes a
JSON body without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import PrefixedSubAppResource

from enforcer.errors import BadRequest, HiveError, NotFound, Unavailable
from enforcer.log import DecisionLine
from enforcer.policy import (
    AccessRequest,
    ActionSpec,
    AuthorityClass,
    Decision,
    Policy,
    decision_event,
)

__all__ = [
    "CHANNEL_CLASSES",
    "DECISION",
    "PRINCIPAL",
    "REQUEST_ID",
    "ROUTE_BINDINGS",
    "Decider",
    "DecisionSink",
    "Enforcer",
    "ExpectHandler",
    "PathResource",
    "RouteBinding",
    "UnboundRouteError",
    "Verdict",
    "check_raw_path",
    "check_routes",
    "decision_event",
    "expect_handler",
    "json_error",
    "new_request_id",
    "path_resource",
    "refuse_before_routing",
    "refuse_unrouted",
    "route_bindings",
    "send_100_continue",
    "startup_check",
    "unsafe_raw_path_reason",
]

# A lazy proxy, not a bound logger: it must follow configure_logging() even when
# that runs after this module is imported.
_log = structlog.get_logger()
_LOGGER = "enforcer.authz"


@dataclass(frozen=True, slots=True, eq=False)
class RouteBinding:
    """The one catalogue action a route performs, and how to compute its resource.

    ``from_path``: the resource depends only on the principal and the raw
    request target (see :func:`path_resource`), so a verdict may be
    remembered per (principal, binding, raw target). Compared by identity.
    """

    action: str
    resource: Callable[[web.Request], str | Awaitable[str]]
    from_path: bool = False


class PathResource:
    """A resource function of the principal and the request target only.

    See :func:`path_resource`.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[web.Request], str]) -> None:
        self._fn = fn

    def __call__(self, request: web.Request) -> str:
        return self._fn(request)


def path_resource(fn: Callable[[web.Request], str]) -> PathResource:
    """Declare that ``fn`` computes the resource from :data:`PRINCIPAL` and the path only.

    Only ``match_info`` and the raw target (path and query) may be read:
    never headers, the body or any state. The enforcer then remembers the
    verdict per (principal, route, raw target) and skips ``fn`` on a repeat.
    A constant resource (a string) is always treated so.
    """
    return PathResource(fn)


ROUTE_BINDINGS: web.AppKey[dict[web.AbstractRoute, RouteBinding]] = web.AppKey(
    "route_bindings", dict
)
"""Per application: route object -> its binding (sub-applications keep their own)."""

PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)
"""The principal the enforcer computed from the transport."""

DECISION: web.RequestKey[Decision] = web.RequestKey("decision", Decision)
"""The policy decision that let the request through."""

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
"""A fresh id per request, in the decision event and every error body."""

# Which authority classes may be bound on which channel. An action outside its
# channel's set is a start-up error, whatever the policy says.
CHANNEL_CLASSES: Mapping[str, frozenset[AuthorityClass]] = {
    "socket": frozenset({AuthorityClass.AGENT_SELF}),
    "gateway": frozenset({AuthorityClass.OPERATOR, AuthorityClass.PUBLIC}),
    "priv": frozenset({AuthorityClass.SYSTEM}),
}


class UnboundRouteError(HiveError):
    """A daemon's route table does not match the catalogue (refuses to start)."""

    status = 500
    code = "unbound_route"


class Decider(Protocol):
    """What the enforcer needs from :class:`enforcer.policy.PolicyEngine` to decide."""

    def decide(self, req: AccessRequest) -> Decision:
        """Decide one request."""
        ...


DecisionSink = Callable[[tuple[Mapping[str, Any], str]], None]
"""Receives every decision as one pair: its event without the request id
(shared between requests: do not change it), and the request id. The core
passes its ring's ``append`` (the audit view's newest decisions)."""


# --- binding ----------------------------------------------------------------


def _bindings(app: web.Application) -> dict[web.AbstractRoute, RouteBinding]:
    try:
        return app[ROUTE_BINDINGS]
    except KeyError:
        table: dict[web.AbstractRoute, RouteBinding] = {}
        app[ROUTE_BINDINGS] = table
        return table


def _resource_fn(
    resource: Callable[[web.Request], str | Awaitable[str]] | str,
) -> Callable[[web.Request], str | Awaitable[str]]:
    if isinstance(resource, str):
        constant = resource
        return lambda _request: constant
    return resource


def _walk_routes(
    app: web.Application,
) -> Iterator[tuple[web.Application, web.AbstractRoute]]:
    for resource in app.router.resources():
        if isinstance(resource, PrefixedSubAppResource):
            yield from _walk_routes(resource.get_info()["app"])
        else:
            for route in resource:
                yield app, route


# The binding of an enforcer's fallback route (unmatched requests -> 404/405).
_FALLBACK = RouteBinding("", _resource_fn(""))


def route_bindings(
    app: web.Application,
) -> Iterator[tuple[web.AbstractRoute, RouteBinding | None]]:
    """Every route of ``app`` and its sub-applications with its binding (None: unbound).

    An :class:`Enforcer`'s fallback route is left out: it performs no action.
    """
    for owner, route in _walk_routes(app):
        binding = owner.get(ROUTE_BINDINGS, {}).get(route)
        if binding is not _FALLBACK:
            yield route, binding


def check_routes(
    app: web.Application, catalogue: Mapping[str, ActionSpec], *, channel: str
) -> None:
    """Raise :class:`UnboundRouteError` unless every route is bound to a fitting action.

    Covers every route of ``app`` and of its sub-applications, including
    static routes and any ``HEAD``/``OPTIONS`` route added behind one's back
    (a route added any other way than through a bind has no binding).
    """
    allowed = CHANNEL_CLASSES.get(channel)
    if allowed is None:
        raise UnboundRouteError(f"unknown channel {channel!r}")
    problems: list[str] = []
    for route, binding in route_bindings(app):
        where = f"{route.method} {route.resource.canonical if route.resource else '?'}"
        if binding is None:
            problems.append(f"{where}: no action bound (register it with authz.bind)")
            continue
        spec = catalogue.get(binding.action)
        if spec is None:
            problems.append(f"{where}: action {binding.action!r} is not in the catalogue")
        elif spec.authority not in allowed:
            problems.append(
                f"{where}: action {binding.action!r} is {spec.authority.value}-class, "
                f"which has no route on the {channel} channel"
            )
    if problems:
        raise UnboundRouteError("; ".join(problems))


class _HasCatalogue(Protocol):
    @property
    def catalogue(self) -> dict[str, ActionSpec]: ...


class _Engine(Protocol):
    @property
    def current(self) -> _HasCatalogue | None: ...


def startup_check(*, engine: _Engine, channel: str) -> Callable[[web.Application], Awaitable[None]]:
    """An ``app.on_startup`` hook running :func:`check_routes` with the live catalogue."""

    async def _check(app: web.Application) -> None:
        current = engine.current
        if current is None:
            raise UnboundRouteError("no valid policy is loaded: cannot check the routes")
        check_routes(app, current.catalogue, channel=channel)

    return _check


# --- raw paths ----------------------------------------------------------------

MAX_RAW_PATH = 2048
# Percent-encodings of characters that change how a path splits or climbs:
# '/', '\', '.', NUL and '%' itself (double encoding).
_BAD_ESCAPE = re.compile(r"%(2f|5c|2e|00|25)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unsafe_raw_path_reason(raw_path: str) -> str | None:
    """Why a raw request target's path is refused, or None if it is acceptable.

    Pure: looks only at what was received (before any decoding/normalising).
    Refused: not starting with '/', over :data:`MAX_RAW_PATH`, control
    characters or NUL, backslashes, encoded '/', '\\', '.', NUL or '%',
    empty segments ('//') and '.'/'..' segments.
    """
    path = raw_path.split("?", 1)[0]
    if len(raw_path) > MAX_RAW_PATH:
        return f"request target longer than {MAX_RAW_PATH} bytes"
    if not path.startswith("/"):
        return "request path must start with '/'"
    if _CONTROL.search(raw_path):
        return "control characters in the request target"
    if "\\" in path:
        return "backslash in the request path"
    if _BAD_ESCAPE.search(path):
        return "encoded '/', '\\', '.', NUL or '%' in the request path"
    segments = path[1:].split("/")
    for i, segment in enumerate(segments):
        if segment in {".", ".."}:
            return "'.' or '..' segment in the request path"
        if segment == "" and i != len(segments) - 1:
            return "empty segment ('//') in the request path"
    return None


def check_raw_path(raw_path: str) -> None:
    """Raise :class:`BadRequest` for a raw path :func:`unsafe_raw_path_reason` refuses."""
    reason = unsafe_raw_path_reason(raw_path)
    if reason is not None:
        raise BadRequest(reason)


# --- responses ------------------------------------------------------------------


def json_error(
    status: int, code: str, reason: str, *, request_id: str | None = None
) -> web.Response:
    """A JSON error response ``{"error", "reason"[, "request_id"]}``."""
    body: dict[str, object] = {"error": code, "reason": reason}
    if request_id is not None:
        body["request_id"] = request_id
    return web.json_response(body, status=status)


def _hive_error_response(error: HiveError, request_id: str | None) -> web.Response:
    status = error.status if 400 <= error.status < 600 else 500
    return json_error(status, error.code, error.reason, request_id=request_id)


# --- decisions -------------------------------------------------------------------


# Unique request ids: a random per-process prefix and a 32-bit counter, 16 hex
# digits in all, with no syscall per id. Formatting the counter per request
# (an f-string with a format spec) was a measurable part of a request's cost
# (bench/agent_socket.py), so only its last two digits are looked up per id;
# the rest (the prefix and the counter's upper six digits) is formatted once
# every 256 ids.
_HEX2 = tuple(f"{i:02x}" for i in range(256))
_id_prefix = secrets.token_hex(4)
_id_counter = itertools.count()
_id_head = ""  # _id_prefix and the counter's upper six hex digits; set at each 256th id


def _next_id_head(n: int) -> str:
    global _id_head
    _id_head = f"{_id_prefix}{(n >> 8) & 0xFFFFFF:06x}"
    return _id_head


def new_request_id() -> str:
    """A fresh request id: the process's prefix and its counter, 16 hex digits.

    The enforcer's hot path computes the same inline.
    """
    n = next(_id_counter)
    low = n & 0xFF
    return (_id_head if low else _next_id_head(n)) + _HEX2[low]


def _reseed_request_ids() -> None:
    # A forked worker (the gateway's supervisor forks) must not count on from
    # its parent's prefix: two workers would hand out the same ids. The counter
    # restarts at 0, so the child's first id formats a new head.
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(4), itertools.count()


os.register_at_fork(after_in_child=_reseed_request_ids)
_ACCEPTED_PATHS_LIMIT = 4096
_VERDICTS_LIMIT = 4096


class _LiveEngine(Decider, Protocol):
    """What the enforcer needs: the live policy (swapped whole on reload) and decide()."""

    @property
    def current(self) -> Policy | None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """One (principal, resource, action)'s decision under one policy version, and its log line.

    ``decision`` is what to act on; ``line`` writes it to the decision log.
    """

    policy: Policy | None
    decision: Decision
    line: DecisionLine


class Enforcer:
    """The one authorisation point of a daemon (one channel); default deny.

    :meth:`bind` registers a route whose handler runs only through
    :meth:`_run`, which, per request and in this order, computes the principal
    from the transport (``principal_of``, which may return the principal or an
    awaitable of it and may raise a :class:`HiveError`, e.g. a peer-credential
    refusal), checks the raw path as received, computes the route's resource,
    asks the live policy, logs exactly one decision event (or refuses with 503
    when the log cannot be written) and answers 403 on deny. :meth:`install`
    (after the last :meth:`bind`) adds the fallback that answers every request
    no bound route matches with a JSON 404/405 after the same admission
    checks, and the start-up check (:func:`check_routes`): a route not
    registered through :meth:`bind` makes the daemon refuse to start.

    Enforcement sits on the routes rather than in an aiohttp middleware
    because a middleware costs every request two extra coroutine layers (its
    own and aiohttp's ``_fix_request_current_app``), which on the agent
    sockets was more than the whole decision (``bench/agent_socket.py``).
    Every error of a bound handler is answered here too (:func:`_error_response`).

    ``guard``, when given, runs first of all (a daemon's own routing check; a
    :class:`HiveError` it raises is answered like any other refusal).
    ``expect_handler``, when given, replaces aiohttp's answer to an ``Expect``
    header on every route (aiohttp's sends ``100 Continue`` before anything
    is authorised).
    """

    def __init__(
        self,
        *,
        engine: _LiveEngine,
        channel: str,
        principal_of: Callable[[web.Request], str | Awaitable[str]],
        path_check: Callable[[str], None] = check_raw_path,
        on_decision: DecisionSink | None = None,
        guard: Callable[[web.Request], None] | None = None,
        expect_handler: ExpectHandler | None = None,
    ) -> None:
        if channel not in CHANNEL_CLASSES:
            raise UnboundRouteError(f"unknown channel {channel!r}")
        self._engine = engine
        self.channel = channel
        self._principal_of = principal_of
        self._path_check = path_check
        self._on_decision = on_decision
        self._guard = guard
        # aiohttp answers "Expect: 100-continue" on its own, before any route
        # handler (and so before this enforcer); a daemon may defer it.
        self._expect_handler = expect_handler
        # Raw paths already found acceptable (a pure check): bounded, restarted when full.
        self._accepted: set[str] = set()
        # (principal, resource, action) -> verdict, valid while its policy is live.
        self._verdicts: dict[tuple[str, str, str], Verdict] = {}
        # (principal, binding, raw target) -> verdict, for bindings whose resource
        # follows from the path: the resource function is skipped on a repeat.
        self._by_target: dict[tuple[str, RouteBinding, str], Verdict] = {}
        self._fallbacks: set[web.AbstractResource] = set()

    # --- wiring ---------------------------------------------------------------

    def bind(
        self,
        app: web.Application,
        method: str,
        path: str,
        handler: Handler,
        *,
        action: str,
        resource: Callable[[web.Request], str | Awaitable[str]] | str,
        name: str | None = None,
    ) -> web.AbstractRoute:
        """Register ``method path -> handler``, enforced, bound to one catalogue ``action``.

        ``resource`` is a constant or a function of the request (``match_info``,
        :data:`PRINCIPAL`) that returns the policy resource - or an awaitable of
        it, when the resource is named in the body (``agent.register``); it may
        raise a :class:`HiveError` (e.g. :class:`BadRequest` for a bad
        parameter). No ``HEAD`` route is added implicitly.
        """
        from_path = isinstance(resource, str | PathResource)
        binding = RouteBinding(action, _resource_fn(resource), from_path)
        enforced = functools.partial(self._run, handler, binding)
        route = app.router.add_route(
            method, path, enforced, name=name, expect_handler=self._expect_handler
        )
        _bindings(app)[route] = binding
        return route

    def install(self, app: web.Application) -> None:
        """After the last :meth:`bind`: the default-deny fallback and the start-up check."""
        route = app.router.add_route(
            "*", "/{_unmatched:.*}", self._unmatched, expect_handler=self._expect_handler
        )
        _bindings(app)[route] = _FALLBACK
        if route.resource is not None:
            self._fallbacks.add(route.resource)
        app.on_startup.append(startup_check(engine=self._engine, channel=self.channel))
        app.on_startup.append(self._check_enforced)

    def enforces(self, route: web.AbstractRoute) -> bool:
        """Whether ``route``'s handler is reached only through this enforcer."""
        handler = route.handler
        return isinstance(handler, functools.partial) and handler.func == self._run

    async def _check_enforced(self, app: web.Application) -> None:
        # A binding put into ROUTE_BINDINGS by hand (or by another enforcer's
        # table) would pass check_routes while nothing here enforces it.
        loose = [
            f"{route.method} {route.resource.canonical if route.resource else '?'}"
            for route, _binding in route_bindings(app)
            if not self.enforces(route)
        ]
        if loose:
            raise UnboundRouteError(
                "; ".join(
                    f"{where}: bound but not enforced (bind it with Enforcer.bind)"
                    for where in loose
                )
            )

    # --- per request ------------------------------------------------------------

    def _admit(self, request: web.Request, raw_path: str) -> str | Awaitable[str]:
        """Guard, principal, raw path: the checks every request passes before routing matters.

        ``raw_path``: ``request.raw_path``, read once by the caller, which needs it too.
        """
        if self._guard is not None:
            self._guard(request)
        found = self._principal_of(request)
        if raw_path not in self._accepted:
            self._accept(raw_path)
        return found

    def _accept(self, raw_path: str) -> None:
        """Check a raw path not seen before; remember it (a pure check) when acceptable."""
        self._path_check(raw_path)
        if len(self._accepted) >= _ACCEPTED_PATHS_LIMIT:
            self._accepted.clear()
        self._accepted.add(raw_path)

    def _refused(self, error: HiveError, request_id: str) -> web.Response:
        return _refusal(self.channel, error, request_id)

    def _verdict(
        self, policy: Policy | None, principal: str, resource: str, action: str
    ) -> Verdict:
        """``policy``'s (the live one, just read) decision and its rendered log line, cached."""
        verdict = self._verdicts.get((principal, resource, action))
        if verdict is not None and verdict.policy is policy:
            return verdict
        access = AccessRequest(principal, self.channel, resource, action)
        # Decide with the very version just read, so the verdict is cached under
        # the policy that made it even if a reload swaps the engine's meanwhile.
        decision = (
            policy.index.decide(access) if policy is not None else self._engine.decide(access)
        )
        verdict = Verdict(policy, decision, DecisionLine(decision_event(access, decision), _LOGGER))
        if len(self._verdicts) >= _VERDICTS_LIMIT:
            self._verdicts.clear()
        self._verdicts[(principal, resource, action)] = verdict
        return verdict

    def decide(self, principal: str, resource: str, action: str) -> Verdict:
        """The verdict on (principal, this channel, resource, action) under the live policy.

        Not logged yet: for a caller that answers a request without a route of
        its own (the gateway's front door, :mod:`enforcer.frontdoor`), which
        acts on it only after :meth:`log` wrote it, as the enforcer does.
        """
        return self._verdict(self._engine.current, principal, resource, action)

    def log(self, verdict: Verdict, request_id: str) -> None:
        """Write ``verdict``'s decision line (and sink entry) for ``request_id`` now.

        :class:`OSError` when the line cannot be written: the caller must then
        not act on it (every decision is logged or not made).
        """
        verdict.line.write_hex(request_id)
        if self._on_decision is not None:
            self._on_decision((verdict.line.event, request_id))

    async def _run(
        self, handler: Handler, binding: RouteBinding, request: web.Request
    ) -> web.StreamResponse:
        # The hot path of every request: a verdict is remembered per (principal,
        # route, raw target) where the resource follows from the path, so a repeat
        # skips the resource function and the policy (bench/agent_socket.py).
        # new_request_id, inlined.
        n = next(_id_counter)
        low = n & 0xFF
        request_id = (_id_head if low else _next_id_head(n)) + _HEX2[low]
        request[REQUEST_ID] = request_id
        try:
            try:
                # One copy of the admission checks for every request (an inlined
                # copy here saved nothing measurable, twice, and could drift).
                raw_path = request.raw_path
                found = self._admit(request, raw_path)
                principal = found if isinstance(found, str) else await found
            except HiveError as e:
                return self._refused(e, request_id)
            request[PRINCIPAL] = principal
            policy = self._engine.current
            verdict = (
                self._by_target.get((principal, binding, raw_path)) if binding.from_path else None
            )
            if verdict is None or verdict.policy is not policy:
                try:
                    computed = binding.resource(request)
                    resource = computed if isinstance(computed, str) else await computed
                except HiveError as e:
                    return _hive_error_response(e, request_id)
                verdict = self._verdict(policy, principal, resource, binding.action)
                if binding.from_path:
                    if len(self._by_target) >= _VERDICTS_LIMIT:
                        self._by_target.clear()
                    self._by_target[(principal, binding, raw_path)] = verdict
            try:
                verdict.line.write_hex(request_id)
            except OSError as e:
                # Every decision is logged or not made: with the log's disk full,
                # the request is refused (503) before any handler runs.
                reason = f"the decision log cannot be written: {e.strerror or e}"
                return _hive_error_response(Unavailable(reason), request_id)
            if self._on_decision is not None:
                self._on_decision((verdict.line.event, request_id))
            decision = verdict.decision
            if not decision.allowed:
                return json_error(403, "forbidden", decision.reason, request_id=request_id)
            request[DECISION] = decision
            return await handler(request)
        except Exception as e:  # HiveError, HTTP errors, crashes: a JSON answer
            return _error_response(request, e)

    async def _unmatched(self, request: web.Request) -> web.StreamResponse:
        """No bound route matches: the admission checks, then 404 or 405; nothing else runs."""
        request_id = new_request_id()
        request[REQUEST_ID] = request_id
        try:
            found = self._admit(request, request.raw_path)
            request[PRINCIPAL] = found if isinstance(found, str) else await found
        except HiveError as e:
            return self._refused(e, request_id)
        # Which methods would another route of this path take (405 rather than 404)?
        allowed: set[str] = set()
        for resource in request.match_info.current_app.router.resources():
            if resource not in self._fallbacks:
                _match, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            resp = json_error(
                405, "method_not_allowed", "method not allowed", request_id=request_id
            )
            resp.headers["Allow"] = ",".join(sorted(allowed))
            return resp
        return json_error(404, NotFound.code, "no such route", request_id=request_id)


def _refusal(channel: str, error: HiveError, request_id: str) -> web.Response:
    """Log a refusal made before any policy decision (``request.refused``); its JSON answer."""
    with contextlib.suppress(OSError):  # refused either way, logged if the disk allows
        _log.info(
            "request.refused",
            logger=_LOGGER,
            channel=channel,
            reason=error.reason,
            status=error.status,
            request_id=request_id,
        )
    return _hive_error_response(error, request_id)


def refuse_unrouted(request: web.Request, channel: str) -> web.Response:
    """The answer to a request aiohttp's router cannot place at all; logged, JSON, 400.

    A request target that is not a path (``OPTIONS *``, ``CONNECT host:port``)
    matches no route, not even an enforcer's fallback (aiohttp patterns start
    with ``/``), so no enforcer sees it: aiohttp would answer a plain-text 404
    that no log line records. A daemon with a middleware calls this instead
    when ``request.match_info`` is aiohttp's own "no match" (its
    ``http_exception`` set).
    """
    return refuse_before_routing(request, channel, BadRequest("the request target must be a path"))


ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
_CONTINUED: web.RequestKey[bool] = web.RequestKey("continued", bool)


def _expects_continue(request: web.Request) -> bool:
    return request.headers.get("Expect", "").strip().lower() == "100-continue"


async def send_100_continue(request: web.Request) -> None:
    """Send ``100 Continue`` if the client waits for it (HTTP/1.1), once per request."""
    if (
        request.version == HttpVersion11
        and _expects_continue(request)
        and not request.get(_CONTINUED, False)
    ):
        request[_CONTINUED] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer itself has not started (as aiohttp does)


def expect_handler(*, channel: str, send_continue: bool) -> ExpectHandler:
    """An answer to ``Expect`` for :class:`Enforcer` (``expect_handler=``), in place of aiohttp's.

    ``100-continue``: ``100 Continue`` at once with ``send_continue`` (where
    the transport already authenticated the client: an agent's socket), or
    nothing (the gateway sends it once the request is authorised). Any other
    expectation: a logged JSON 417, not aiohttp's plain-text page echoing it.
    """

    async def handle(request: web.Request) -> web.StreamResponse | None:
        if _expects_continue(request):
            if send_continue:
                await send_100_continue(request)
            return None
        error = BadRequest("the only expectation met here is 100-continue")
        error.status, error.code = 417, "expectation_failed"
        return refuse_before_routing(request, channel, error)

    return handle


def refuse_before_routing(request: web.BaseRequest, channel: str, error: HiveError) -> web.Response:
    """Refuse ``request`` with ``error`` before any route or enforcer saw it; logged, JSON.

    It gets a request id (also put on the request) and one ``request.refused``
    line, as the enforcer's own refusals do.
    """
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    return _refusal(channel, error, request_id)


def _error_response(request: web.Request, error: BaseException) -> web.StreamResponse:
    """The JSON answer for ``error`` raised by a handler (re-raised when not an error).

    Called from an ``except`` block only."""
    if isinstance(error, HiveError):
        return _hive_error_response(error, request.get(REQUEST_ID))
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        request_id = request.get(REQUEST_ID)
        code = re.sub(r"[^a-z0-9]+", "_", (error.reason or "error").lower()).strip("_")
        text = error.text if error.text and not error.text.startswith(f"{error.status}:") else None
        resp = json_error(
            error.status, code or "error", text or error.reason or "error", request_id=request_id
        )
        if "Allow" in error.headers:
            resp.headers["Allow"] = error.headers["Allow"]
        return resp
    if isinstance(error, asyncio.CancelledError | ConnectionResetError):
        raise error
    request_id = request.get(REQUEST_ID)
    with contextlib.suppress(OSError):  # a full log disk must not turn this into a bare 500
        # called from an except block: the traceback is the one being handled
        _log.exception("handler.crashed", logger=_LOGGER, path=request.path, request_id=request_id)
    return json_error(500, "internal", "internal error", request_id=request_id)
