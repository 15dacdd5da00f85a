"""The gateway: the operator's one origin, and the only way any UI is reached.

Routes (every one bound to a catalogue action through :mod:`enforcer.authz`,
channel ``gateway``; the principal is ``operator`` with a valid session cookie
- or, in one agent's space only, with a valid view capability for that agent -
else ``anonymous``):

=============================  =================  ===========================  ============
route                          action             resource                     goes to
=============================  =================  ===========================  ============
``GET /login``                 ``session.login``  ``session``                  login form
``POST /login``                ``session.login``  ``session``                  token -> session
``POST /logout``               ``session.logout`` ``session``                  end session
``GET /health``                ``health.read``    ``health``                   ``{"status": "ok"}``
``GET /static/<path>``         ``static.read``    ``static/<path>``            core, anonymous
``* /agent/<name>/@<cap>/<r>`` ``agent.ui.view``  ``agent:<name>/ui``          the agent's UI
``* /agent/<name>/<rest>``     ``agent.ui.view``  ``agent:<name>/ui``          the agent's UI
``GET /agent/<name>``          ``agent.ui.view``  ``agent:<name>/ui``          308 to ``.../``
``* /<anything else>``         ``dashboard.view`` ``ui``                       core, operator
=============================  =================  ===========================  ============

**How the catch-all to the core is authorised.** The gateway does not know the
core's route table, so it authorises coarsely and the core precisely: every
request for the core is bound here to ``dashboard.view`` on ``ui`` ("may this
principal use the operator surface at all"), which only the operator holds;
the core then decides the precise action (``question.answer``,
``container.stop``, ...) again for the principal ``operator`` that it learns
from the gateway's marker and peer uid. An anonymous request therefore never
reaches the core's operator API: pages get a redirect to ``/login``, ``/api/``
calls a 401. The only anonymous traffic to the core is ``/static/`` (public
``static.read``), sent without the operator marker.

**State-changing requests** (every method but GET/HEAD/OPTIONS) to the core, and logout,
also need the session's CSRF token (``X-CSRF-Token`` header, or a
``csrf_token`` field of a small ``application/x-www-form-urlencoded`` form,
which is buffered up to :data:`FORM_LIMIT` for that and forwarded as read;
multipart forms must use the header) and an ``Origin`` equal to
``config.gateway.origin`` - or, without ``Origin``, ``Sec-Fetch-Site:
same-origin``. ``Origin: null`` and any ``Sec-Fetch-Site`` other than
``same-origin`` are refused. A WebSocket to the core needs the right
``Origin`` too. The core learns the session's CSRF token from the
``X-Hive-CSRF-Token`` request header, to embed it in the forms it renders;
scripts can read it from the ``hive_csrf`` cookie.

**Paths.** Every request target is checked raw by :mod:`enforcer.paths` before
any route runs (no rewriting: what the gateway decides on is what the backend
receives), and a request whose raw path is in the agent space
(``/agent...``) must have matched an agent route, else 404 - it can never land
on a core route.

**Agent UIs in the operator's browser: view capabilities.** The per-agent
page embeds ``/agent/<name>/`` in ``<iframe sandbox="allow-scripts
allow-forms">`` and every agent response carries the sandbox CSP, so the
agent's document is an *opaque origin*. Its first navigation is made by the
same-origin parent and carries the session cookie (``SameSite=Strict``), but
everything the document then asks for itself - scripts, styles, images,
``fetch``, ``EventSource``, WebSockets, form posts, links - comes from that
opaque origin, and the browser sends no ``SameSite=Strict`` cookie with it.
So the cookie cannot be what lets an agent UI load its own assets. Instead:

- A top-level navigation (``Sec-Fetch-Dest: document``) into the agent
  space, with or without a capability, is answered ``303`` to the agent's
  framing page ``/agents/<name>``: agent content is never the whole page on
  the operator's origin (where it could pose as the login form).
- A browser navigation (``Sec-Fetch-Mode: navigate``, GET/HEAD) into
  ``/agent/<name>/...`` with the operator's session is answered ``303`` to
  ``/agent/<name>/@<cap>/...`` (``Cache-Control: no-store``), where ``<cap>``
  is the session's view capability for that agent
  (:meth:`enforcer.sessions.SessionStore.view_capability`: the session's
  view id and an HMAC-SHA256, under a subkey of the gateway's session key,
  over ``(agent.ui.view, view id, name)``). The core's page
  keeps ``src="/agent/<name>/"``: the capability never passes through the core.
- A request whose path has the ``@`` slot is decided by the capability
  alone (the cookie is ignored): valid for *this* name and a live session, it
  is principal ``operator`` for ``agent.ui.view`` on ``agent:<name>/ui`` - the
  only route such a path can match (the agent-space guard) and the only thing
  it can do; anything else (forged, malformed, another agent's, a session
  that ended by logout, expiry or a new login) is a ``403`` page,
  never a login redirect. The gateway strips ``@<cap>`` before proxying and
  sends ``X-Forwarded-Prefix: /agent/<name>/@<cap>``, so relative URLs and
  base-path URLs keep working; ``Cookie`` and ``Authorization`` are never
  forwarded, as for every agent request.
- Every method is allowed with a capability (GET/HEAD, the UI's own form
  posts and ``fetch`` calls, WebSockets). The CSRF rule protects the operator's
  authority, which lives in the core; a request in the agent space never
  reaches the core and carries no operator authority (no cookie, no
  principal header, nothing the agent could not send to itself).
- A capability response carries ``Access-Control-Allow-Origin: *`` (never
  ``-Allow-Credentials``), and the gateway answers CORS preflights in that
  space itself: the document's own ``fetch``/``EventSource`` to its own API
  are cross-origin requests from an opaque origin and are unreadable without
  it. This is the one exception to "no CORS anywhere"; it covers only content
  the agent itself serves, readable by whoever holds that agent's capability.

What the agent (or its page) gains by learning its capability - it sees it in
``X-Forwarded-Prefix`` and in its own ``location`` -: viewing *its own* UI
through the gateway while the operator's session lives, which it could
already show to anyone, and which its page could already send anywhere. It
does not open another agent's UI (the mac binds the name), any core route
(a path with the slot only matches the agent route; ``..`` and encoded
slashes are refused), the operator's session (the cookie stays ``HttpOnly``
and ``SameSite=Strict`` and is never forwarded; the capability is not the
session id and cannot be turned into it), or any state change (no operator
action is reachable in the agent space). Agents cannot reach the gateway from
their network namespaces at all. A capability dies with its session.

**Headers.** Every client-sent ``X-Hive-*``, ``X-Forwarded-*``, ``Forwarded``,
``X-Real-IP`` and hop-by-hop header is dropped; ``Cookie``, ``Authorization``
and ``X-CSRF-Token`` never leave the gateway. To the core the gateway adds
``X-Hive-Principal: operator`` (valid session only), ``X-Hive-Request-Id`` and
``X-Hive-CSRF-Token``. To an agent UI it adds ``X-Forwarded-Prefix``
(``/agent/<name>/@<cap>``, or ``/agent/<name>`` for a non-navigation request
made with the operator's cookie, such as an operator's script or tool),
``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Hive-Request-Id``; never
the principal.

**For agent UI authors.** Your UI is served at ``/`` of your UI port; the
operator sees it at ``/agent/<name>/@<cap>/`` (the gateway strips that
prefix, and tells you it in ``X-Forwarded-Prefix``; it changes with every
operator session). Use relative links (``app.js``, ``api/items``,
``events``), or prefix absolute ones with ``X-Forwarded-Prefix`` - an
absolute ``/agent/<name>/...`` without the capability is refused from inside
the sandbox. No top-level path of your UI may start with ``@``. Your pages
run sandboxed (``Content-Security-Policy: sandbox allow-scripts
allow-forms``, no ``allow-same-origin``): scripts, styles, images, forms,
``fetch`` and ``EventSource`` to your own space work (your responses get
``Access-Control-Allow-Origin: *``; do not send credentials), cookies and
storage do not (``Set-Cookie`` is dropped), and you never see the operator's
cookies or credentials. Serve scripts and styles with their real
``Content-Type`` (``nosniff``). WebSockets and server-sent events work; send
something at least every ``idle_timeout`` seconds (default 30) or the stream
is closed.

**Policy.** The gateway's workers decide with the core's live policy
version: each follows the revision the core publishes after its start and
every reload (:mod:`enforcer.policy.follow`).

**Errors.** Unknown agent 404, agent UI down 502, agent or core too slow 504,
core down 503: a small HTML page (JSON for ``/api/``), no internals. No CORS
headers anywhere but the capability space above: every ``Access-Control-*``
header from a backend is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import functools
import html
import json
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from enforcer import authz, paths, proxy, serving, supervisor
from enforcer.config import ConfigError, HiveConfig, load_config, parse_listen
from enforcer.corelink import CoreLink, RelayFailed, open_link
from enforcer.errors import BadRequest, Forbidden, HiveError, NotFound, Unavailable
from enforcer.frontdoor import TAKEN, FrontDoor, Lane, Taken
from enforcer.log import configure_logging, get_logger
from enforcer.policy import PolicyEngine
from enforcer.policy.follow import follow
from enforcer.sessions import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    OperatorToken,
    Session,
    SessionKeyError,
    SessionStore,
    TokenFileError,
    cookie_name,
    load_or_create_token,
    origin_allowed,
    session_dir,
    tokens_equal,
)
from enforcer.upstream import (
    Upstream,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    serialize_request_head,
)

__all__ = [
    "AGENT_CSP",
    "CONFIG",
    "ENGINE",
    "FORM_LIMIT",
    "SESSIONS",
    "SHUTDOWN_SECONDS",
    "AgentRedirectRefused",
    "AgentRegistry",
    "add_arguments",
    "create_app",
    "make_runner",
    "run",
    "serve_worker",
]

_log = get_logger("enforcer.gateway")
_T = TypeVar("_T")

AGENT_CSP = "sandbox allow-scripts allow-forms; frame-ancestors 'self'"
"""Every response in the agent space carries this: no ``allow-same-origin``."""

FORM_LIMIT = 64 * 1024
"""Largest urlencoded form body the gateway reads to find its CSRF token."""

SHUTDOWN_SECONDS = 5.0
"""How long a stopping worker lets requests in flight finish before cancelling them."""

_OPERATOR_CSP_DEFAULT = "frame-ancestors 'self'; base-uri 'self'; form-action 'self'"
_GATEWAY_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)
# Methods the core may receive without the CSRF token. Every other method -
# POST/PUT/PATCH/DELETE and any extension method (PROPFIND, LOCK, ...) - needs
# it: the list says what is safe, so an unforeseen method is guarded.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Response headers an agent may not set on the operator's origin.
_AGENT_RESPONSE_DROP = frozenset(
    {
        "set-cookie",
        "set-cookie2",
        "clear-site-data",
        "strict-transport-security",
        "service-worker-allowed",
        "content-security-policy",
        "content-security-policy-report-only",
        "x-frame-options",
        "public-key-pins",
        "public-key-pins-report-only",
        "expect-ct",
        # Alt-Svc points the browser's later requests for the whole origin
        # (the operator's included) at another endpoint; Origin-Agent-Cluster
        # changes how the whole origin is isolated.
        "alt-svc",
        "origin-agent-cluster",
        # A redirect by another name, which no Location check would see.
        "refresh",
        # Origin-wide reporting (Network Error Logging): a policy for every
        # request to the origin, the operator's pages and other agents'
        # capability URLs included, reported to the agent's collector.
        "nel",
        "report-to",
        "reporting-endpoints",
        # Client-hint preferences and the login status are kept per origin too.
        "accept-ch",
        "critical-ch",
        "set-login",
    }
)
# Request headers that never leave the gateway.
_PRIVATE_REQUEST = ("cookie", "authorization", CSRF_HEADER.lower())

CONFIG: web.AppKey[HiveConfig] = web.AppKey("gateway_config", HiveConfig)
ENGINE: web.AppKey[PolicyEngine] = web.AppKey("gateway_engine", PolicyEngine)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("gateway_sessions", SessionStore)
_TOKEN: web.AppKey[OperatorToken] = web.AppKey("gateway_token", OperatorToken)
_CORE: web.AppKey[aiohttp.ClientSession] = web.AppKey("gateway_core", aiohttp.ClientSession)
_AGENTS: web.AppKey[aiohttp.ClientSession] = web.AppKey("gateway_agents", aiohttp.ClientSession)
# Plain HTTP to the core (the hot path and the registry's lookups) goes through
# the lean client; the aiohttp session above carries the core's WebSockets only.
_CORE_HTTP: web.AppKey[Upstream] = web.AppKey("gateway_core_http", Upstream)
_REGISTRY: web.AppKey[AgentRegistry] = web.AppKey("gateway_registry")

_SESSION: web.RequestKey[Session] = web.RequestKey("gateway_session", Session)
_SESSION_ID: web.RequestKey[str] = web.RequestKey("gateway_session_id", str)

# Set when a valid view capability (not the cookie) made this request the operator's.
_VIEW: web.RequestKey[bool] = web.RequestKey("gateway_view", bool)
_VIEW_REFUSED: web.RequestKey[bool] = web.RequestKey("gateway_view_refused", bool)
# A CORS preflight the gateway answered in a capability space: the headers it allows.
_PREFLIGHT: web.RequestKey[str] = web.RequestKey("gateway_preflight", str)
_PREFLIGHT_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
_HEADER_LIST = re.compile(
    r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*"
)

_AGENT_ROUTES = frozenset({"agent-ui", "agent-ui-slash"})
# Marks a page the gateway rendered itself (the login form after a wrong token):
# the pages middleware passes it through instead of replacing it by an error page.
_OWN_PAGE: web.ResponseKey[bool] = web.ResponseKey("gateway_own_page", bool)


# --- pages --------------------------------------------------------------------

_TITLES = {
    400: "Bad request",
    401: "Log in first",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    414: "Address too long",
    502: "The agent's web UI is not answering",
    503: "Unavailable",
    504: "Timed out",
}
# 5xx reasons are fixed words: nothing from inside ever reaches the client.
_SERVER_REASONS = {
    502: "The upstream did not answer properly. Try again in a moment.",
    503: "This is not available right now (the gateway's log says why). Try again in a moment.",
    504: "The upstream took too long to answer.",
}


def _page(title: str, body_html: str, *, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} - hive-boundary</title>"
        "<meta name=viewport content='width=device-width'>"
        "<style>body{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;color:#222}input,button{font:inherit;padding:.4rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )
    response = web.Response(text=text, status=status, content_type="text/html")
    response.headers["Content-Security-Policy"] = _GATEWAY_PAGE_CSP
    response[_OWN_PAGE] = True
    return response


def _error_page(status: int, reason: str) -> web.Response:
    title = _TITLES.get(status, "Error")
    shown = _SERVER_REASONS.get(status, "Something went wrong.") if status >= 500 else reason
    return _page(title, f"<p>{html.escape(shown)}</p><p><a href='/'>Home</a></p>", status=status)


def _json_error(status: int, code: str, reason: str, request: web.Request) -> web.Response:
    return _json_error_for(status, code, reason, request.get(authz.REQUEST_ID))


def _json_error_for(status: int, code: str, reason: str, request_id: str | None) -> web.Response:
    # A 5xx says only the gateway's fixed words: nothing from inside reaches the client.
    if status >= 500:
        reason = _SERVER_REASONS.get(status, "internal error")
    return authz.json_error(status, code, reason, request_id=request_id)


def _wants_json(request: web.Request) -> bool:
    raw = request.raw_path
    if paths.in_agent_space(raw):
        return False
    return raw == "/api" or raw.startswith(("/api/", "/api?"))


def _login_form(next_target: str, message: str = "") -> str:
    note = f"<p role=alert>{html.escape(message)}</p>" if message else ""
    return (
        f"{note}<form method=post action='/login'>"
        "<label>Operator token<br><input type=password name=token autocomplete=off "
        "required autofocus size=40></label>"
        f"<input type=hidden name=next value='{html.escape(next_target, quote=True)}'>"
        "<p><button type=submit>Log in</button></p></form>"
        "<p>The token is in <code>gateway/operator-token</code> under the state "
        "directory (by default <code>/var/lib/hive</code>).</p>"
    )


def _safe_next(value: str | None) -> str:
    """A same-origin path to go to after login (never another host, never agent space).

    A target in the agent space becomes that agent's own page (the trusted
    chrome that frames its UI): agent content is never a top-level document.
    """
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    try:
        target = paths.parse_target(value)
    except HiveError:
        return "/"
    if paths.in_agent_space(value):
        agent = paths.agent_target(target)
        return _chrome_page(agent.name) if agent is not None and agent.name else "/"
    return str(target)


def _chrome_page(name: str) -> str:
    """The core's page for agent ``name``: its status and controls, its UI framed and sandboxed."""
    return f"/agents/{name}"


