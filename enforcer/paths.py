"""Pure request-target checks: the path a daemon decides on is the path its backend gets.

Every daemon (the gateway, the core's sockets) routes and authorises on the
*raw* request target, exactly as received, and a proxy forwards that same
string. So nothing here rewrites a path: :func:`parse_target` either accepts
a target unchanged or refuses it with a :class:`PathRejected` (400) or
:class:`PathTooLong` (414) naming what is wrong. Refusing instead of
normalising means there is no second interpretation anywhere: what a
decoder, a router or a backend's path library could turn the string into is
already equal to the string.

Refused in the path:

- anything but ``/``, RFC 3986 ``pchar`` characters and well-formed ``%XX``
  escapes (so raw backslashes, NULs, controls, spaces, ``#`` and non-ASCII
  bytes are refused; a browser percent-encodes non-ASCII text);
- escapes of ``/`` (``%2F``), ``\\`` (``%5C``), ``.`` (``%2E``), NUL (``%00``),
  ``%`` itself (``%25``, no double decoding), any control character, and any
  other *unreserved* character (``%61`` for ``a``): an unreserved character
  means the same encoded or not (RFC 3986 6.2.2.2), so its escape is only ever
  a way to make two spellings of one path - for example ``/%61gent/x`` for
  ``/agent/x``;
- ``.`` and ``..`` segments;
- repeated slashes: an empty segment is allowed only as the trailing slash
  (``/a/`` yes, ``//a`` and ``/a//b`` no) - refused, never merged;
- paths over :data:`MAX_PATH_LENGTH` characters, targets over
  :data:`MAX_TARGET_LENGTH`.

The query string is not a path: it is passed through unchanged, refused only
for controls, non-ASCII, spaces and ``#``.

Also here, because the gateway and the core must agree on them: the agent UI
space ``/agent/<name>/...`` (:func:`agent_target`) and agent names. A first
segment starting with ``@`` right after the name is the *view capability*
slot (``/agent/<name>/@<capability>/...``, see :mod:`enforcer.gateway`): it
belongs to the prefix, never to the path the agent receives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from enforcer.errors import BadRequest
from enforcer.names import AGENT_NAME_RE

__all__ = [
    "AGENT_NAME_RE",
    "MAX_PATH_LENGTH",
    "MAX_TARGET_LENGTH",
    "VIEW_MARK",
    "AgentTarget",
    "PathRejected",
    "PathTooLong",
    "Target",
    "agent_redirect_problem",
    "agent_target",
    "check_target",
    "in_agent_space",
    "normalise",
    "parse_target",
    "path_problem",
]

MAX_PATH_LENGTH = 2048
MAX_TARGET_LENGTH = 8192

"""An agent name (docs/conventions.md)."""

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SUB_DELIMS = "!$&'()*+,;="
_PATH_CHARS = frozenset(_UNRESERVED + _SUB_DELIMS + ":@/%")
_HEX = frozenset("0123456789abcdefABCDEF")

# Escapes refused in a path, by the (upper-case) byte value they encode.
_REFUSED_ESCAPES: dict[int, str] = {
    0x2F: "an encoded slash (%2F)",
    0x5C: "an encoded backslash (%5C)",
    0x2E: "an encoded dot (%2E)",
    0x00: "an encoded NUL (%00)",
    0x25: "an encoded percent sign (%25, double encoding)",
}
for _byte in (*range(0x01, 0x20), 0x7F):
    _REFUSED_ESCAPES[_byte] = f"an encoded control character (%{_byte:02X})"
for _char in _UNRESERVED:
    _REFUSED_ESCAPES.setdefault(
        ord(_char), f"an encoded unreserved character (%{ord(_char):02X} for {_char!r})"
    )

_AGENT_PREFIX = "/agent/"
VIEW_MARK = "@"
"""Starts the view-capability segment right after an agent's name."""


class PathRejected(BadRequest):
    """The request target is refused; ``reason`` says what is wrong with it."""

    code = "bad_path"


class PathTooLong(PathRejected):
    """The request target is over its length limit."""

    status = 414
    code = "path_too_long"


