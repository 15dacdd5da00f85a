"""Route -> action binding, the default-deny authorisation middleware, decision logging.

Every route of every daemon is registered through :func:`bind` (or
:func:`bind_static`) with exactly one catalogue action and a function that
computes the resource from the request. :func:`check_routes` runs at start-up
(wire it with :func:`startup_check`) and refuses a daemon with a route that has
no binding, a binding to an unknown action, or an action whose authority class
does not belong on the daemon's channel (only ``agent-self`` on an agent
socket: operator actions have no route there by construction).

The one authorisation middleware (:func:`authorization_middleware`) computes
``(principal, channel, resource, action)`` in one place, asks the policy
engine, logs exactly one decision event per routed request and denies by
default: a request that matches no bound route never reaches a handler.
:func:`error_middleware` turns every error into a JSON body without a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import PrefixedSubAppResource

from enforcer.errors import BadRequest, HiveError, NotFound, Unavailable
from enforcer.log import log_decision
from enforcer.policy import AccessRequest, ActionSpec, AuthorityClass, Decision, decision_event

__all__ = [
    "CHANNEL_CLASSES",
    "DECISION",
    "PRINCIPAL",
    "REQUEST_ID",
    "ROUTE_BINDINGS",
    "Decider",
    "DecisionSink",
    "RouteBinding",
    "UnboundRouteError",
    "authorization_middleware",
    "bind",
    "bind_static",
    "binding_for",
    "check_raw_path",
    "check_routes",
    "decision_event",
    "error_middleware",
    "json_error",
    "startup_check",
    "unsafe_raw_path_reason",
]

# A lazy proxy, not a bound logger: it must follow configure_logging() even when
# that runs after this module is imported.
_log = structlog.get_logger()
_LOGGER = "enforcer.authz"


@dataclass(frozen=True, slots=True)
class RouteBinding:
    """The one catalogue action a route performs, and how to compute its resource."""

    action: str
    resource: Callable[[web.Request], str | Awaitable[str]]


ROUTE_BINDINGS: web.AppKey[dict[web.AbstractRoute, RouteBinding]] = web.AppKey(
    "route_bindings", dict
)
"""Per application: route object -> its binding (sub-applications keep their own)."""

PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)
"""The principal the middleware computed from the transport."""

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
    """What the middleware needs from :class:`enforcer.policy.PolicyEngine`."""

    def decide(self, req: AccessRequest) -> Decision:
        """Decide one request."""
        ...


DecisionSink = Callable[[dict[str, Any]], None]
"""Receives every decision event (the core keeps a ring of them for the audit view)."""


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


def bind(
    app: web.Application,
    method: str,
    path: str,
    handler: Handler,
    *,
    action: str,
    resource: Callable[[web.Request], str | Awaitable[str]] | str,
    name: str | None = None,
) -> web.AbstractRoute:
    """Register ``method path -> handler`` bound to one catalogue ``action``.

    ``resource`` is a constant or a function of the request (``match_info``,
    :data:`PRINCIPAL`) that returns the policy resource - or an awaitable of
    it, when the resource is named in the body (``agent.register``); it may
    raise a :class:`HiveError` (e.g. :class:`BadRequest` for a bad parameter).
    No ``HEAD`` route is added implicitly: bind it explicitly if wanted.
    """
    route = app.router.add_route(method, path, handler, name=name)
    _bindings(app)[route] = RouteBinding(action, _resource_fn(resource))
    return route


def bind_static(
    app: web.Application,
    prefix: str,
    directory: Path,
    *,
    action: str,
    resource: Callable[[web.Request], str | Awaitable[str]] | str,
    name: str | None = None,
) -> web.AbstractResource:
    """Serve ``directory`` under ``prefix`` (no listings, no symlinks), every route bound."""
    static = app.router.add_static(
        prefix, directory, name=name, show_index=False, follow_symlinks=False
    )
    fn = _resource_fn(resource)
    for route in static:
        _bindings(app)[route] = RouteBinding(action, fn)
    return static


def _walk_routes(
    app: web.Application,
) -> Iterator[tuple[web.Application, web.AbstractRoute]]:
    for resource in app.router.resources():
        if isinstance(resource, PrefixedSubAppResource):
            yield from _walk_routes(resource.get_info()["app"])
        else:
            for route in resource:
                yield app, route


def check_routes(
    app: web.Application, catalogue: Mapping[str, ActionSpec], *, channel: str
) -> None:
    """Raise :class:`UnboundRouteError` unless every route is bound to a fitting action.

    Covers every route of ``app`` and of its sub-applications, including
    static routes and any ``HEAD``/``OPTIONS`` route added behind one's back.
    """
    allowed = CHANNEL_CLASSES.get(channel)
    if allowed is None:
        raise UnboundRouteError(f"unknown channel {channel!r}")
    problems: list[str] = []
    for owner, route in _walk_routes(app):
        where = f"{route.method} {route.resource.canonical if route.resource else '?'}"
        binding = owner.get(ROUTE_BINDINGS, {}).get(route)
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


def binding_for(request: web.Request) -> RouteBinding | None:
    """The binding of the route that matched ``request`` (None: unmatched/unbound)."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return None
    route = match_info.route
    for app in reversed(match_info.apps):
        table = app.get(ROUTE_BINDINGS)
        if table is not None:
            binding = table.get(route)
            if binding is not None:
                return binding
    return None


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


