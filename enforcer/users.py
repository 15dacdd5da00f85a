"""System users: ``hive-core``, ``hive-gateway`` and one ``hive-a-<name>`` per agent.

Thin shell over ``useradd``/``userdel`` (Debian's shadow tools), idempotent:
creating a user that exists returns it unchanged, removing one that does not
exist is a no-op. Every user is a system user with its own group, no home
directory and no login shell.

Agent users get their uid (and the same gid) from hive-priv, not from
``useradd``: ``useradd --system`` hands the lowest free id out again once its
user is gone, so a new agent could inherit what an old one left behind. The
choice of the next id is pure (:func:`next_free_id` over
:data:`AGENT_IDS`); hive-priv keeps the high-water mark durably
(``enforcer.containers``) and calls :func:`create_user_with_id`.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from enforcer.errors import BadRequest, HiveError

__all__ = [
    "AGENT_IDS",
    "AGENT_USER_PREFIX",
    "CORE_USER",
    "GATEWAY_USER",
    "IdTaken",
    "IdsExhausted",
    "SystemUser",
    "UserError",
    "agent_user_name",
    "create_user_with_id",
    "ensure_service_users",
    "ensure_system_user",
    "host_id_in_use",
    "lookup_user",
    "next_free_id",
    "parse_subordinate_ranges",
    "remove_system_user",
]

CORE_USER = "hive-core"
GATEWAY_USER = "hive-gateway"
AGENT_USER_PREFIX = "hive-a-"
_MAX_USER_NAME = 32

# Agents' uids and gids: above 16-bit ids and systemd's dynamic users
# (61184-65519), below Debian's subordinate-id ranges for user namespaces
# (SUB_UID_MIN 100000; ranges listed in /etc/subuid are skipped anyway), and
# outside systemd-nspawn's container ranges (from 524288). 30000 agents over
# the life of one hive-priv state directory: none is ever handed out twice.
AGENT_IDS = range(70000, 100000)

_ID_IN_USE = 4  # useradd(8)/groupadd(8): "UID/GID already in use (and no -o)"


class UserError(HiveError):
    """useradd/userdel failed."""

    code = "user_error"


class IdTaken(UserError):
    """The chosen uid/gid was taken meanwhile (by someone else): try the next one."""


class IdsExhausted(UserError):
    """Every id of the agents' range has been handed out once."""

    code = "ids_exhausted"
    status = 503


@dataclass(frozen=True, slots=True)
class SystemUser:
    """A user as hive-priv needs it: name, uid, primary gid, and whether we just made it."""

    name: str
    uid: int
    gid: int
    created: bool = False


def agent_user_name(agent: str, prefix: str = AGENT_USER_PREFIX) -> str:
    """``hive-a-<agent>``; refuses names too long for a system user."""
    name = f"{prefix}{agent}"
    if len(name) > _MAX_USER_NAME:
        raise BadRequest(f"user name {name!r} longer than {_MAX_USER_NAME} characters")
    return name