# --- the agent registry -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    base: URL
    expires_at: float


class AgentRegistry:
    """Agent UI addresses from the core (``GET /api/agents/<name>``), cached briefly.

    Asked over the same lean client as every other plain request to the core.
    """

    def __init__(self, config: HiveConfig, core: Upstream, ttl: float = 2.0) -> None:
        self._config = config
        self._core = core
        self._ttl = ttl
        self._cache: dict[str, _Entry] = {}

    async def ui_base(self, name: str, request_id: str) -> URL:
        """The agent's UI base URL; :class:`NotFound` for an unknown agent."""
        entry = self._cache.get(name)
        now = time.monotonic()
        if entry is not None and entry.expires_at > now:
            return entry.base
        base = await self._lookup(name, request_id)
        self._cache[name] = _Entry(base, now + self._ttl)
        return base

    def forget(self, name: str) -> None:
        """Drop a cached address (after the UI failed: it may have moved)."""
        self._cache.pop(name, None)

    async def _lookup(self, name: str, request_id: str) -> URL:
        headers = CIMultiDict(
            {
                "Host": _authority(self._config),
                "X-Hive-Principal": "operator",
                "X-Hive-Request-Id": request_id,
                "Accept": "application/json",
            }
        )
        target = f"/api/agents/{quote(name, safe='')}"
        try:
            answer = await self._core.request("GET", target, headers)
        except proxy.UpstreamTimeout as e:
            raise proxy.UpstreamTimeout("the core did not answer in time") from e
        except proxy.UpstreamError as e:
            raise Unavailable("the core is unreachable") from e
        try:
            # The whole (small) answer is read, so the connection can be kept.
            raw = await _read_bounded(answer.content, _LOOKUP_LIMIT)
        except TimeoutError as e:
            raise proxy.UpstreamTimeout("the core did not answer in time") from e
        except (aiohttp.ClientError, ValueError) as e:
            raise Unavailable("the core could not say where this agent is") from e
        finally:
            answer.release()
        if answer.status == 404:
            raise NotFound(f"no agent named {name!r}")
        if answer.status != 200:
            raise Unavailable("the core could not say where this agent is")
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise Unavailable("the core could not say where this agent is") from e
        record = data.get("agent", data) if isinstance(data, dict) else None
        ui_url = record.get("ui_url") if isinstance(record, dict) else None
        if not isinstance(ui_url, str):
            raise proxy.UpstreamUnreachable(f"agent {name!r} has no web UI right now")
        return _check_ui_url(name, ui_url)


