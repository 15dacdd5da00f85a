"""Operator authentication at the gateway: the token file, sessions, CSRF tokens.

Sessions are *self-verifying*, so that every gateway worker process (see
:mod:`enforcer.supervisor`) agrees on them without sharing memory:

- The operator token is generated at the gateway's first start into
  ``STATE/gateway/operator-token`` (``HiveConfig.operator_token_file``, in
  the gateway's own directory), mode 0600, published whole; a later start
  reads it and refuses a file that is not a regular file, that group/others
  can read, or that another account owns. :class:`OperatorToken` re-reads it
  when it changes: a replaced token takes effect at the next login, and a
  deleted one is made anew, without a restart.
- A 256-bit *session key* lives in ``STATE/gateway/session-key`` (the
  directory 0700, the file 0600, owned by the gateway's user). Whichever
  worker starts first creates it (written to a private ``O_EXCL`` temporary
  file, then published with ``link(2)``, which fails if the name exists:
  exactly one key wins and no worker ever reads a half-written file); the
  others read it. Deleting it (and restarting) ends every session.
- Logging in exchanges the token (compared in constant time) for a session
  cookie ``<id>.<expiry>.<mac>``: a random 256-bit id, the absolute expiry
  (Unix seconds), and HMAC-SHA256 over both under a subkey of the session
  key. The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, and
  ``Secure`` with the ``__Host-`` name prefix under TLS. Any worker checks it
  with :func:`hmac.compare_digest`; nothing about a session is stored.
- The session's CSRF token and its *handle* (a 96-bit name for revocation)
  are HMACs of the id under their own subkeys: every worker derives the
  same ones, and neither reveals the id or the key.
- Logout (and a new login over an old cookie) appends the session's handle
  and expiry to ``STATE/gateway/revoked`` (a 0600 file of 16-byte records,
  under ``flock``) and then bumps a generation counter at the start of
  ``revoked.lock``, before it answers. Every worker maps that lock file into
  memory, compares the generation on each lookup (a memory read, no system
  call) and re-reads the file when it moved, so a logged-out cookie is
  refused by every worker from the very next request. Records of expired
  sessions are dropped when the file grows.
- Each session can hand out *view capabilities*, one per agent
  (:meth:`SessionStore.view_capability`): ``<view id><mac>``, where the view
  id is the session's expiry and handle (never the id itself) and the mac is
  HMAC-SHA256 under another subkey over ``("agent.ui.view", view id, agent
  name)``, cut to 128 bits. It opens that one agent's UI space at the gateway
  while the session lives, and nothing else (:meth:`SessionStore.view_session`);
  logout, expiry or a new login end it. Why that is safe to give to agent
  content is in :mod:`enforcer.gateway`.

Clocks: expiry is wall-clock time (``time.time``), the only clock that
worker processes and restarts share.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
import mmap
import os
import secrets
import stat
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from enforcer.errors import HiveError
from enforcer.log import get_logger

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "KEY_FILE",
    "REVOKED_FILE",
    "VIEW_CAPABILITY_LENGTH",
    "OperatorToken",
    "Revocations",
    "Session",
    "SessionKeyError",
    "SessionStore",
    "TokenFileError",
    "cookie_name",
    "ensure_session_dir",
    "load_or_create_key",
    "load_or_create_token",
    "origin_allowed",
    "session_dir",
    "tokens_equal",
]

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
CSRF_COOKIE = "hive_csrf"
"""Readable by the operator's own scripts (not HttpOnly); useless to another site
(SameSite=Strict) and to agent content (sandboxed: an opaque origin, no cookies)."""

_TOKEN_BYTES = 32
_SESSION_ID_CHARS = 43  # base64url of 32 bytes, unpadded
_KEY_BYTES = 32
_HANDLE_BYTES = 12
_RECORD_BYTES = _HANDLE_BYTES + 4
_COOKIE_MAX = 128
_VIEW_MAC_BYTES = 16
_VIEW_ID_CHARS = 22  # base64url of 16 bytes (expiry + handle), unpadded
VIEW_CAPABILITY_LENGTH = 44
"""Characters in a view capability: a 22-character view id, a 22-character mac."""
_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_VIEW_ALPHABET = _B64URL_ALPHABET
KEY_FILE = "session-key"
"""The session key's file name in :func:`session_dir` (0600)."""
REVOKED_FILE = "revoked"
"""The revocation file's name in :func:`session_dir` (0600; ``revoked.lock`` beside it
holds the lock and the generation)."""
_REVOKED_COMPACT_BYTES = 64 * 1024  # 4096 records: then expired ones are dropped
_PURGE_EVERY = 60.0  # seconds between sweeps of expired handles in memory
_VERIFIED_CACHE = 4096  # verified cookies remembered per store
_log = get_logger("enforcer.sessions")
_GENERATION_BYTES = 8  # the revocation generation at the start of revoked.lock


