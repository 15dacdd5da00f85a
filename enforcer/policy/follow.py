"""One live policy across processes: the core publishes its revision, the gateway follows.

The core decides which policy version is live (it loads at start and on the
operator's ``policy.reload``). Other enforcement points in their own
processes - the gateway's workers - must decide with that same version, not
with whatever the files say. So:

- the core writes its live revision to ``RUN/policy-revision`` after start-up
  and after every reload (:func:`publish_revision`: a temporary file renamed
  into place, so a reader sees one whole revision or the previous one);
- each follower checks that file every :data:`FOLLOW_SECONDS`
  (:func:`follow` in an event loop, :meth:`Follower.poll` elsewhere) and,
  when it names another revision than the follower's own, reloads from the
  same policy directory *expecting that revision*
  (:meth:`PolicyEngine.reload` ``expect=``): files edited after the core's
  reload are refused, and the follower keeps its version until the core
  publishes again. A follower therefore runs only versions the core ran,
  at most :data:`FOLLOW_SECONDS` (plus a load) after the core.

hive-priv follows too (:class:`Follower`, polled from its housekeeping thread), except
a version whose network section differs from the one its nftables table was
built from: that takes a restart and ``netns reconcile``
(``docs/operations.md``), so it is refused and logged until then.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from enforcer.files import replace_file
from enforcer.log import get_logger
from enforcer.policy.engine import NO_POLICY, Policy, PolicyEngine, ReloadResult

__all__ = [
    "FOLLOW_SECONDS",
    "REVISION_FILE",
    "Follower",
    "follow",
    "publish_revision",
    "published_revision",
]

REVISION_FILE = "policy-revision"
"""The file, in the run directory, naming the core's live policy revision."""

FOLLOW_SECONDS = 1.0
"""How often a follower checks the core's revision."""

# A revision is a content hash in hex (loader.revision_of), or "none".
_REVISION = re.compile(r"[0-9a-f]{8,128}|" + NO_POLICY)


def publish_revision(run_dir: Path, revision: str) -> None:
    """Record ``revision`` as the live one in ``run_dir`` (whole or not at all)."""
    # Readable by the gateway's uid (a revision is no secret: GET /api/policy shows it).
    replace_file(run_dir / REVISION_FILE, (revision + "\n").encode("ascii"), mode=0o644)


def published_revision(run_dir: Path) -> str | None:
    """The revision the core published, or None (none yet, unreadable or malformed).

    Read as hive-priv (root) reads anything the core can write: not through a
    symlink, only from a regular file (a FIFO would block, ``/dev/zero`` would
    never end), and at most a few hundred bytes.
    """
    try:
        fd = os.open(run_dir / REVISION_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 256).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return text if _REVISION.fullmatch(text) else None


class Follower:
    """Keeps one :class:`PolicyEngine` on the revision the core publishes in ``run_dir``.

    :meth:`due` says (cheaply: a ``stat`` and a small read) whether a reload
    should be tried now and for which revision; :meth:`take` tries it (a load:
    run it off an event loop). A refused revision is tried again only once
    the core publishes again (a new file: new inode or mtime), not every
    period: a load compiles. ``check`` may refuse a valid version for the
    follower's own reasons (hive-priv: a changed network section).
    """

    def __init__(
        self,
        engine: PolicyEngine,
        run_dir: Path,
        *,
        check: Callable[[Policy], None] | None = None,
        keep: Iterable[str] | None = None,
    ) -> None:
        self.engine = engine
        self.run_dir = run_dir
        self._check = check
        # The actions this daemon's routes bind: only their removal or
        # reclassification is this follower's concern. Comparing every action
        # with its own live version instead would leave it behind for good
        # once the core, restarted, dropped an action this daemon never used.
        self._keep = None if keep is None else frozenset(keep)
        self._tried: str | None = None  # the published revision last tried and refused
        self._stamp: tuple[int, int] | None = None
        self._log = get_logger("policy.follow")

    def due(self) -> str | None:
        """The published revision to load now, or None."""
        try:
            st = os.lstat(self.run_dir / REVISION_FILE)
        except OSError:
            return None
        now = (st.st_ino, st.st_mtime_ns)
        wanted = published_revision(self.run_dir)
        if wanted is None or wanted == self.engine.revision or wanted == NO_POLICY:
            self._tried, self._stamp = None, now
            return None
        if wanted == self._tried and now == self._stamp:
            return None
        self._tried, self._stamp = wanted, now
        return wanted

    def take(self, wanted: str) -> ReloadResult:
        """Reload expecting ``wanted``; log what came of it."""
        result = self.engine.reload(expect=wanted, check=self._check, keep=self._keep)
        if result.ok:
            self._tried = None
            self._log.info("policy.followed", revision=result.revision)
        else:
            self._log.warning(
                "policy.behind", wanted=wanted, live=result.revision, reason=result.error
            )
        return result

    def poll(self) -> ReloadResult | None:
        """:meth:`due` then :meth:`take`, in the caller's thread."""
        wanted = self.due()
        return None if wanted is None else self.take(wanted)


async def follow(
    engine: PolicyEngine,
    run_dir: Path,
    *,
    every: float = FOLLOW_SECONDS,
    keep: Iterable[str] | None = None,
) -> None:
    """Keep ``engine`` on the core's published revision; runs until cancelled."""
    follower = Follower(engine, run_dir, keep=keep)
    log = get_logger("policy.follow")
    while True:
        await asyncio.sleep(every)
        try:
            wanted = follower.due()
            if wanted is not None:
                await asyncio.to_thread(follower.take, wanted)
        except Exception:
            # Whatever went wrong this time, the next period tries again: a
            # follower that stopped following would stay behind for good.
            log.exception("policy.follow_failed")
