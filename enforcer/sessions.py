"""Operator authentication at the gateway: the token file, sessions, CSRF tokens.

- The operator token is generated at the gateway's first start into
  ``STATE/operator-token`` (``HiveConfig.operator_token_file``), mode 0600,
  created with ``O_EXCL|O_NOFOLLOW``; a later start reads it and refuses a
  file that is not a regular file or that group/others can read.
- Logging in exchanges the token (compared in constant time) for a session:
  a random 256-bit id in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Path=/``,
  ``Secure`` and the ``__Host-`` name prefix with TLS). The store keeps only
  a hash of the id, in memory, with an absolute expiry; logout revokes it.
- Each session has its own CSRF token; a state-changing request must carry it
  (``X-CSRF-Token`` header or ``csrf_token`` form field), compared in
  constant time against the session's.
- Each session can hand out *view capabilities*, one per agent
  (:meth:`SessionStore.view_capability`): ``<view id><mac>``, where the view id
  is the session's own random public handle (never derived from the cookie)
  and the mac is HMAC-SHA256 under a per-store random secret over
  ``("agent.ui.view", view id, agent name)``, cut to 128 bits. It opens that
  one agent's UI space at the gateway while the session lives, and nothing
  else (:meth:`SessionStore.view_session`); logout, expiry, eviction or a new
  login (which replaces the session) end it. Why that is safe to give to
  agent content is in :mod:`enforcer.gateway`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enforcer.errors import HiveError

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "VIEW_CAPABILITY_LENGTH",
    "Session",
    "SessionStore",
    "TokenFileError",
    "cookie_name",
    "load_or_create_token",
    "origin_allowed",
    "tokens_equal",
]

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "hive_csrf"
"""Readable by the operator's own scripts (not HttpOnly); useless to another site
(SameSite=Strict) and to agent content (sandboxed: an opaque origin, no cookies)."""

_TOKEN_BYTES = 32
_VIEW_ID_BYTES = 16
_VIEW_MAC_BYTES = 16
_VIEW_ID_CHARS = 22  # base64url of 16 bytes, unpadded
VIEW_CAPABILITY_LENGTH = 44
"""Characters in a view capability: a 22-character view id, a 22-character mac."""
_VIEW_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class TokenFileError(HiveError):
    """The operator token file is unusable (wrong type, too open, empty, unreadable)."""

    status = 500
    code = "bad_token_file"


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (time does not depend on where they differ)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def load_or_create_token(path: Path) -> str:
    """The operator token at ``path``, generated (mode 0600) if the file does not exist."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_token(path)
    except OSError as e:
        raise TokenFileError(f"{path}: cannot create the operator token file: {e}") from e
    with os.fdopen(fd, "w", encoding="ascii") as f:
        # umask cannot loosen 0600, but a pre-set umask could tighten it oddly: be explicit.
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise TokenFileError(f"{path}: cannot open the operator token file: {e}") from e
    with os.fdopen(fd, "r", encoding="ascii", errors="strict") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"{path}: the operator token file is not a regular file")
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"{path}: the operator token file is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
            )
        try:
            token = f.read(4096).strip()
        except UnicodeDecodeError as e:
            raise TokenFileError(f"{path}: the operator token is not ASCII") from e
    if len(token) < 16:
        raise TokenFileError(f"{path}: the operator token is empty or too short")
    return token


def cookie_name(tls: bool) -> str:
    """The session cookie's name; with TLS the ``__Host-`` prefix pins it to this origin."""
    return "__Host-hive_session" if tls else "hive_session"


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class Session:
    """One operator session: its CSRF token, when it ends (store clock), its view id.

    ``view_id`` is a random public handle that the session's view
    capabilities start with (empty: the session hands out none).
    """

    csrf_token: str
    expires_at: float
    view_id: str = ""

    def csrf_ok(self, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token (constant time)."""
        return given is not None and tokens_equal(given, self.csrf_token)


class SessionStore:
    """Sessions in memory, keyed by the SHA-256 of the id, with absolute expiry.

    Only hashes are kept, so a dictionary lookup's timing says nothing useful
    about a valid id. At most ``max_sessions`` live at once (the oldest goes).
    """

    def __init__(
        self,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = 1024,
    ) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._max = max_sessions
        self._sessions: dict[bytes, Session] = {}
        # view id -> the session's key; the secret lives and dies with the store
        # (sessions are in memory too: a restart ends both).
        self._views: dict[str, bytes] = {}
        self._view_secret = secrets.token_bytes(32)

    def create(self) -> tuple[str, Session]:
        """A new session: (the id to put in the cookie, the session)."""
        self._purge()
        while len(self._sessions) >= self._max:
            # dicts keep insertion order: the first key is the oldest session.
            self._drop(next(iter(self._sessions)))
        session_id = secrets.token_urlsafe(_TOKEN_BYTES)
        view_id = secrets.token_urlsafe(_VIEW_ID_BYTES)
        session = Session(secrets.token_urlsafe(_TOKEN_BYTES), self._clock() + self.ttl, view_id)
        key = _digest(session_id)
        self._sessions[key] = session
        self._views[view_id] = key
        return session_id, session

    def _drop(self, key: bytes) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
            self._views.pop(session.view_id, None)

    def _view_mac(self, view_id: str, agent: str) -> str:
        message = f"agent.ui.view\0{view_id}\0{agent}".encode()
        mac = hmac.new(self._view_secret, message, hashlib.sha256).digest()[:_VIEW_MAC_BYTES]
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def view_capability(self, session: Session, agent: str) -> str:
        """The capability that opens ``agent``'s UI space for ``session`` (and nothing else)."""
        if not session.view_id:
            raise ValueError("this session hands out no view capabilities")
        return session.view_id + self._view_mac(session.view_id, agent)

    def view_session(self, capability: str, agent: str) -> Session | None:
        """The live session that issued ``capability`` for ``agent``, or None.

        None for anything malformed, forged, issued for another agent, or of a
        session that has ended (logout, expiry, eviction, replaced by a login).
        """
        if len(capability) != VIEW_CAPABILITY_LENGTH or not set(capability) <= _VIEW_ALPHABET:
            return None
        view_id, mac = capability[:_VIEW_ID_CHARS], capability[_VIEW_ID_CHARS:]
        if not tokens_equal(mac, self._view_mac(view_id, agent)):
            return None
        # The mac is checked first: a forged capability costs the same whether
        # or not its view id exists, so timing says nothing about live ids.
        key = self._views.get(view_id)
        if key is None:
            return None
        session = self._sessions.get(key)
        if session is None or session.view_id != view_id:
            self._views.pop(view_id, None)
            return None
        if session.expires_at <= self._clock():
            self._drop(key)
            return None
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for a cookie value, or None (absent, unknown, expired)."""
        if not session_id or len(session_id) > 128:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            self._drop(key)
            return None
        return session

    def revoke(self, session_id: str | None) -> None:
        """End a session (logout) and its view capabilities; unknown ids are ignored."""
        if session_id:
            self._drop(_digest(session_id))

    def __len__(self) -> int:
        return len(self._sessions)

    def _purge(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            self._drop(key)


def origin_allowed(origin: str | None, sec_fetch_site: str | None, expected: str) -> bool:
    """Whether a state-changing request comes from the gateway's own origin.

    ``Origin`` must equal ``expected`` exactly when present (``null`` never
    does); without it, the browser must say ``Sec-Fetch-Site: same-origin``.
    A ``Sec-Fetch-Site`` other than ``same-origin`` is refused either way.
    """
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() != "same-origin":
        return False
    if origin is not None:
        return origin.strip() == expected
    return sec_fetch_site is not None
