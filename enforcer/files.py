"""Replacing a file whole: readers see the old content or the new, never a part.

Also safe in a directory someone else may write to (``RUN`` and ``STATE`` are
``root:hive-core 1775``): the temporary file has a fresh name nobody can
guess, is created exclusively and never through a symlink, so nothing planted
there is written through or ends up as the file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["replace_file"]


def replace_file(path: Path, data: bytes, *, mode: int) -> None:
    """Make ``path`` hold exactly ``data`` (permissions ``mode``): written, synced, renamed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself survives a crash once the directory is synced.
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