@dataclass(frozen=True, slots=True)
class Target:
    """An accepted request target: ``path`` and the raw ``query`` (None: no ``?``)."""

    path: str
    query: str | None = None

    def __str__(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


@dataclass(frozen=True, slots=True)
class AgentTarget:
    """A target in the agent UI space: ``/agent/<name>[/@<view>]<path>[?query]``.

    ``path`` (starting with ``/``, or ``""`` right after the name or the view
    slot) and ``query`` are what the agent's UI receives; ``prefix``
    (``/agent/<name>``, or ``/agent/<name>/@<view>``) is what the gateway sends
    it as ``X-Forwarded-Prefix``. ``view`` is the text of the capability slot
    (None when there is none; it may be empty or malformed: the gateway decides).
    """

    name: str
    path: str
    query: str | None
    view: str | None = None

    @property
    def prefix(self) -> str:
        """The base path under which the operator sees this agent's UI."""
        if self.view is None:
            return f"{_AGENT_PREFIX}{self.name}"
        return f"{_AGENT_PREFIX}{self.name}/{VIEW_MARK}{self.view}"

    def upstream_target(self) -> str:
        """The exact request target the agent's UI receives."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


def path_problem(path: str) -> str | None:
    """Why ``path`` (no query) is refused, or None when it is accepted as it is."""
    if len(path) > MAX_PATH_LENGTH:
        return f"the path is longer than {MAX_PATH_LENGTH} characters"
    if not path.startswith("/"):
        return "the path must start with '/'"
    i = 0
    n = len(path)
    while i < n:
        char = path[i]
        if char not in _PATH_CHARS:
            if char == "\\":
                return "a backslash in the path"
            if char == "\x00":
                return "a NUL in the path"
            return f"the character {char!r} is not allowed raw in a path"
        if char == "%":
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                return "a '%' not followed by two hex digits"
            refused = _REFUSED_ESCAPES.get(int(pair, 16))
            if refused is not None:
                return f"{refused} in the path"
            i += 3
            continue
        i += 1
    segments = path[1:].split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in {".", ".."}:
            return f"a {segment!r} segment in the path"
        if segment == "" and index != last:
            return "repeated slashes in the path"
    return None


def normalise(path: str) -> str:
    """Return ``path`` unchanged if it is acceptable, else raise :class:`PathRejected`.

    The result is always exactly the input: a path is never rewritten, so the
    path a daemon decides on is byte for byte the path its backend receives.
    """
    problem = path_problem(path)
    if problem is not None:
        if problem.startswith("the path is longer"):
            raise PathTooLong(problem)
        raise PathRejected(problem)
    return path


def _query_problem(query: str) -> str | None:
    for char in query:
        if not ("\x21" <= char <= "\x7e") or char == "#":
            return f"the character {char!r} is not allowed in the query string"
    return None


@functools.lru_cache(maxsize=4096)
def parse_target(raw: str) -> Target:
    """Split and check a raw origin-form request target (``/path[?query]``).

    Raises :class:`PathRejected` / :class:`PathTooLong`; absolute-form and
    asterisk-form targets are refused (this is not a forward proxy). Pure, so
    accepted targets are cached (a request is checked by several layers).
    """
    if len(raw) > MAX_TARGET_LENGTH:
        raise PathTooLong(f"the request target is longer than {MAX_TARGET_LENGTH} characters")
    path, sep, query = raw.partition("?")
    normalise(path)
    if sep:
        problem = _query_problem(query)
        if problem is not None:
            raise PathRejected(problem)
        return Target(path, query)
    return Target(path)


def check_target(raw: str) -> None:
    """:func:`parse_target` for its refusal only (the shape ``authz`` takes as a path check)."""
    parse_target(raw)


def in_agent_space(raw: str) -> bool:
    """True when a raw target belongs to the agent UI space, accepted or not.

    Conservative on purpose: ``/agent`` and anything starting ``/agent/`` or
    ``/agent?`` - such a request must never be answered by the core, and every
    response to it is treated as agent content.
    """
    return raw == "/agent" or raw.startswith((_AGENT_PREFIX, "/agent?"))


def agent_target(target: Target) -> AgentTarget | None:
    """The agent UI target of an accepted target, or None outside the agent space.

    ``/agent/<name>/rest`` gives path ``/rest``; ``/agent/<name>`` gives path
    ``""`` (the gateway redirects it to the trailing slash). A name that is not
    a valid agent name gives name ``""`` (the gateway answers 404).
    ``/agent/<name>/@<view>/rest`` gives view ``<view>`` and path ``/rest``
    (``/agent/<name>/@<view>`` gives path ``""``); only the first segment after
    the name is the view slot, so an agent UI cannot have a top-level path
    segment starting with ``@`` (deeper ones are ordinary path).
    """
    if not target.path.startswith(_AGENT_PREFIX):
        return None
    rest = target.path[len(_AGENT_PREFIX) :]
    name, slash, tail = rest.partition("/")
    if AGENT_NAME_RE.fullmatch(name) is None:
        name = ""
    if tail.startswith(VIEW_MARK):
        view, slash, tail = tail.partition("/")
        return AgentTarget(name, slash + tail, target.query, view[len(VIEW_MARK) :])
    return AgentTarget(name, slash + tail, target.query)


# The origin a Location is resolved against: any fixed one will do, because a
# location that brings its own scheme or authority is refused whatever it is.
_REDIRECT_BASE = "http://gateway.invalid"


def agent_redirect_problem(location: str, request_path: str, prefix: str) -> str | None:
    """Why an agent UI's ``Location`` would take the browser out of its space, or None.

    ``request_path`` is the path the browser asked for (relative locations are
    resolved against it) and ``prefix`` the agent's space, ``/agent/<name>/``.
    Accepted: a reference without scheme or authority that resolves - as a
    browser resolves it, dot segments included - to a path inside ``prefix``
    that :func:`path_problem` accepts. Refused: any scheme (``https:``,
    ``javascript:``), any authority (``//host``), backslashes, whitespace and
    controls (browsers drop or reinterpret them), escaped dots or slashes.
    Pure.
    """
    if not location:
        return "an empty Location"
    if any(c <= " " or c == "\\" or c == "\x7f" for c in location):
        return "whitespace, a control character or a backslash in the Location"
    parts = urlsplit(location)
    if parts.scheme or parts.netloc:
        return "a Location with a scheme or a host (an agent may redirect only within its pages)"
    resolved = urlsplit(urljoin(_REDIRECT_BASE + request_path, location))
    if f"{resolved.scheme}://{resolved.netloc}" != _REDIRECT_BASE:
        return "a Location that leaves the gateway's origin"
    problem = path_problem(resolved.path)
    if problem is not None:
        return f"a Location with {problem.removeprefix('the path ')}"
    if not resolved.path.startswith(prefix):
        return "a Location outside the agent's own pages"
    return None