# An agent record is a few hundred bytes; anything far larger is not one.
_LOOKUP_LIMIT = 256 * 1024


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A body read to its end; :class:`ValueError` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"an answer over {limit} bytes")
    return b"".join(chunks)


def _check_ui_url(name: str, raw: str) -> URL:
    try:
        url = URL(raw)
    except ValueError as e:
        raise proxy.UpstreamError(f"agent {name!r} has no usable UI address") from e
    if (
        url.scheme not in {"http", "https"}
        or not url.host
        or url.path not in {"", "/"}
        or url.query_string
        or url.fragment
        or url.user
        or url.password
    ):
        raise proxy.UpstreamError(f"agent {name!r} has no usable UI address")
    return url.with_path("/")


# --- principal, guards, headers -----------------------------------------------


def _authority(config: HiveConfig) -> str:
    return _authority_of(config.gateway.origin)


@functools.lru_cache(maxsize=8)
def _authority_of(origin: str) -> str:
    # Asked on every proxied request: parse the configured origin once.
    return URL(origin).raw_authority


def _tls(config: HiveConfig) -> bool:
    return config.gateway.tls_cert is not None and config.gateway.tls_key is not None


class _ViewRefused(Forbidden):
    """A view-capability path whose capability does not open this agent's UI."""

    code = "bad_view_capability"


def _view_principal(request: web.Request) -> str | None:
    """The principal a view-capability path gives, or None when the path has no slot."""
    raw = request.raw_path
    if not raw.startswith("/agent/") or "/@" not in raw:
        return None
    agent = paths.agent_target(paths.parse_target(raw))
    if agent is None or agent.view is None:
        return None
    route = request.match_info.route
    if (
        route is not None
        and route.name == "agent-ui"
        and agent.name
        and request.app[SESSIONS].view_session(agent.view, agent.name) is not None
    ):
        request[_VIEW] = True
        return "operator"
    request[_VIEW_REFUSED] = True
    raise _ViewRefused(
        "this view of the agent's UI is not valid: it lives only as long as your session, "
        "for one agent; reload the agent's page"
    )


def _cookie(request: web.Request, name: str) -> str | None:
    """The value of cookie ``name`` (the last one given, as ``request.cookies`` has it).

    A plain scan of the ``Cookie`` header: the full cookie parser costs more
    than the session check, and the session check refuses anything odd.
    """
    return _cookie_in(request.headers.get("Cookie"), name)


def _principal_of(request: web.Request) -> str:
    app = request.app
    # In an agent's space the capability alone decides (the cookie is ignored).
    view = _view_principal(request)
    if view is not None:
        return view
    session_id = _cookie(request, cookie_name(_tls(app[CONFIG])))
    session = app[SESSIONS].get(session_id)
    if session is None or session_id is None:
        return "anonymous"
    request[_SESSION] = session
    request[_SESSION_ID] = session_id
    return "operator"


