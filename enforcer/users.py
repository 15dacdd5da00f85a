"""System users: ``hive-core``, ``hive-gateway`` and one ``hive-a-<name>`` per agent.

Thin shell over ``useradd``/``userdel`` (Debian's shadow tools), idempotent:
creating a user that exists returns it unchanged, removing one that does not
exist is a no-op. Every user is a system user with its own group, no home
directory and no login shell.
"""

from __future__ import annotations

import pwd
import subprocess
from dataclasses import dataclass

from enforcer.errors import BadRequest, HiveError

__all__ = [
    "AGENT_USER_PREFIX",
    "CORE_USER",
    "GATEWAY_USER",
    "SystemUser",
    "UserError",
    "agent_user_name",
    "ensure_service_users",
    "ensure_system_user",
    "lookup_user",
    "remove_system_user",
]

CORE_USER = "hive-core"
GATEWAY_USER = "hive-gateway"
AGENT_USER_PREFIX = "hive-a-"
_MAX_USER_NAME = 32


class UserError(HiveError):
    """useradd/userdel failed."""

    code = "user_error"


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


def ensure_system_user(name: str) -> SystemUser:
    """Create system user ``name`` (with its own group) unless it exists."""
    existing = lookup_user(name)
    if existing is not None:
        return existing
    proc = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    made = lookup_user(name)
    if made is None:
        raise UserError(f"useradd {name} failed: {proc.stderr.strip() or proc.returncode}")
    return SystemUser(made.name, made.uid, made.gid, created=proc.returncode == 0)


def remove_system_user(name: str) -> bool:
    """Remove user ``name`` and its group (not its files); True if it existed."""
    if lookup_user(name) is None:
        return False
    proc = subprocess.run(["userdel", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and lookup_user(name) is not None:
        raise UserError(f"userdel {name} failed: {proc.stderr.strip() or proc.returncode}")
    return True


def ensure_service_users() -> tuple[SystemUser, SystemUser]:
    """Set-up: the core's and the gateway's users."""
    return ensure_system_user(CORE_USER), ensure_system_user(GATEWAY_USER)