class TokenFileError(HiveError):
    """The operator token file is unusable (wrong type, too open, empty, unreadable)."""

    status = 500
    code = "bad_token_file"


class SessionKeyError(HiveError):
    """The session key or the gateway's state directory is unusable."""

    status = 500
    code = "bad_session_key"


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (time does not depend on where they differ).

    Secrets are ASCII; anything else given (bytes that were not UTF-8 reach
    here as surrogate escapes) is simply not equal.
    """
    if not given.isascii():
        return False
    return hmac.compare_digest(given.encode("ascii"), expected.encode("utf-8"))


def load_or_create_token(path: Path, *, owners: Collection[int] = ()) -> str:
    """The operator token at ``path``, generated (mode 0600) if the file does not exist.

    Published whole (:func:`_publish_private`): gateways starting together
    agree on one token, and none reads a half-written file. An existing file
    must belong to this process's uid, root, or one of ``owners``.
    """
    try:
        return _read_token(path, owners)
    except FileNotFoundError:
        pass
    _publish_private(
        path, secrets.token_urlsafe(_TOKEN_BYTES), "the operator token file", TokenFileError
    )
    try:
        return _read_token(path, owners)
    except FileNotFoundError as e:
        raise TokenFileError(f"{path}: the operator token file vanished while it was made") from e


class OperatorToken:
    """The operator token file, followed: the token in it now, re-read only when it changed.

    Asked on every login attempt (rare: one ``lstat`` each). The file is
    re-read when its inode, size, mtime or ctime changed, so replacing it
    takes effect at the next login without a restart, and loosening its mode
    is noticed. A file deleted is made anew, as at first start. An unusable
    file (another account's, readable by others, too short) raises
    :class:`TokenFileError`: the last token is not kept, since whoever
    touched the file may have meant to revoke it.
    """

    def __init__(self, path: Path, *, owners: Collection[int] = ()) -> None:
        self.path = path
        self._owners = tuple(owners)
        self._seen: tuple[int, int, int, int, int] | None = None
        self._token: str | None = None

    def current(self) -> str:
        """The token in the file now (made if missing); :class:`TokenFileError` if unusable."""
        try:
            info = os.lstat(self.path)
            seen: tuple[int, int, int, int, int] | None = (
                info.st_dev,
                info.st_ino,
                info.st_size,
                info.st_mtime_ns,
                info.st_ctime_ns,
            )
        except FileNotFoundError:
            seen = None
        except OSError as e:
            raise TokenFileError(f"{self.path}: cannot read the operator token file: {e}") from e
        if seen is not None and seen == self._seen and self._token is not None:
            return self._token
        self._token = None
        token = load_or_create_token(self.path, owners=self._owners)
        # Remembered under what lstat saw before the read: were the file
        # replaced in between, the next lstat differs and it is read again.
        self._seen, self._token = seen, token
        return token


def _publish_private(path: Path, text: str, what: str, error: type[HiveError]) -> None:
    """Create ``path`` (0600) holding ``text`` unless it exists; never half-written.

    ``text`` goes to a private ``O_EXCL`` temporary file, is synced, and is
    published with ``link(2)``, which fails when ``path`` exists: of several
    processes starting together exactly one file wins, and no reader ever
    sees a partial one.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise error(f"{path}: cannot create {what}: {e}") from e
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            # umask cannot loosen 0600, but a pre-set umask could tighten it oddly.
            os.fchmod(f.fileno(), 0o600)
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process's file won
            os.link(temp, path)
    except OSError as e:
        raise error(f"{path}: cannot create {what}: {e}") from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _read_private(
    path: Path,
    what: str,
    error: type[HiveError],
    fix: str,
    limit: int,
    owners: Collection[int] = (),
) -> bytes:
    """Up to ``limit`` bytes of ``path``, a regular file of ours (or root's) only its owner reads.

    Symlinks are refused (``O_NOFOLLOW``); ``FileNotFoundError`` passes
    through; anything else wrong raises ``error`` naming ``what`` (and ``fix``
    when others could read it).
    """
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the worker in open(2)
        # (the fstat below then refuses anything but a regular file).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{path}: cannot open {what}: {e}") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {what} is not a regular file")
        if info.st_uid not in {0, os.geteuid(), *owners}:
            # Someone else made it (in STATE, the core's uid could have): a
            # secret another account chose, and may know, is never adopted.
            raise error(
                f"{path}: {what} belongs to uid {info.st_uid}, not to this process or root; "
                "remove it (a new one is made) after checking who wrote it"
            )
        _owner_only(path, info, f"{what} is readable by others", fix, error)
        return f.read(limit)


def _owner_only(
    path: Path, info: os.stat_result, problem: str, fix: str, error: type[HiveError]
) -> None:
    """Raise ``error`` (``problem``, the mode, ``fix``) when group or others have any access."""
    if info.st_mode & 0o077:
        raise error(f"{path}: {problem} (mode {stat.S_IMODE(info.st_mode):04o}); {fix}")


def _read_token(path: Path, owners: Collection[int] = ()) -> str:
    """The token at ``path``; FileNotFoundError when absent, TokenFileError when unusable."""
    raw = _read_private(
        path, "the operator token file", TokenFileError, "chmod 600 it", 4096, owners
    )
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError as e:
        raise TokenFileError(f"{path}: the operator token is not ASCII") from e
    if len(token) < 16:
        raise TokenFileError(f"{path}: the operator token is empty or too short")
    return token


def cookie_name(tls: bool) -> str:
    """The session cookie's name; with TLS the ``__Host-`` prefix pins it to this origin."""
    return "__Host-hive_session" if tls else "hive_session"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


# --- the session key --------------------------------------------------------------


def session_dir(state_dir: Path) -> Path:
    """The gateway's own directory under the state directory (0700, its user's)."""
    return state_dir / "gateway"


def ensure_session_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made 0700 if missing)."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as e:
        raise SessionKeyError(f"{path}: cannot make the gateway's state directory: {e}") from e
    if not stat.S_ISDIR(info.st_mode):
        raise SessionKeyError(f"{path}: not a directory")
    _owner_only(
        path,
        info,
        "the gateway's state directory is open to others",
        "chmod 700 it",
        SessionKeyError,
    )
    return path


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte session key at ``path``; created (0600) by the first caller.

    Published whole (:func:`_publish_private`): of several workers starting
    together exactly one key wins, and none reads a partial file.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    _publish_private(
        path, secrets.token_bytes(_KEY_BYTES).hex(), "the session key", SessionKeyError
    )
    try:
        return _read_key(path)
    except FileNotFoundError as e:
        raise SessionKeyError(f"{path}: the session key vanished while it was made") from e


