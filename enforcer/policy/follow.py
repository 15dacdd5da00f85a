"""One live policy across processes: the core publishes its revision, the gateway follows.

The core decides which policy version is live (it loads at start and on the
operator's ``policy.reload``). Other enforcement points in their own
processes - the gateway's workers - must decide with that same version, not
with whatever the files say. So:

- the core writes its live revision to ``RUN/policy-revision`` after start-up
  and after every reload (:func:`publish_revision`: a temporary file renamed
  into place, so a reader sees one whole revision or the previous one);
- each follower checks that file every :data:`FOLLOW_SECONDS`
  (:func:`follow`) and, when it names another revision than the follower's
  own, reloads from the same policy directory *expecting that revision*
  (:meth:`PolicyEngine.reload` ``expect=``): files edited after the core's
  reload are refused, and the follower keeps its version until the core
  publishes again. A follower therefore runs only versions the core ran,
  at most :data:`FOLLOW_SECONDS` (plus a load) after the core.

hive-priv does not follow: its network table is built at start
(``docs/operations.md`` says how to apply a changed network section).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

from enforcer.log import get_logger
from enforcer.policy.engine import NO_POLICY, PolicyEngine

__all__ = ["FOLLOW_SECONDS", "REVISION_FILE", "follow", "publish_revision", "published_revision"]

REVISION_FILE = "policy-revision"
"""The file, in the run directory, naming the core's live policy revision."""

FOLLOW_SECONDS = 1.0
"""How often a follower checks the core's revision."""

# A revision is a content hash in hex (loader.revision_of), or "none".
_REVISION = re.compile(r"[0-9a-f]{8,128}|" + NO_POLICY)


def publish_revision(run_dir: Path, revision: str) -> None:
    """Record ``revision`` as the live one in ``run_dir`` (whole or not at all)."""
    path = run_dir / REVISION_FILE
    tmp = run_dir / f".{REVISION_FILE}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash of this very pid
    try:
        # Readable by the gateway's uid (a revision is no secret: GET /api/policy shows it).
        # O_EXCL: never write through a name someone else put there.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(revision + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def published_revision(run_dir: Path) -> str | None:
    """The revision the core published, or None (none yet, unreadable or malformed)."""
    try:
        text = (run_dir / REVISION_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _REVISION.fullmatch(text) else None


async def follow(engine: PolicyEngine, run_dir: Path, *, every: float = FOLLOW_SECONDS) -> None:
    """Keep ``engine`` on the core's published revision; runs until cancelled."""
    log = get_logger("policy.follow")
    tried: str | None = None  # the published revision last tried and refused
    stamp: tuple[int, int] | None = None
    while True:
        await asyncio.sleep(every)
        try:
            st = os.stat(run_dir / REVISION_FILE)
        except OSError:
            continue
        # A refused revision is tried again only once the core publishes again
        # (a new file: new inode or mtime), not every tick: a load compiles.
        now = (st.st_ino, st.st_mtime_ns)
        wanted = published_revision(run_dir)
        if wanted is None or wanted == engine.revision or wanted == NO_POLICY:
            tried = None
            stamp = now
            continue
        if wanted == tried and now == stamp:
            continue
        tried, stamp = wanted, now
        result = await asyncio.to_thread(engine.reload, expect=wanted)
        if result.ok:
            tried = None
            log.info("policy.followed", revision=result.revision)
        else:
            log.warning("policy.behind", wanted=wanted, live=result.revision, reason=result.error)