@web.middleware
async def _pages_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: turn gateway-made errors into pages (or API JSON); anonymous -> login."""
    try:
        response = await handler(request)
    except web.HTTPException:
        if request.match_info.http_exception is None:
            raise
        # No route at all, not even the enforcer's fallback: a target that is
        # not a path ("OPTIONS *", "CONNECT host:port"). Refused, and logged.
        response = authz.refuse_unrouted(request, "gateway")
    if response.prepared or response.status < 400 or response.get(_OWN_PAGE, False):
        return response
    anonymous = request.get(authz.PRINCIPAL, "anonymous") == "anonymous"
    if (
        response.status == 403
        and anonymous
        and request.get(authz.DECISION) is None
        and not request.get(_VIEW_REFUSED, False)
    ):
        return _unauthenticated(request)
    if _wants_json(request):
        if response.status >= 500:
            return _json_error(response.status, "unavailable", "", request)
        return response
    reason = ""
    if isinstance(response, web.Response) and response.content_type == "application/json":
        try:
            body = json.loads(response.body if isinstance(response.body, bytes) else b"{}")
            reason = str(body.get("reason", ""))
        except ValueError:
            reason = ""
    page = _error_page(response.status, reason)
    if "Allow" in response.headers:
        page.headers["Allow"] = response.headers["Allow"]
    return page


def _unauthenticated(request: web.Request) -> web.Response:
    if _wants_json(request):
        return _json_error(401, "unauthorized", "log in at /login first", request)
    if request.method in {"GET", "HEAD"}:
        try:
            target = str(paths.parse_target(request.raw_path))
        except HiveError:
            target = "/"
        raise web.HTTPSeeOther(f"/login?next={quote(target, safe='')}")
    return _page("Log in first", "<p><a href='/login'>Log in</a></p>", status=401)


def _space_guard(request: web.Request) -> None:
    """A raw path in the agent space must have matched an agent route, and only then.

    The raw target is checked first (authz checks it again): a refused path is
    a 400 whatever it would have matched. Run by the enforcer
    before anything else (its ``guard``), not as a middleware layer of its own.
    """
    paths.check_target(request.raw_path)
    route = request.match_info.route
    agent_route = route.name in _AGENT_ROUTES if route is not None else False
    if paths.in_agent_space(request.raw_path) != agent_route:
        raise NotFound("no such page")


# Set on every response, replacing whatever is there.
_ALWAYS = CIMultiDict({"Server": "hive-boundary", "X-Content-Type-Options": "nosniff"})


def _operator_defaults(*, tls: bool, static: bool) -> CIMultiDict[str]:
    """The headers an operator-space response gets unless it has its own (built once)."""
    defaults = CIMultiDict(
        {
            "Content-Security-Policy": _OPERATOR_CSP_DEFAULT,
            "X-Frame-Options": "SAMEORIGIN",
            "Referrer-Policy": "same-origin",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
        }
    )
    if not static:
        defaults["Cache-Control"] = "no-store"
    if tls:
        defaults["Strict-Transport-Security"] = "max-age=31536000"
    return defaults


# (tls, under /static/) -> the defaults: four fixed sets, merged in one call each.
_OPERATOR_DEFAULTS = {
    (tls, static): _operator_defaults(tls=tls, static=static)
    for tls in (False, True)
    for static in (False, True)
}


def _drop_names(headers: CIMultiDict[str], keep: Callable[[str], bool]) -> None:
    for name in [n for n in headers if not keep(n.lower())]:
        headers.popall(name, None)


def _no_cors(lower: str) -> bool:
    return not lower.startswith("access-control-")


def _not_agent_refused(lower: str) -> bool:
    return lower not in _AGENT_RESPONSE_DROP


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Last word on every response's headers, right before they are sent."""
    headers = response.headers
    # One C-level look over the names; the exact per-name check runs only when
    # some name contains the prefix at all (a proxied answer was filtered already).
    if "access-control-" in "\n".join(headers.keys()).lower():
        _drop_names(headers, _no_cors)
    # Not aiohttp's name and version (nor an agent UI's server): no internals.
    headers.update(_ALWAYS)
    request_id = request.get(authz.REQUEST_ID)
    if request_id:
        headers["X-Hive-Request-Id"] = request_id
    raw_path = request.raw_path
    if paths.in_agent_space(raw_path):
        _drop_names(headers, _not_agent_refused)
        headers["Content-Security-Policy"] = AGENT_CSP
        headers["Referrer-Policy"] = "no-referrer"
        if request.get(_VIEW, False):
            # The sandboxed document is an opaque origin: its own fetch/EventSource
            # are cross-origin. Its own content only, never with credentials.
            headers["Access-Control-Allow-Origin"] = "*"
            allowed = request.get(_PREFLIGHT)
            if allowed is not None:
                headers["Access-Control-Allow-Methods"] = _PREFLIGHT_METHODS
                if allowed:
                    headers["Access-Control-Allow-Headers"] = allowed
                headers["Access-Control-Max-Age"] = "600"
        return
    _operator_space_headers(headers, raw_path, tls=_tls(request.app[CONFIG]))


def _operator_space_headers(headers: CIMultiDict[str], raw_path: str, *, tls: bool) -> None:
    """The operator's pages' own headers (a response outside the agent space)."""
    csp = headers.get("Content-Security-Policy")
    if csp is not None and "frame-ancestors" not in csp:
        headers["Content-Security-Policy"] = f"{csp}; frame-ancestors 'self'"
    # Each default only where the response has none of its own (setdefault, all at once).
    headers.merge(_OPERATOR_DEFAULTS[tls, raw_path.startswith("/static/")])


# aiohttp's own would send "100 Continue" at once - inviting the body of a
# request the gateway is about to refuse; a handler about to read the body
# sends it (_continue), so only an authorised request is told to send it.
_expect = authz.expect_handler(channel="gateway", send_continue=False)
_continue = authz.send_100_continue


def _origin_ok(request: web.Request) -> bool:
    return origin_allowed(
        request.headers.get("Origin"),
        request.headers.get("Sec-Fetch-Site"),
        request.app[CONFIG].gateway.origin,
    )


async def _read_form(request: web.Request) -> bytes:
    """The form body, read until its end or past ``FORM_LIMIT`` (whichever comes first).

    One ``read`` returns only what has arrived so far: a form split across
    TCP segments would otherwise look cut short.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= FORM_LIMIT:
        chunk = await request.content.read(FORM_LIMIT + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _within_idle(request: web.Request, read: Awaitable[_T]) -> _T:
    """A small body the gateway reads itself (a form), within ``idle_timeout`` in all.

    A client that stops sending it has its connection closed, unanswered
    (:class:`proxy.BodyStalled`), as when a body streamed upstream stalls.
    """
    try:
        async with asyncio.timeout(request.app[CONFIG].gateway.idle_timeout):
            return await read
    except TimeoutError as e:
        if request.transport is not None:
            request.transport.close()
        raise proxy.BodyStalled("the request body stopped arriving") from e


async def _require_csrf(request: web.Request) -> bytes | None:
    """Session + same origin + CSRF token, or :class:`Forbidden`; returns a read form body."""
    session = request.get(_SESSION)
    if session is None:
        raise Forbidden("an operator session is required")
    if not _origin_ok(request):
        raise Forbidden("cross-origin request refused (Origin / Sec-Fetch-Site)")
    token = request.headers.get(CSRF_HEADER)
    body: bytes | None = None
    if token is None and request.content_type == "application/x-www-form-urlencoded":
        length = request.content_length
        if length is not None and length > FORM_LIMIT:
            raise BadRequest(f"form bodies over {FORM_LIMIT} bytes need the {CSRF_HEADER} header")
        await _continue(request)
        body = await _within_idle(request, _read_form(request))
        if len(body) > FORM_LIMIT or not request.content.at_eof():
            raise BadRequest(f"form bodies over {FORM_LIMIT} bytes need the {CSRF_HEADER} header")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError as e:
            raise BadRequest("the form is not UTF-8") from e
        values = fields.get(CSRF_FIELD, [])
        token = values[0] if len(values) == 1 else None
    if not session.csrf_ok(token):
        raise Forbidden("missing or wrong CSRF token")
    return body


def _core_headers(request: web.Request) -> CIMultiDict[str]:
    session = request.get(_SESSION)
    operator = session is not None and request.get(authz.PRINCIPAL) == "operator"
    return _core_headers_for(
        request.headers,
        request[authz.REQUEST_ID],
        session if operator else None,
        _authority(request.app[CONFIG]),
    )


def _core_headers_for(
    client: CIMultiDictProxy[str],
    request_id: str,
    operator: Session | None,
    authority: str,
) -> CIMultiDict[str]:
    """What the core gets: the client's headers filtered, then the gateway's own.

    ``operator``: the session of a request the gateway admitted as the operator's;
    ``authority``: the gateway's own (:func:`_authority`), as ``Host``.
    """
    headers = proxy.filter_request_headers(client, drop=_PRIVATE_REQUEST)
    headers["Host"] = authority
    headers["X-Hive-Request-Id"] = request_id
    if operator is not None:
        headers["X-Hive-Principal"] = "operator"
        headers["X-Hive-CSRF-Token"] = operator.csrf_token
    return headers


def _core_url(request: web.Request) -> URL:
    target = paths.parse_target(request.raw_path)
    return URL.build(
        scheme="http", host="core", path=target.path, query_string=target.query or "", encoded=True
    )


def _core_target(request: web.Request) -> str:
    """The checked request target as the core receives it (an empty query dropped)."""
    target = paths.parse_target(request.raw_path)
    return f"{target.path}?{target.query}" if target.query else target.path


# --- handlers -----------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _login_form_handler(request: web.Request) -> web.Response:
    next_target = _safe_next(request.query.get("next"))
    return _page("Log in", _login_form(next_target))


async def _login(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    if not _origin_ok(request):
        raise Forbidden("cross-origin login refused (Origin / Sec-Fetch-Site)")
    await _continue(request)
    try:
        form = await _within_idle(request, request.post())
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest("the login form could not be read (UTF-8 form fields expected)") from e
    token = form.get("token")
    next_target = _safe_next(str(form.get("next", "/")))
    try:
        # Re-read when the file changed: a replaced token counts from now on.
        expected = request.app[_TOKEN].current()
    except TokenFileError as e:
        _log.error("login.token_file", error=str(e), request_id=request.get(authz.REQUEST_ID))
        raise Unavailable("logging in is unavailable: see the gateway's log") from e
    if not isinstance(token, str) or not tokens_equal(token.strip(), expected):
        _log.info("login.failed", request_id=request.get(authz.REQUEST_ID))
        await asyncio.sleep(0.2)  # a little friction for guessers; the token is 256 bits anyway
        return _page("Log in", _login_form(next_target, "That token is not right."), status=401)
    store = request.app[SESSIONS]
    _revoke(request)  # a login over an old cookie replaces it
    session_id, session = store.create()
    _log.info("login.ok", request_id=request.get(authz.REQUEST_ID))
    response = _see_other(next_target)
    _set_cookies(response, config, session_id, session)
    return response


def _revoke(request: web.Request) -> None:
    """End the request's session for every worker, or answer 503 (logged) if that cannot be."""
    try:
        request.app[SESSIONS].revoke(request.get(_SESSION_ID))
    except SessionKeyError as e:
        # This worker refuses the session already; the others would not: say so.
        _log.error("session.revoke_failed", error=str(e), request_id=request.get(authz.REQUEST_ID))
        raise Unavailable("the session's end could not be recorded: see the gateway's log") from e


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _set_cookies(
    response: web.StreamResponse, config: HiveConfig, session_id: str, session: Session
) -> None:
    tls = _tls(config)
    ttl = config.gateway.session_ttl_seconds
    common: dict[str, object] = {"path": "/", "samesite": "Strict", "secure": tls, "max_age": ttl}
    response.set_cookie(cookie_name(tls), session_id, httponly=True, **common)  # type: ignore[arg-type]
    response.set_cookie(CSRF_COOKIE, session.csrf_token, httponly=False, **common)  # type: ignore[arg-type]


