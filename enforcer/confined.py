"""Confined file access beneath one directory: ``ReadAgentStateFile`` and its writer.

A relative path is resolved one component at a time with ``openat``
(``os.open(..., dir_fd=...)``) starting from an already-open directory fd:
every component is opened with ``O_NOFOLLOW`` (a symlink anywhere is refused,
not followed), directories additionally with ``O_DIRECTORY``, and the final
file with ``O_NONBLOCK`` (a FIFO planted by the agent must not hang us) and
then checked with ``fstat`` to be a regular file with one link (a hard link
planted beneath the root may name a file outside it). ``..``, ``.``, empty
components, absolute paths and NUL bytes are refused before any system call.

Because each step is relative to a file descriptor we already hold, an agent
racing us by swapping a directory for a symlink cannot make the walk leave
the starting directory: the swapped-in symlink is simply refused (``ELOOP``).

The pure part (:func:`split_rel_path`) is separate from the I/O so it can be
property-tested on its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from enforcer.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HiveError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_PATH_BYTES",
    "ConfinementError",
    "open_dir_confined",
    "open_root_dir",
    "read_agent_state_file",
    "read_confined",
    "split_rel_path",
    "write_confined",
]

DEFAULT_MAX_BYTES = 4 << 20
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux
MAX_DEPTH = 32

# O_NOCTTY: opening a terminal device must never make it our controlling tty.
_BASE = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _BASE
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _BASE


class ConfinementError(Forbidden):
    """The path would leave the confining directory (symlink, special file)."""

    code = "confined"


def split_rel_path(rel_path: str) -> tuple[str, ...]:
    """Validate ``rel_path`` and return its components; raise :class:`BadRequest`.

    Pure. Accepted: ``a/b/c`` with non-empty components, none ``.`` or
    ``..``, no NUL, not absolute, valid UTF-8 (no lone surrogates), each
    component at most 255 bytes, the whole at most 4096 bytes and 32 deep.
    Percent-encodings and backslashes are not decoded: they are literal
    characters of a file name, so ``%2e%2e`` names a file called ``%2e%2e``.
    """
    if not isinstance(rel_path, str):
        raise BadRequest("rel_path must be a string")
    if not rel_path:
        raise BadRequest("rel_path is empty")
    if "\x00" in rel_path:
        raise BadRequest("rel_path contains a NUL byte")
    try:
        encoded = rel_path.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest("rel_path is not valid UTF-8") from e
    if len(encoded) > MAX_PATH_BYTES:
        raise BadRequest(f"rel_path longer than {MAX_PATH_BYTES} bytes")
    if rel_path.startswith("/"):
        raise BadRequest("rel_path must be relative")
    parts = tuple(rel_path.split("/"))
    if len(parts) > MAX_DEPTH:
        raise BadRequest(f"rel_path deeper than {MAX_DEPTH} components")
    for part in parts:
        if part == "":
            raise BadRequest("rel_path has an empty component")
        if part in {".", ".."}:
            raise BadRequest("rel_path has a dot segment")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise BadRequest(f"rel_path component longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


def _os_error(e: OSError, what: str) -> HiveError:
    if e.errno == errno.ELOOP:
        return ConfinementError(f"{what}: symbolic links are refused")
    if e.errno in {errno.ENOENT, errno.ENOTDIR}:
        return NotFound(f"{what}: no such file")
    if e.errno == errno.ENAMETOOLONG:
        return BadRequest(f"{what}: name too long")
    if e.errno in {errno.EACCES, errno.EPERM}:
        return Forbidden(f"{what}: permission denied")
    if e.errno == errno.EISDIR:
        return BadRequest(f"{what}: is a directory")
    if e.errno in {errno.EAGAIN, errno.EWOULDBLOCK}:
        # O_NONBLOCK open of a file the agent holds a write lease on
        # (F_SETLEASE): its state, its choice; the caller may retry.
        return Conflict(f"{what}: the file is locked or leased by the agent; try again")
    if e.errno in {errno.ENOSPC, errno.EDQUOT}:
        # The disk is full: refused, retry later (503), nothing half-written.
        return Unavailable(f"{what}: no space left on device")
    return HiveError(f"{what}: {os.strerror(e.errno or 0)}")


def open_root_dir(path: Path) -> int:
    """Open the confining directory itself (it must not be a symlink)."""
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno == errno.ENOTDIR and path.is_symlink():
            raise ConfinementError("state directory: symbolic links are refused") from e
        raise _os_error(e, "state directory") from e


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def open_dir_confined(root_fd: int, parts: tuple[str, ...], *, create: bool = False) -> int:
    """Walk ``parts`` (directories) from ``root_fd``; return a new fd for the last one.

    With ``create``, missing directories are made (mode 0o750 before umask).
    """
    fd = os.dup(root_fd)
    part = "."
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o750, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except OSError as e:
        err = _os_error(e, "/".join(parts) or ".")
        if e.errno == errno.ENOTDIR:
            # O_DIRECTORY|O_NOFOLLOW on a symlink reports ENOTDIR: say which.
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    err = ConfinementError(f"{'/'.join(parts)}: symbolic links are refused")
        os.close(fd)
        raise err from e
    except BaseException:
        os.close(fd)
        raise


def read_confined(root_fd: int, rel_path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read the regular file ``rel_path`` beneath ``root_fd``, at most ``max_bytes``."""
    parts = split_rel_path(rel_path)
    with _closing(open_dir_confined(root_fd, parts[:-1])) as dir_fd:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            raise _os_error(e, rel_path) from e
    with _closing(fd):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfinementError(f"{rel_path}: not a regular file")
        if st.st_nlink != 1:
            # A hard link is a regular file beneath the root whose bytes may
            # belong to a file outside it (planted by the agent, or by anyone
            # where fs.protected_hardlinks is off): never read through one.
            raise ConfinementError(f"{rel_path}: hard-linked files are refused")
        if st.st_size > max_bytes:
            raise PayloadTooLarge(f"{rel_path}: larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        # Read one byte past the limit: the file may grow after fstat.
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"{rel_path}: larger than {max_bytes} bytes")
        return b"".join(chunks)


def read_agent_state_file(
    state_dir: Path, rel_path: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes:
    """``ReadAgentStateFile``: read ``rel_path`` confined beneath ``state_dir``."""
    split_rel_path(rel_path)  # refuse bad input before touching the disk
    with _closing(open_root_dir(state_dir)) as root_fd:
        return read_confined(root_fd, rel_path, max_bytes)


def write_confined(
    root_fd: int,
    rel_path: str,
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    mode: int = 0o640,
    make_parents: bool = False,
) -> None:
    """Atomically replace the file ``rel_path`` beneath ``root_fd`` with ``data``.

    The data goes to a fresh temporary file (``O_CREAT|O_EXCL|O_NOFOLLOW``) in
    the confined parent directory, is fsynced, then renamed over the target
    relative to the same directory fd: a symlink at the target is replaced,
    never followed, and a reader sees the old or the new content, never half.
    An existing target that is a directory or special file is refused.
    """
    parts = split_rel_path(rel_path)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{rel_path}: larger than {max_bytes} bytes")
    with _closing(open_dir_confined(root_fd, parts[:-1], create=make_parents)) as dir_fd:
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _os_error(e, rel_path) from e
        else:
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise ConfinementError(f"{rel_path}: not a regular file")
        tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BASE, mode, dir_fd=dir_fd)
        except OSError as e:
            raise _os_error(e, rel_path) from e
        try:
            with _closing(fd):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise _os_error(e, rel_path) from e