def lookup_user(name: str) -> SystemUser | None:
    """The user ``name`` if it exists."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return SystemUser(name, pw.pw_uid, pw.pw_gid)


def next_free_id(start: int, ids: range, in_use: Callable[[int], bool]) -> int:
    """The first id of ``ids`` at or after ``start`` that ``in_use`` does not claim.

    Never one below ``start`` (the high-water mark): an id handed out once is
    not handed out again, even after its user is gone. :class:`IdsExhausted`
    when none is left.
    """
    for candidate in range(max(start, ids.start), ids.stop):
        if not in_use(candidate):
            return candidate
    raise IdsExhausted(
        f"no agent uid left: every id in {ids.start}-{ids.stop - 1} has been handed out "
        "once (ids are never reused); widen the range or retire this state directory"
    )


def parse_subordinate_ranges(text: str) -> list[range]:
    """The id ranges of an ``/etc/subuid`` or ``/etc/subgid`` text (``name:start:count``)."""
    found = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        start, count = int(parts[1]), int(parts[2])
        found.append(range(start, start + count))
    return found


def _subordinate_ranges(paths: Iterable[Path]) -> list[range]:
    found: list[range] = []
    for path in paths:
        try:
            found += parse_subordinate_ranges(path.read_text(errors="replace"))
        except FileNotFoundError:
            continue
    return found


def host_id_in_use(candidate: int) -> bool:
    """Is ``candidate`` a uid or gid on this host, or mapped into someone's user namespace?

    An id inside a subordinate range may be a process of another user's
    rootless container: an agent must never share it.
    """
    try:
        pwd.getpwuid(candidate)
    except KeyError:
        pass
    else:
        return True
    try:
        grp.getgrgid(candidate)
    except KeyError:
        pass
    else:
        return True
    subordinate = _subordinate_ranges((Path("/etc/subuid"), Path("/etc/subgid")))
    return any(candidate in r for r in subordinate)


_USERADD_SYSTEM = [
    "useradd",
    "--system",
    "--no-create-home",
    "--home-dir",
    "/nonexistent",
    "--shell",
    "/usr/sbin/nologin",
]


def _shadow(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a shadow tool (``useradd``, ``userdel``, ...) with its output in a file, not a pipe.

    With pipes, a hive-priv killed mid-call (``tests/reliability/test_priv_kill.py``)
    leaves the tool writing a warning into a pipe nobody reads: SIGPIPE kills
    it while it holds ``/etc/passwd.lock``, and every later ``useradd`` on the
    host fails ("lock ... already used") until that process is reaped.
    """
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False)
        out.seek(0)
        text = out.read(64 * 1024).decode(errors="replace")
    return subprocess.CompletedProcess(argv, proc.returncode, text, text)


def create_user_with_id(name: str, uid: int) -> SystemUser:
    """Create system user ``name`` with uid ``uid`` and its own group ``name`` with gid ``uid``.

    :class:`IdTaken` if that uid or gid turned out to be in use (someone took
    it since it was chosen): nothing is left behind, the caller tries the next
    id. Any other failure is a :class:`UserError`.
    """
    # The group first, with its gid explicit: useradd --user-group gives a
    # system user's group a gid of its own choosing (the lowest free system
    # gid), which would be handed out again like the uids were.
    group = _shadow(["groupadd", "--system", "--gid", str(uid), name])
    if group.returncode == _ID_IN_USE:
        raise IdTaken(f"groupadd {name}: gid {uid} in use")
    if group.returncode != 0:
        raise UserError(f"groupadd {name} failed: {group.stderr.strip() or group.returncode}")
    proc = _shadow([*_USERADD_SYSTEM, "--uid", str(uid), "--gid", str(uid), name])
    made = lookup_user(name)
    if proc.returncode != 0 or made is None or (made.uid, made.gid) != (uid, uid):
        remove_system_user(name)  # the user if made, else the group made above
        if proc.returncode == _ID_IN_USE:
            raise IdTaken(f"useradd {name}: uid {uid} in use")
        raise UserError(f"useradd {name} failed: {proc.stderr.strip() or proc.returncode}")
    return SystemUser(made.name, made.uid, made.gid, created=True)


def ensure_system_user(name: str) -> SystemUser:
    """Create system user ``name`` (with its own group) unless it exists."""
    existing = lookup_user(name)
    if existing is not None:
        return existing
    proc = _shadow([*_USERADD_SYSTEM, "--user-group", name])
    made = lookup_user(name)
    if made is None:
        raise UserError(f"useradd {name} failed: {proc.stderr.strip() or proc.returncode}")
    return SystemUser(made.name, made.uid, made.gid, created=proc.returncode == 0)


def remove_system_user(name: str) -> bool:
    """Remove user ``name`` and its group (not its files); True if the user existed.

    A group ``name`` without its user (left by a creation interrupted between
    groupadd and useradd) is removed too.
    """
    if lookup_user(name) is None:
        try:
            grp.getgrnam(name)
        except KeyError:
            return False
        proc = _shadow(["groupdel", name])
        if proc.returncode != 0:
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                raise UserError(f"groupdel {name} failed: {proc.stderr.strip() or proc.returncode}")
        return False
    proc = _shadow(["userdel", name])
    if proc.returncode != 0 and lookup_user(name) is not None:
        raise UserError(f"userdel {name} failed: {proc.stderr.strip() or proc.returncode}")
    return True


def ensure_service_users() -> tuple[SystemUser, SystemUser]:
    """Set-up: the core's and the gateway's users."""
    return ensure_system_user(CORE_USER), ensure_system_user(GATEWAY_USER)