async def _logout(request: web.Request) -> web.StreamResponse:
    await _require_csrf(request)
    config = request.app[CONFIG]
    _revoke(request)
    _log.info("logout", request_id=request.get(authz.REQUEST_ID))
    response = _see_other("/login")
    tls = _tls(config)
    response.del_cookie(cookie_name(tls), path="/", secure=tls, samesite="Strict")
    response.del_cookie(CSRF_COOKIE, path="/", secure=tls, samesite="Strict")
    return response


async def _to_core(request: web.Request) -> web.StreamResponse:
    body: bytes | None = None
    if request.method not in _SAFE_METHODS:
        body = await _require_csrf(request)
    await _continue(request)
    headers = _core_headers(request)
    try:
        if proxy.is_websocket_upgrade(request):
            if not _origin_ok(request):
                raise Forbidden("cross-origin WebSocket refused")
            return await proxy.forward_websocket(
                request, request.app[_CORE], _core_url(request), headers
            )
        return await proxy.forward_core(
            request, request.app[_CORE_HTTP], _core_target(request), headers, body=body
        )
    except proxy.UpstreamTimeout:
        raise
    except proxy.UpstreamError as e:
        raise Unavailable("the core is unavailable") from e


async def _static(request: web.Request) -> web.StreamResponse:
    # Public assets: forwarded without the operator marker, whoever asks.
    headers = proxy.filter_request_headers(request.headers, drop=_PRIVATE_REQUEST)
    headers["Host"] = _authority(request.app[CONFIG])
    headers["X-Hive-Request-Id"] = request[authz.REQUEST_ID]
    try:
        return await proxy.forward_core(
            request, request.app[_CORE_HTTP], _core_target(request), headers
        )
    except proxy.UpstreamTimeout:
        raise
    except proxy.UpstreamError as e:
        raise Unavailable("the core is unavailable") from e


def _agent_of(request: web.Request) -> paths.AgentTarget:
    agent = paths.agent_target(paths.parse_target(request.raw_path))
    if agent is None or not agent.name:
        raise NotFound("no such agent")
    return agent


def _agent_resource(request: web.Request) -> str:
    return f"agent:{_agent_of(request).name}/ui"


async def _agent_slash(request: web.Request) -> web.StreamResponse:
    agent = _agent_of(request)
    location = f"{agent.prefix}/" + ("" if agent.query is None else f"?{agent.query}")
    raise web.HTTPPermanentRedirect(location)


def _view_redirect(request: web.Request, agent: paths.AgentTarget) -> web.StreamResponse | None:
    """Where a request in the agent space goes instead of the agent, if anywhere."""
    query = "" if agent.query is None else f"?{agent.query}"
    if request.headers.get("Sec-Fetch-Dest") == "document":
        # A top-level navigation (a shift-click out of the frame, "open frame in
        # a new tab", a bookmark, a pasted link): agent content would be the
        # whole page on the operator's origin, free to pose as the operator's
        # own login form. The browser gets the agent's chrome page instead,
        # which frames the UI sandboxed.
        return web.Response(
            status=303,
            headers={"Location": _chrome_page(agent.name), "Cache-Control": "no-store"},
        )
    if agent.view is not None:  # a valid capability (the principal check refused others)
        if agent.path == "":
            raise web.HTTPPermanentRedirect(f"{agent.prefix}/{query}")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            requested = request.headers.get("Access-Control-Request-Headers", "").strip()
            request[_PREFLIGHT] = requested if _HEADER_LIST.fullmatch(requested) else ""
            return web.Response(status=204)
        return None
    session = request.get(_SESSION)
    if (
        session is not None
        and request.method in {"GET", "HEAD"}
        and request.headers.get("Sec-Fetch-Mode") == "navigate"
    ):
        # The document this loads is sandboxed: its own requests carry no cookie,
        # so it must live under its capability prefix to reach its own space.
        cap = request.app[SESSIONS].view_capability(session, agent.name)
        location = f"{agent.prefix}/{paths.VIEW_MARK}{cap}{agent.path}{query}"
        return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
    return None


class AgentRedirectRefused(proxy.UpstreamError):
    """An agent UI redirected outside its own pages (an open redirect on our origin)."""

    code = "agent_redirect_refused"


def _redirect_check(
    request: web.Request, agent: paths.AgentTarget
) -> Callable[[int, CIMultiDictProxy[str]], None]:
    """Refuse an agent answer whose ``Location`` leaves ``/agent/<name>/``.

    Otherwise any agent could send the operator, on the operator's own
    origin, to any site (``/agent/<name>/go`` -> ``https://elsewhere``).
    """
    space = f"/agent/{agent.name}/"
    asked = request.raw_path.split("?", 1)[0]

    def check(status: int, headers: CIMultiDictProxy[str]) -> None:
        for location in headers.getall("Location", ()):
            problem = paths.agent_redirect_problem(location, asked, space)
            if problem is not None:
                raise AgentRedirectRefused(
                    f"the agent's UI redirected outside its pages: {problem}"
                )

    return check