def _request_ids() -> Callable[[], str]:
    """Unique request ids: a random per-process prefix and a counter (no syscall per id)."""
    prefix = secrets.token_hex(4)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter) & 0xFFFFFFFF:08x}"


_new_request_id = _request_ids()
_ACCEPTED_PATHS_LIMIT = 4096


def authorization_middleware(
    *,
    engine: Decider,
    channel: str,
    principal_of: Callable[[web.Request], str | Awaitable[str]],
    path_check: Callable[[str], None] = check_raw_path,
    on_decision: DecisionSink | None = None,
    guard: Callable[[web.Request], None] | None = None,
) -> Middleware:
    """The default-deny authorisation middleware for one daemon (one channel).

    Per request, in this order: the principal from the transport
    (``principal_of``, which may return the principal or an awaitable of it,
    may raise a :class:`HiveError`, e.g. a peer-credential refusal); the raw
    path check; the route's binding (none: 404, nothing runs); the resource;
    the engine's decision, logged once; 403 on deny.

    It is also the daemon's error middleware (see :func:`error_middleware`,
    whose handling it includes): one middleware layer per request, not two.
    ``guard``, when given, runs first of all (a daemon's own routing check; a
    :class:`HiveError` it raises is answered as the error middleware would).
    """
    # Raw paths already found acceptable (pure check): bounded, restarted when full.
    accepted: set[str] = set()

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = _new_request_id()
        request[REQUEST_ID] = request_id
        try:
            if guard is not None:
                guard(request)
            try:
                found = principal_of(request)
                principal = found if isinstance(found, str) else await found
                raw_path = request.raw_path
                if raw_path not in accepted:
                    path_check(raw_path)
                    if len(accepted) >= _ACCEPTED_PATHS_LIMIT:
                        accepted.clear()
                    accepted.add(raw_path)
            except HiveError as e:
                with contextlib.suppress(OSError):  # refused either way, logged if the disk allows
                    _log.info(
                        "request.refused",
                        logger=_LOGGER,
                        channel=channel,
                        reason=e.reason,
                        status=e.status,
                        request_id=request_id,
                    )
                return _hive_error_response(e, request_id)
            request[PRINCIPAL] = principal
            binding = binding_for(request)
            if binding is None:
                exc = request.match_info.http_exception
                if isinstance(exc, web.HTTPMethodNotAllowed):
                    resp = json_error(
                        405, "method_not_allowed", "method not allowed", request_id=request_id
                    )
                    resp.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
                    return resp
                return json_error(404, NotFound.code, "no such route", request_id=request_id)
            try:
                computed = binding.resource(request)
                resource = computed if isinstance(computed, str) else await computed
            except HiveError as e:
                return _hive_error_response(e, request_id)
            access = AccessRequest(principal, channel, resource, binding.action)
            decision = engine.decide(access)
            event = decision_event(access, decision, request_id)
            try:
                log_decision(event, _LOGGER)
            except OSError as e:
                # Every decision is logged or not made: with the log's disk full,
                # the request is refused (503) before any handler runs.
                reason = f"the decision log cannot be written: {e.strerror or e}"
                return _hive_error_response(Unavailable(reason), request_id)
            if on_decision is not None:
                on_decision(event)
            if not decision.allowed:
                return json_error(403, "forbidden", decision.reason, request_id=request_id)
            request[DECISION] = decision
            return await handler(request)
        except Exception as e:  # HiveError, HTTP errors, crashes: as error_middleware does
            return _error_response(request, e)

    return authorize


def _error_response(request: web.Request, error: BaseException) -> web.StreamResponse:
    """What :func:`error_middleware` answers for ``error`` (re-raised when not an error).

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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HiveError -> its status + JSON; HTTP errors -> JSON; anything else -> 500 JSON, logged."""
    try:
        return await handler(request)
    except Exception as e:
        return _error_response(request, e)