def _read_key(path: Path) -> bytes:
    """The key at ``path``; FileNotFoundError when absent, SessionKeyError when unusable."""
    text = _read_private(
        path, "the session key", SessionKeyError, "delete it (every session ends)", 256
    ).strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SessionKeyError(f"{path}: the session key is not hex") from e
    if len(key) != _KEY_BYTES:
        raise SessionKeyError(f"{path}: the session key is not {_KEY_BYTES} bytes")
    return key


# --- revocations --------------------------------------------------------------------


class Revocations:
    """Handles of ended sessions until they expire, shared through a file if given one.

    Records are 16 bytes: the 12-byte handle and the session's expiry (32-bit
    Unix seconds, big-endian). Writers append under ``flock`` on a lock file
    beside it (``revoked.lock``) and, straight after the append, still under
    the lock, bump the 8-byte *generation* at the start of that lock file.
    Every reader maps the lock file into memory (shared) and compares the
    generation on each lookup - a memory read, no system call on the request
    path - and re-reads the file when it moved. The bump comes after the
    append and before ``add`` returns, so a lookup that starts after a logout
    answered sees it. Merging (never replacing) means a record once seen stays
    refused until its session expires, even if the file were lost.

    The lock file is never replaced by this code. Should its name come to
    name another file (removed by hand while the gateway runs), a writer that
    finds it so bumps both generations and follows the new one, and every
    reader looks again at least once a minute.
    """

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time):
        self._path = path
        self._clock = clock
        self._known: dict[bytes, int] = {}
        self._generation: mmap.mmap | None = None
        self._mapped: tuple[int, int] = (0, 0)  # (device, inode) of the mapped lock file
        self._seen: bytes | None = None  # the generation the last merge read the file under
        self._purged_at = 0.0
        if path is not None:
            try:
                os.close(self._open_file())
            except OSError as e:
                raise SessionKeyError(f"{path}: cannot open the revocation file: {e}") from e
            lock_path = self._lock_path()
            try:
                fd = os.open(
                    lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600
                )
            except OSError as e:
                raise SessionKeyError(f"{lock_path}: cannot open the revocation lock: {e}") from e
            try:
                self._generation, self._mapped = self._map(fd, lock_path)
            finally:
                os.close(fd)
            self._refresh()

    @staticmethod
    def _map(fd: int, lock_path: Path) -> tuple[mmap.mmap, tuple[int, int]]:
        """The lock file's first 8 bytes, mapped shared (made 8 bytes long if shorter)."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SessionKeyError(f"{lock_path}: the revocation lock is not a regular file")
            if info.st_size < _GENERATION_BYTES:
                # Only ever lengthened, never shortened: a mapped page that a
                # truncation took away would kill the reader (SIGBUS).
                os.ftruncate(fd, _GENERATION_BYTES)
            mapped = mmap.mmap(fd, _GENERATION_BYTES, mmap.MAP_SHARED)
        except OSError as e:
            raise SessionKeyError(f"{lock_path}: cannot map the revocation lock: {e}") from e
        return mapped, (info.st_dev, info.st_ino)

    def __contains__(self, handle: bytes) -> bool:
        self._refresh()
        return handle in self._known

    def add(self, handle: bytes, expires: int) -> None:
        """Record an ended session (visible to every reader once this returns).

        :class:`SessionKeyError` when it cannot be recorded for the others
        (this store refuses the session all the same).
        """
        self._known[handle] = expires
        if self._path is None or self._generation is None:
            return
        try:
            self._append(handle + expires.to_bytes(4, "big"))
        except OSError as e:
            raise SessionKeyError(
                f"{self._path}: a session's end could not be recorded: {e}"
            ) from e

    def _open_file(self) -> int:
        """The revocation file for appending; a regular file only, never a wait."""
        assert self._path is not None
        # O_NONBLOCK: a FIFO in its place must not hang the worker (with the lock held).
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(self._path, flags, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{self._path}: not a regular file")
        return fd

    def _append(self, record: bytes) -> None:
        with self._locked() as lock_fd:
            fd = self._open_file()
            try:
                size = os.fstat(fd).st_size
                if size % _RECORD_BYTES:
                    # A torn record at the end (a write cut short before): every
                    # record after it would be read misaligned. Gone, under the lock.
                    size -= size % _RECORD_BYTES
                    os.ftruncate(fd, size)
                written = os.write(fd, record)
                if written != len(record):
                    os.ftruncate(fd, size)
                    raise OSError(f"only {written} of {len(record)} bytes were written")
                size += written
            finally:
                os.close(fd)
            # Straight after the append: a reader that sees the new generation
            # reads a file that has the record, whatever happens next.
            self._bump(lock_fd)
            if size > _REVOKED_COMPACT_BYTES:
                try:
                    self._compact()
                except OSError as e:
                    # The record is written and announced; the file stays larger
                    # (a full disk, say) and the next logout tries again.
                    _log.warning("sessions.compaction_failed", error=str(e))

    def _bump(self, lock_fd: int) -> None:
        """Move the generation on (lock held); follow the lock file if it was replaced."""
        generation = self._generation
        assert generation is not None
        info = os.fstat(lock_fd)
        if (info.st_dev, info.st_ino) != self._mapped:
            # The name names another file now: readers of the old one hear of
            # this record too, and from now on this writer bumps the new one.
            _bumped(generation)
            self._follow_lock()
            generation = self._generation
            assert generation is not None
        _bumped(generation)

    def _lock_path(self) -> Path:
        assert self._path is not None
        return self._path.with_name(self._path.name + ".lock")

    def _locked(self) -> contextlib.AbstractContextManager[int]:
        lock_path = self._lock_path()

        @contextlib.contextmanager
        def hold() -> Iterator[int]:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)

        return hold()

    def _compact(self) -> None:
        """Rewrite the file without expired records (lock held); nothing left behind on failure."""
        assert self._path is not None
        now = self._clock()
        live = {h: e for h, e in self._parse(self._read()).items() if e > now}
        temp = self._path.with_name(f".{self._path.name}.{os.getpid()}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(h + e.to_bytes(4, "big") for h, e in live.items()))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _read(self) -> bytes:
        assert self._path is not None
        # O_NONBLOCK and a regular file only: a FIFO in its place must not hang the worker.
        fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(f"{self._path}: not a regular file")
            return f.read()

    @staticmethod
    def _parse(data: bytes) -> dict[bytes, int]:
        whole = len(data) - len(data) % _RECORD_BYTES  # a record being appended: next time
        return {
            data[i : i + _HANDLE_BYTES]: int.from_bytes(data[i + _HANDLE_BYTES : i + _RECORD_BYTES])
            for i in range(0, whole, _RECORD_BYTES)
        }

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._purged_at > _PURGE_EVERY:
            self._purged_at = now
            for handle in [h for h, e in self._known.items() if e <= now]:
                del self._known[handle]
            self._follow_lock()  # first: a new mapping is read from at once
        generation = self._generation
        if generation is not None and generation[:_GENERATION_BYTES] != self._seen:
            # A logout: a writer that found the lock file replaced bumped the
            # old one once and the new one from then on - follow it now.
            self._follow_lock()
            generation = self._generation
            if generation is not None:
                now_at = generation[:_GENERATION_BYTES]
                try:
                    self._known.update(self._parse(self._read()))
                except OSError:
                    pass  # gone or unreadable: keep what is known, try again next lookup
                else:
                    # The generation read *before* the file: a bump meanwhile
                    # makes the next lookup read it again.
                    self._seen = now_at

    def _follow_lock(self) -> None:
        """Map the lock file anew if its name names another file now.

        Readers ask once a minute, a writer whenever its lock is another file.
        Mapped through a descriptor of its own: ``mmap`` keeps a duplicate of
        the descriptor it maps, and a duplicate of the locked one would hold
        the ``flock`` for as long as the mapping lives.
        """
        if self._generation is None:
            return
        lock_path = self._lock_path()
        try:
            info = os.stat(lock_path, follow_symlinks=False)
            if (info.st_dev, info.st_ino) == self._mapped:
                return
            fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return  # gone for now: the old mapping serves until a writer makes one
        try:
            self._generation, self._mapped = self._map(fd, lock_path)
            self._seen = None  # read the file again under the new generation
        except SessionKeyError:
            pass  # not a regular file: keep the old mapping
        finally:
            os.close(fd)


def _bumped(generation: mmap.mmap) -> None:
    """Add one to the 8-byte generation counter (the caller holds the lock)."""
    value = (int.from_bytes(generation[:_GENERATION_BYTES], "little") + 1) % (1 << 64)
    generation[:_GENERATION_BYTES] = value.to_bytes(_GENERATION_BYTES, "little")


# --- sessions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One operator session: its CSRF token, when it ends (Unix seconds), its view id.

    ``view_id`` is the public handle that the session's view capabilities
    start with (it names the session's expiry and revocation handle).
    """

    csrf_token: str
    expires_at: float
    view_id: str = ""

    def csrf_ok(self, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token (constant time)."""
        return given is not None and tokens_equal(given, self.csrf_token)


class SessionStore:
    """Self-verifying sessions under one key; ended ones in :class:`Revocations`.

    Without a ``key`` the store makes a random one of its own (one process
    only: tests, tools); :meth:`shared` opens the gateway's key and
    revocation file so that every worker process agrees.
    """

    def __init__(
        self,
        ttl_seconds: float,
        *,
        key: bytes | None = None,
        revocations: Revocations | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        root = key if key is not None else secrets.token_bytes(_KEY_BYTES)
        # One subkey per use: a value made for one purpose never verifies as another.
        self._cookie_key = _mac(root, b"hive-boundary session cookie")
        self._csrf_key = _mac(root, b"hive-boundary csrf token")
        self._handle_key = _mac(root, b"hive-boundary session handle")
        self._view_key = _mac(root, b"hive-boundary view capability")
        self._revoked = revocations if revocations is not None else Revocations(clock=clock)
        self._verified_cache: dict[str, tuple[bytes, Session]] = {}

    @classmethod
    def shared(
        cls, directory: Path, ttl_seconds: float, *, clock: Callable[[], float] = time.time
    ) -> SessionStore:
        """The store every gateway worker shares: key and revocations under ``directory``."""
        ensure_session_dir(directory)
        key = load_or_create_key(directory / KEY_FILE)
        return cls(
            ttl_seconds,
            key=key,
            revocations=Revocations(directory / REVOKED_FILE, clock=clock),
            clock=clock,
        )

    def create(self) -> tuple[str, Session]:
        """A new session: (the value to put in the cookie, the session)."""
        session_id = secrets.token_urlsafe(_TOKEN_BYTES)
        expires = int(self._clock() + self.ttl)
        if not 0 < expires < 1 << 32:
            raise ValueError("session expiry out of range")
        cookie = f"{session_id}.{expires}.{self._cookie_mac(session_id, expires)}"
        return cookie, self._session(session_id, expires)

    def _cookie_mac(self, session_id: str, expires: int) -> str:
        return _b64(_mac(self._cookie_key, f"{session_id}.{expires}".encode("ascii")))

    def _handle(self, session_id: str) -> bytes:
        return _mac(self._handle_key, session_id.encode("ascii"))[:_HANDLE_BYTES]

    def _session(self, session_id: str, expires: int, handle: bytes | None = None) -> Session:
        csrf = _b64(_mac(self._csrf_key, session_id.encode("ascii")))
        handle = handle if handle is not None else self._handle(session_id)
        view_id = _b64(expires.to_bytes(4, "big") + handle)
        return Session(csrf, float(expires), view_id)

    def _verified(self, cookie: str | None) -> tuple[str, int] | None:
        """(id, expiry) of a cookie this store issued, whatever its state; None if forged."""
        if not cookie or len(cookie) > _COOKIE_MAX:
            return None
        parts = cookie.split(".")
        if len(parts) != 3:
            return None
        session_id, expires_text, mac = parts
        if (
            len(session_id) != _SESSION_ID_CHARS
            or not 0 < len(expires_text) <= 10
            or not expires_text.isdigit()
            or not expires_text.isascii()
            or not set(session_id) <= _B64URL_ALPHABET
        ):
            return None
        expires = int(expires_text)
        if not tokens_equal(mac, self._cookie_mac(session_id, expires)):
            return None
        return session_id, expires

    def get(self, cookie: str | None) -> Session | None:
        """The live session for a cookie value, or None (absent, forged, expired, revoked)."""
        if not cookie or len(cookie) > _COOKIE_MAX:
            return None
        # Verified cookies are remembered by their value, so a browser's next
        # request costs one dict lookup, not three HMACs (nor a SHA-256: it was
        # a third of this method). Holding the values adds no secret to this
        # process's memory: the key that can mint any cookie is here already.
        # A value that was never verified is simply not found (a keyed string
        # hash, then an equality check against issued values only). Expiry and
        # revocation are checked on every request all the same.
        known = self._verified_cache.get(cookie)
        if known is None:
            verified = self._verified(cookie)
            if verified is None:
                return None
            session_id, expires = verified
            handle = self._handle(session_id)
            known = (handle, self._session(session_id, expires, handle))
            if len(self._verified_cache) >= _VERIFIED_CACHE:
                self._verified_cache.clear()
            self._verified_cache[cookie] = known
        handle, session = known
        if session.expires_at <= self._clock() or handle in self._revoked:
            return None
        return session

    def revoke(self, cookie: str | None) -> None:
        """End a session (logout) and its view capabilities, for every worker at once.

        Only a cookie this store issued is recorded (a forged one cannot grow
        the file); an expired one needs no record.
        """
        verified = self._verified(cookie)
        if verified is None:
            return
        session_id, expires = verified
        if expires > self._clock():
            self._revoked.add(self._handle(session_id), expires)

    def _view_mac(self, view_id: str, agent: str) -> str:
        message = f"agent.ui.view\0{view_id}\0{agent}".encode()
        return _b64(_mac(self._view_key, message)[:_VIEW_MAC_BYTES])

    def view_capability(self, session: Session, agent: str) -> str:
        """The capability that opens ``agent``'s UI space for ``session`` (and nothing else)."""
        if not session.view_id:
            raise ValueError("this session hands out no view capabilities")
        return session.view_id + self._view_mac(session.view_id, agent)

    def view_session(self, capability: str, agent: str) -> Session | None:
        """The live session that issued ``capability`` for ``agent``, or None.

        None for anything malformed, forged, issued for another agent, or of a
        session that has ended (logout, expiry, replaced by a login).
        """
        if len(capability) != VIEW_CAPABILITY_LENGTH or not set(capability) <= _VIEW_ALPHABET:
            return None
        view_id, mac = capability[:_VIEW_ID_CHARS], capability[_VIEW_ID_CHARS:]
        if not tokens_equal(mac, self._view_mac(view_id, agent)):
            return None
        raw = base64.urlsafe_b64decode(view_id + "==")
        expires, handle = int.from_bytes(raw[:4], "big"), raw[4:]
        if expires <= self._clock() or handle in self._revoked:
            return None
        # The session as the capability knows it: no cookie, so no CSRF token.
        return Session("", float(expires), view_id)


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