async def _agent_ui(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    agent = _agent_of(request)
    instead = _view_redirect(request, agent)
    if instead is not None:
        return instead
    registry = request.app[_REGISTRY]
    base = await registry.ui_base(agent.name, request[authz.REQUEST_ID])
    url = URL.build(
        scheme=base.scheme,
        host=base.raw_host or "",
        port=base.explicit_port,
        path=agent.path,
        query_string=agent.query or "",
        encoded=True,
    )
    headers = proxy.filter_request_headers(request.headers, drop=_PRIVATE_REQUEST)
    headers["X-Forwarded-Prefix"] = agent.prefix
    headers["X-Forwarded-Proto"] = "https" if _tls(config) else "http"
    headers["X-Forwarded-Host"] = _authority(config)
    headers["X-Hive-Request-Id"] = request[authz.REQUEST_ID]
    await _continue(request)
    try:
        if proxy.is_websocket_upgrade(request):
            return await proxy.forward_websocket(request, request.app[_AGENTS], url, headers)
        return await proxy.forward_http(
            request,
            request.app[_AGENTS],
            url,
            headers,
            response_drop=_AGENT_RESPONSE_DROP,
            check_response=_redirect_check(request, agent),
        )
    except AgentRedirectRefused:
        raise  # the agent answered: its address is fine
    except proxy.UpstreamError:
        registry.forget(agent.name)
        raise


# --- the application ----------------------------------------------------------


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Every worker opens the same key and revocation file: any of them can
    # check any session, and a logout through one is seen by all. The
    # directory (0700) first: the token file lives in it.
    app[SESSIONS] = SessionStore.shared(
        session_dir(config.state_dir), config.gateway.session_ttl_seconds
    )
    app[_TOKEN].current()  # made at first start, or checked: a bad file stops the start
    connect, idle = config.gateway.connect_timeout, config.gateway.idle_timeout
    # Bounded pools: the worker's file-descriptor budget counts on it (serving).
    limit = serving.UPSTREAM_LIMIT
    async with (
        proxy.unix_session(
            config.core_socket, connect_timeout=connect, idle_timeout=idle, limit=limit
        ) as core,
        Upstream(
            config.core_socket, connect_timeout=connect, idle_timeout=idle, limit=limit
        ) as core_http,
        proxy.tcp_session(connect_timeout=connect, idle_timeout=idle, limit=limit) as agents,
    ):
        app[_CORE] = core
        app[_CORE_HTTP] = core_http
        app[_AGENTS] = agents
        app[_REGISTRY] = AgentRegistry(config, core_http)
        # Decide with the core's live policy version: follow its reloads.
        bound = {b.action for _route, b in authz.route_bindings(app) if b is not None}
        follower = asyncio.create_task(follow(app[ENGINE], config.run_dir, keep=bound))
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            if _HOT in app:
                app[_HOT].close()


# --- the front door's lane (enforcer.frontdoor) ----------------------------------------

_ENFORCER: web.AppKey[authz.Enforcer] = web.AppKey("gateway_enforcer", authz.Enforcer)
_HOT_PREFIX = "/api/"
# The catch-all route's binding (create_app): what the lane decides for.
_HOT_ACTION, _HOT_RESOURCE = "dashboard.view", "ui"
LINK_LIMIT = serving.UPSTREAM_LIMIT
"""Links to the core the front door keeps per worker (busy or idle); past it, the application's."""
LINK_KEEPALIVE = 15.0
"""Seconds an idle link is kept (the core closes idle connections after 75)."""


class _Date:
    """An RFC 9110 date for the ``Date`` header, formatted once a second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = email.utils.formatdate(second, usegmt=True)
        return self._text


class HotPath:
    """The operator's plain reads of the API, served at the front door (plain HTTP only).

    :meth:`admit` takes ``GET /api/...`` - HTTP/1.1, no body, no upgrade, no
    ``Expect``, not ``Connection: close`` - from a live operator session whose
    request the policy allows, exactly as the gateway's routes decide it:
    the same raw-path check, the same session store, the same enforcer (its
    decision line written before anything is forwarded), the same headers to
    the core and back. Everything else it declines, leaving no trace, and the
    request goes to the aiohttp application, which answers it (and logs it)
    as before. What it answers: the core's answer relayed (small ones in one
    write, others streamed, chunked when the core gave no length, a client
    that stops reading cut off after ``idle_timeout``), or the same JSON 503
    or 504 the application gives when the core cannot answer.
    """

    __slots__ = ("_app", "_authority", "_cookie", "_date", "_idle", "_live")

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._authority = _authority(app[CONFIG])
        self._cookie = cookie_name(False)
        self._date = _Date()
        self._idle: list[CoreLink] = []  # links fit for an exchange, newest last
        self._live = 0  # links open or opening, idle or busy (at most LINK_LIMIT)

    def admit(self, door: FrontDoor, head: bytes) -> Coroutine[Any, Any, None] | Taken | None:
        """The answering coroutine for ``head`` if the lane takes it, else None (see class)."""
        loop = door.loop
        message = self._parse(head, loop)
        if message is None:
            return None
        app = self._app
        raw = message.path
        if not raw.startswith(_HOT_PREFIX) or paths.in_agent_space(raw):
            return None
        try:
            paths.check_target(raw)
        except HiveError:
            return None  # the application refuses it, and says why
        headers = message.headers
        session_id = _cookie_in(headers.get("Cookie"), self._cookie)
        session = app[SESSIONS].get(session_id)
        if session is None or session_id is None:
            return None  # 401 is the application's
        enforcer = app[_ENFORCER]
        verdict = enforcer.decide("operator", _HOT_RESOURCE, _HOT_ACTION)
        if not verdict.decision.allowed:
            return None  # a refusal is the application's to answer and log
        link = self._take_link(loop)
        if link is None and self._live >= LINK_LIMIT:
            return None  # every link busy: the application's pool takes it
        request_id = authz.new_request_id()
        target = paths.parse_target(raw)
        upstream_target = f"{target.path}?{target.query}" if target.query else target.path
        to_core = _core_headers_for(headers, request_id, session, self._authority)
        try:
            request_head = serialize_request_head(f"GET {upstream_target} HTTP/1.1", to_core)
            # Logged before anything is sent; not logged, not made (the
            # application then answers 503).
            enforcer.log(verdict, request_id)
        except (ValueError, TypeError, OSError):
            if link is not None:
                self._put_back(link, loop)
            return None  # the application judges (and logs) it
        exchange = _Exchange(self, door, request_id, request_head)
        if link is not None:
            exchange.reused = True
            door.link = link
            link.send(request_head, exchange)
            return TAKEN
        self._live += 1  # counted from now: the connect is under way
        return self.connect_and_send(exchange, counted=True)

    async def connect_and_send(self, exchange: _Exchange, *, counted: bool = False) -> None:
        """A new link for ``exchange``, then the exchange on it."""
        if not counted:
            self._live += 1
        config = self._app[CONFIG]
        try:
            link = await open_link(
                str(config.core_socket),
                connect_timeout=config.gateway.connect_timeout,
                idle_timeout=self._app[_CORE_HTTP].idle_timeout,
            )
        except BaseException as e:
            self._live -= 1
            if isinstance(e, UpstreamError):
                exchange.failed(e, started=False, spoke=False)
                return
            raise
        link.on_lost = self._link_lost
        door = exchange.door
        if door.transport is None:
            link.close()  # the client left meanwhile
            return
        exchange.reused = False
        door.link = link
        link.send(exchange.request_head, exchange)

    # --- the links to the core: a bounded pool of idle ones --------------------------

    def _take_link(self, loop: asyncio.AbstractEventLoop) -> CoreLink | None:
        """An idle link fit for an exchange (stale ones closed), or None."""
        idle = self._idle
        if idle:
            stale_before = loop.time() - LINK_KEEPALIVE
            while idle:
                link = idle.pop()  # the most recently used: the likeliest alive
                if link.ready and link.idle_since >= stale_before:
                    return link
                link.close()
        return None

    def _put_back(self, link: CoreLink, loop: asyncio.AbstractEventLoop) -> None:
        if link.ready:
            link.idle_since = loop.time()
            self._idle.append(link)
        else:
            link.close()

    def _link_lost(self, link: CoreLink) -> None:
        self._live -= 1
        with contextlib.suppress(ValueError):
            self._idle.remove(link)

    def release(self, door: FrontDoor) -> None:
        """``door``'s exchange is over: its link goes back to the pool (if fit)."""
        link, door.link = door.link, None
        if isinstance(link, CoreLink):
            self._put_back(link, door.loop)

    def close(self) -> None:
        """Close every idle link (the worker stops)."""
        while self._idle:
            self._idle.pop().close()

    @staticmethod
    def _parse(head: bytes, loop: asyncio.AbstractEventLoop) -> RawRequestMessage | None:
        # No protocol: a head the lane takes has no body for the parser to stream.
        parser = HttpRequestParser(None, loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            messages, upgraded, _tail = parser.feed_data(head)
        except Exception:  # any doubt about the head: the application's parser judges
            return None
        if len(messages) != 1 or upgraded:
            return None
        message, payload = messages[0]
        if (
            payload is not EMPTY_PAYLOAD
            or message.method != "GET"
            or message.version != HttpVersion11
            or message.should_close
            or message.upgrade
            or message.chunked
            or "Expect" in message.headers
            or "Content-Length" in message.headers
            or "Transfer-Encoding" in message.headers
        ):
            return None
        return message

    @property
    def idle_timeout(self) -> float:
        """``[gateway] idle_timeout``: how long a client may take none of a streamed answer."""
        return self._app[CONFIG].gateway.idle_timeout

    def head(self, status: int, reason: str, headers: CIMultiDict[str], request_id: str) -> bytes:
        """An answer's head as the client gets it: the gateway's headers added, serialised."""
        headers.update(_ALWAYS)
        headers["X-Hive-Request-Id"] = request_id
        _operator_space_headers(headers, _HOT_PREFIX, tls=False)
        headers.setdefault("Date", self._date.now())
        return _serialize_headers(f"HTTP/1.1 {status} {reason}", headers)

    def error(self, status: int, request_id: str) -> bytes:
        """The application's JSON 5xx (its pages middleware's), whole."""
        response = _json_error_for(status, "unavailable", "", request_id)
        body = response.body
        assert isinstance(body, bytes)
        headers: CIMultiDict[str] = CIMultiDict(response.headers)
        headers["Content-Length"] = str(len(body))
        return self.head(status, response.reason, headers, request_id) + body


class _Exchange:
    """One request the front door took, and the core's answer on its way to the client.

    As the application relays (:func:`enforcer.proxy.forward_core` and
    ``_to_core``'s error mapping): an answer of known length up to
    :data:`enforcer.proxy.SMALL_BODY` is gathered and sent with its head in
    one write; any other is streamed (chunked when the core gave no length),
    with the core held while the client's socket is full and the client cut
    off when it takes nothing for ``idle_timeout``. Before the head (and for a
    gathered answer) a failure is the application's JSON 503, or 504 for a
    timeout; after it, the client is cut off. A reused link the core had
    closed before answering a word gets the request once more on a new one.
    """

    __slots__ = (
        "_chunked",
        "_gathered",
        "_out",
        "_path",
        "_sent_head",
        "_slow",
        "_status",
        "door",
        "request_head",
        "request_id",
        "retried",
        "reused",
    )

    def __init__(self, path: HotPath, door: FrontDoor, request_id: str, head: bytes) -> None:
        self._path = path
        self.door = door
        self.request_id = request_id
        self.request_head = head
        self.reused = False
        self.retried = False
        self._gathered: bytearray | None = None
        self._chunked = False
        self._out: CIMultiDict[str] | None = None
        self._status = (0, "")
        self._slow: asyncio.TimerHandle | None = None
        self._sent_head = False  # once true, only a cut can end a failed answer

    def head(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        length: int | None,
        no_body: bool,
    ) -> None:
        """The core's answer began: its head goes out now, or with a small body."""
        out = proxy.filter_response_headers(headers)
        if length is not None and length <= proxy.SMALL_BODY:
            self._gathered = bytearray()
            self._out, self._status = out, (status, reason)
            return
        chunked = False
        if no_body:
            out.popall("Content-Length", None)
        else:
            out.setdefault("Content-Type", "application/octet-stream")  # as aiohttp
            if length is None:
                out["Transfer-Encoding"] = "chunked"
                chunked = True
        # Serialised first (it refuses control characters): nothing changes,
        # and nothing is written, unless the whole head can go out.
        head = self._path.head(status, reason, out, self.request_id)
        self._chunked = chunked
        self.door.write(head)
        self._sent_head = True

    def data(self, chunk: bytes) -> None:
        """The next piece of the core's body: gathered, or on to the client."""
        if self._gathered is not None:
            self._gathered += chunk
            return
        door = self.door
        if not self._sent_head:
            raise AssertionError("a body piece before its head was sent")
        door.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        if door.writing_paused and isinstance(door.link, CoreLink):
            self._stop_slow()
            # The client's socket is full: hold the core, and give the client
            # idle_timeout to take some of it.
            door.link.hold()
            door.when_writable(self._writable)
            idle = self._path.idle_timeout
            self._slow = self.door.loop.call_later(idle, self._not_reading)

    def _stop_slow(self) -> None:
        slow, self._slow = self._slow, None
        if slow is not None:
            slow.cancel()

    def _writable(self) -> None:
        self._stop_slow()
        if isinstance(self.door.link, CoreLink):
            self.door.link.go_on()

    def _not_reading(self) -> None:
        # The client took nothing for idle_timeout: it held the core's answer
        # (and the link) for as long as it liked. Both go.
        self._slow = None
        self.door.abort()

    def end(self) -> None:
        """The core's answer is complete: the rest goes out, and the door's next turn."""
        self._stop_slow()
        door = self.door
        if self._gathered is not None:
            out = self._out
            assert out is not None
            status, reason = self._status
            if status >= 500:
                # As the application's pages middleware does: nothing of a
                # failing core's own words (a traceback, paths) reaches the client.
                door.write(self._path.error(status, self.request_id))
            else:
                out.popall("Content-Length", None)
                out["Content-Length"] = str(len(self._gathered))
                if self._gathered:
                    out.setdefault("Content-Type", "application/octet-stream")  # as aiohttp
                head = self._path.head(status, reason, out, self.request_id)  # may refuse
                door.write(head + self._gathered)
                self._sent_head = True
        elif self._chunked:
            door.write(b"0\r\n\r\n")
        self._path.release(door)
        door.served()

    def failed(self, error: UpstreamError, *, started: bool, spoke: bool) -> None:
        """The exchange failed: once more on a new link, a JSON 503/504, or the client cut off."""
        self._stop_slow()
        door = self.door
        door.link = None  # closed by the link itself
        if door.transport is None:
            return
        if (
            isinstance(error, UpstreamUnreachable)
            and self.reused
            and not spoke
            and not self.retried
        ):
            # Closed while idle, before a word of this answer: as the
            # application's client does, a GET goes once more on a new link.
            self.retried = True
            task = self.door.loop.create_task(self._path.connect_and_send(self))
            task.add_done_callback(_log_failure)
            return
        if self._sent_head:
            door.abort()  # the head went out: a cut-short body must not look whole
            return
        # Nothing of it was sent: the application's JSON answer (its 500 for
        # an answer it could not pass on either, 504/503 for the core's failure).
        status = 504 if isinstance(error, UpstreamTimeout) else 503
        if isinstance(error, RelayFailed):
            status = 500
        door.write(self._path.error(status, self.request_id))
        door.served()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.error("frontdoor.failed", error=repr(error))


def _cookie_in(header: str | None, name: str) -> str | None:
    """Cookie ``name``'s value in a ``Cookie`` header (the last one given), as :func:`_cookie`."""
    if not header:
        return None
    prefix = name + "="
    found: str | None = None
    for part in header.split(";"):
        part = part.strip()
        if part.startswith(prefix):
            found = part[len(prefix) :]
    return found


def create_app(config: HiveConfig, *, engine: PolicyEngine | None = None) -> web.Application:
    """The gateway application (routes bound, default-deny authorisation, sessions)."""
    engine = engine if engine is not None else PolicyEngine(config.policy_dir)
    # Errors, the agent-space guard, authorisation and the decision log: the
    # enforcer, on every bound route. The one middleware turns gateway-made
    # errors into pages.
    enforcer = authz.Enforcer(
        engine=engine,
        channel="gateway",
        principal_of=_principal_of,
        path_check=paths.check_target,
        guard=_space_guard,
        expect_handler=_expect,
    )
    app = web.Application(client_max_size=FORM_LIMIT, middlewares=[_pages_middleware])
    app[CONFIG] = config
    app[ENGINE] = engine
    app[_ENFORCER] = enforcer
    app[_TOKEN] = OperatorToken(config.operator_token_file)
    app.cleanup_ctx.append(_resources)
    app.on_response_prepare.append(_security_headers)

    enforcer.bind(
        app, "GET", "/login", _login_form_handler, action="session.login", resource="session"
    )
    enforcer.bind(app, "POST", "/login", _login, action="session.login", resource="session")
    enforcer.bind(app, "POST", "/logout", _logout, action="session.logout", resource="session")
    enforcer.bind(app, "GET", "/health", _health, action="health.read", resource="health")
    enforcer.bind(
        app,
        "GET",
        "/static/{path:.+}",
        _static,
        action="static.read",
        resource=lambda r: f"static/{paths.parse_target(r.raw_path).path[len('/static/') :]}",
    )
    enforcer.bind(
        app,
        "*",
        "/agent/{name}/{tail:.*}",
        _agent_ui,
        action="agent.ui.view",
        resource=_agent_resource,
        name="agent-ui",
    )
    enforcer.bind(
        app,
        "GET",
        "/agent/{name}",
        _agent_slash,
        action="agent.ui.view",
        resource=_agent_resource,
        name="agent-ui-slash",
    )
    enforcer.bind(app, "*", "/{tail:.*}", _to_core, action="dashboard.view", resource="ui")
    enforcer.install(app)
    return app


def _ssl_context(config: HiveConfig) -> ssl.SSLContext | None:
    gw = config.gateway
    if gw.tls_cert is None or gw.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(gw.tls_cert), str(gw.tls_key))
    return context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hive-boundary gateway``."""
    parser.add_argument("--config", type=Path, help="hive.toml (default /etc/hive/hive.toml)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (overrides [gateway] listen)")
    parser.add_argument(
        "--workers", type=int, help="worker processes (overrides [gateway] workers; default: CPUs)"
    )


def _config_from_args(args: argparse.Namespace) -> HiveConfig:
    config = load_config(args.config)
    if args.listen:
        try:
            host, port = parse_listen(args.listen)
        except ConfigError as e:
            raise ConfigError(f"--listen {e.reason}") from e
        gateway = replace(config.gateway, host=host, port=port)
        config = replace(config, gateway=gateway)
    if args.workers is not None:
        config = replace(config, gateway=replace(config.gateway, workers=args.workers))
    return config


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop when installed (requirements.lock pins it): the same asyncio API,
    # a faster loop and transports - the proxy's hot path is mostly I/O glue.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_HOT: web.AppKey[HotPath] = web.AppKey("gateway_hot_path", HotPath)


def _lane(app: web.Application) -> Lane:
    lane = app[_HOT] = HotPath(app)  # its links are closed with the app (_resources)
    return lane


def make_runner(
    app: web.Application, *, shutdown_timeout: float | None = None, hot_path: bool = True
) -> web.AppRunner:
    """The runner a gateway worker serves ``app`` with (tests serve the gateway so too).

    No access log (the decision log is the gateway's log). Request bodies are
    passed on as the client sent them: aiohttp would otherwise inflate a body
    with ``Content-Encoding: gzip`` and the upstream would get the inflated
    bytes under the client's encoding and length. ``shutdown_timeout``: aiohttp
    waits it twice (for handlers to finish, then again after cutting their
    request bodies off) before cancelling them; by default
    :data:`SHUTDOWN_SECONDS` in all. Connections are held as ``[gateway]``
    says (:mod:`enforcer.serving`): at most ``max_connections``, the first
    request head within ``header_timeout``, the next within
    ``keepalive_timeout``.
    """
    config = app[CONFIG]
    gw = config.gateway
    return serving.GatewayRunner(
        app,
        # The operator's plain API reads at the front door (enforcer.frontdoor);
        # with TLS every request goes to the application.
        lane=_lane(app) if hot_path and not _tls(config) else None,
        max_connections=gw.max_connections,
        header_timeout=gw.header_timeout,
        keepalive_timeout=gw.keepalive_timeout,
        # After an answer that left a body unread (a refusal), aiohttp keeps
        # reading it for lingering_time (10 s by default, whatever the limits
        # say) so the client can see the answer: bounded like any idle read.
        lingering_time=min(2.0, gw.idle_timeout),
        access_log=None,
        handle_signals=False,
        auto_decompress=False,
        shutdown_timeout=SHUTDOWN_SECONDS / 2 if shutdown_timeout is None else shutdown_timeout,
    )


def serve_worker(config: HiveConfig, sock: socket.socket) -> int:
    """One gateway worker: serve ``create_app(config)`` on the listening ``sock``.

    Returns 0 after SIGTERM/SIGINT: requests in flight get up to
    :data:`SHUTDOWN_SECONDS` to finish, then are cancelled (streams such as
    ``/api/events`` and WebSockets never finish by themselves).
    """

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        runner = make_runner(create_app(config))
        await runner.setup()
        try:
            site = serving.GatewaySite(
                runner,
                sock,
                ssl_context=_ssl_context(config),
                handshake_timeout=config.gateway.header_timeout,
            )
            await site.start()
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    # Room for max_connections clients and their upstream connections.
    serving.raise_fd_limit(config.gateway.max_connections)
    # asyncio.Runner closes the loop as asyncio.run does: handlers the shutdown
    # timeout cut off (a long /api/events stream) are cancelled *and awaited*,
    # async generators closed, and only then the loop.
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(serve())
    return 0


def _preflight(config: HiveConfig) -> None:
    """What every worker needs, made or checked once before any starts (clear errors)."""
    SessionStore.shared(session_dir(config.state_dir), config.gateway.session_ttl_seconds)
    load_or_create_token(config.operator_token_file)
    _ssl_context(config)


def run(config: HiveConfig | argparse.Namespace) -> int:
    """Serve the gateway with ``[gateway] workers`` processes until SIGTERM/SIGINT.

    Takes a :class:`HiveConfig`, or the parsed ``hive-boundary gateway``
    arguments (the daemons' dispatch table calls ``run(args)``). The process
    that runs this is the supervisor (:mod:`enforcer.supervisor`): it binds
    one ``SO_REUSEPORT`` socket per worker, forks the workers, restarts one
    that dies, and forwards SIGTERM/SIGINT.
    """
    configure_logging()
    if isinstance(config, argparse.Namespace):
        try:
            config = _config_from_args(config)
        except HiveError as e:
            print(f"hive-boundary gateway: {e.reason}", file=sys.stderr)
            return 2
    gw = config.gateway
    try:
        _preflight(config)
        listeners = supervisor.bind_listeners(gw.host, gw.port, gw.workers)
    except HiveError as e:
        print(f"hive-boundary gateway: {e.reason}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as e:
        print(f"hive-boundary gateway: cannot listen on {gw.host}:{gw.port}: {e}", file=sys.stderr)
        return 2
    _log.info("gateway.listening", origin=gw.origin, workers=gw.workers)
    try:
        return supervisor.supervise(listeners, lambda i: serve_worker(config, listeners[i]))
    finally:
        for sock in listeners:
            sock.close()
