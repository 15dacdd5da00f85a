"""Container backends behind hive-priv, and the network-namespace backend.

A *container* here is what hive-priv manages for one agent: a per-agent system
user, the agent's directories (``state/`` shared with the core's group,
``harness/`` root-only), an isolated network (namespace, veth, elements of
the project's nftables table, via :class:`netns.manager.NetnsManager`), the
agent's unix socket, and - when started - the agent's process running under
its own uid inside its own namespaces: the network one, plus a mount and an
IPC namespace of its own per run (:func:`_enter_sandbox`: private tmpfs on
``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``, a ``hidepid=invisible``
procfs, its own SysV IPC and POSIX message queues), so nothing it leaves in
those shared places outlives the run or reaches the host or another agent.
Agent uids come from a range of their own and are never handed out twice
(:func:`allocate_agent_user`).

:class:`ContainerBackend` is the interface a production backend
(systemd-nspawn, nixos-container) implements; see ``docs/backends.md``.
:class:`NetnsBackend` is the one that runs (and is tested) on this host.

Durability: every container has a record in one JSON file (written to a
temporary file, fsynced, renamed). A lifecycle operation first records what
it is about to do (``pending``), then does it, then records the result. A
hive-priv that restarts after a crash finishes or undoes each pending
operation (:meth:`NetnsBackend.recover`), so an operation is done or not done,
never half - and a container never runs without its isolation: a process is
only spawned after the namespace is up, isolation cannot be removed while the
process runs, and recovery kills a process whose namespace is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from enforcer.cgroups import AgentCgroups
from enforcer.confined import read_agent_state_file
from enforcer.errors import Conflict, HiveError, NotFound, Unavailable
from enforcer.files import replace_file
from enforcer.log import get_logger
from enforcer.users import (
    AGENT_IDS,
    AGENT_USER_PREFIX,
    IdTaken,
    SystemUser,
    agent_user_name,
    create_user_with_id,
    host_id_in_use,
    lookup_user,
    next_free_id,
    remove_system_user,
)

__all__ = [
    "AGENT_LOG_KEEP",
    "AGENT_LOG_LIMIT",
    "AGENT_MAX_FILE_BYTES",
    "AGENT_MAX_PROCESSES",
    "PRIVATE_DIRS",
    "ContainerBackend",
    "ContainerRecord",
    "IdMarkStore",
    "IsolationProvider",
    "NetnsBackend",
    "RecordStore",
    "allocate_agent_user",
    "bound_log",
    "paths_to_keep",
    "processes_of_uid",
    "program_dirs",
]

NETNS_DIR = Path("/run/netns")


def _log() -> Any:
    # Looked up at each use: structlog is configured after import (in run()).
    return get_logger("hive.containers")


class IsolationProvider(Protocol):
    """What the backend needs from the network layer (``netns.manager.NetnsManager``)."""

    def up(self, name: str, principal_roles: Sequence[str]) -> Any:
        """Bring up the isolated network; returns a ``ContainerNet``."""

    def down(self, name: str) -> None:
        """Remove everything of that container's network."""


class ContainerBackend(Protocol):
    """The lifecycle every backend implements. Each call is idempotent where it can be.

    All methods return the container's status dictionary (see ``docs/backends.md``).
    """

    def create(self, name: str, command: Sequence[str]) -> dict[str, Any]:
        """User, directories, isolated network; the container exists but is stopped."""

    def start(self, name: str) -> dict[str, Any]:
        """Start the agent process inside the isolated network."""

    def stop(self, name: str) -> dict[str, Any]:
        """Stop the agent process (graceful, then forced) and reap it."""

    def restart(self, name: str) -> dict[str, Any]:
        """Stop then start."""

    def destroy(self, name: str) -> dict[str, Any]:
        """Remove everything the container made."""

    def status(self, name: str) -> dict[str, Any]:
        """State, process, network."""

    def status_all(self) -> dict[str, dict[str, Any]]:
        """The status of every container, by name; never waits on a slow operation."""


@dataclass
class ContainerRecord:
    """The durable record of one container (one entry of the JSON record file)."""

    name: str
    user: str
    uid: int
    gid: int
    user_created: bool
    command: list[str]
    # creating | created | running | stopped | failed. "running" is also the
    # durable "should run": it is what a restarted hive-priv checks the
    # recorded pid (and its start time) against.
    state: str = "creating"
    pending: str | None = "create"
    pid: int | None = None
    pid_start: int | None = None
    exit_code: int | None = None
    net: dict[str, str] | None = None
    made_dirs: list[str] = field(default_factory=list)
    socket: str | None = None


class RecordStore:
    """The records as one JSON file, replaced atomically (temp + fsync + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, ContainerRecord]:
        """All records; an absent file means none.

        The records steer what root does (recovery removes users, directories
        and processes they name), so they are read only from hive-priv's own
        private directory, and only if hive-priv wrote them
        (:func:`_private_dir`, :func:`_own_file`): a directory or file someone
        else made there first is refused, never believed.
        """
        _private_dir(self.path.parent)
        try:
            _own_file(self.path)
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise Unavailable(f"{self.path}: unreadable container records: {e}") from e
        return {name: ContainerRecord(**rec) for name, rec in data["containers"].items()}

    def save(self, records: dict[str, ContainerRecord]) -> None:
        """Write every record; a crash leaves the old file or the new, never half."""
        _private_dir(self.path.parent)
        body = json.dumps(
            {"version": 1, "containers": {n: asdict(r) for n, r in sorted(records.items())}},
            indent=1,
        ).encode()
        replace_file(self.path, body, mode=0o600)


class IdMarkStore:
    """The agents' uid high-water mark: the lowest id never handed out, one JSON file.

    Read and written like the records (hive-priv's own private directory,
    its own file, replaced atomically and fsynced).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        """The mark; None if no id was ever handed out from this state directory."""
        _private_dir(self.path.parent)
        try:
            _own_file(self.path)
            data = json.loads(self.path.read_text(encoding="utf-8"))
            mark = data["next_id"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise Unavailable(f"{self.path}: unreadable uid mark: {e}") from e
        if not isinstance(mark, int) or isinstance(mark, bool):
            raise Unavailable(f"{self.path}: unreadable uid mark: {mark!r}")
        return mark

    def save(self, next_id: int) -> None:
        """Durably: once this returns, ``next_id - 1`` and below are never handed out."""
        _private_dir(self.path.parent)
        body = json.dumps({"version": 1, "next_id": next_id}).encode()
        replace_file(self.path, body, mode=0o600)


_ID_ATTEMPTS = 64


def allocate_agent_user(
    name: str,
    marks: IdMarkStore,
    ids: range = AGENT_IDS,
    in_use: Callable[[int], bool] = host_id_in_use,
) -> SystemUser:
    """Create agent user ``name`` with a uid (= gid) no agent of this state ever had.

    The next id at or above the mark that the host does not use is chosen,
    the mark is moved past it *durably*, and only then is the user made: a
    crash in between wastes one id but never hands one out twice. An id
    someone else takes meanwhile (another useradd) is skipped.
    """
    for _ in range(_ID_ATTEMPTS):
        mark = marks.load()
        uid = next_free_id(ids.start if mark is None else mark, ids, in_use)
        marks.save(uid + 1)
        try:
            return create_user_with_id(name, uid)
        except IdTaken:
            continue
    raise HiveError(f"cannot create {name}: {_ID_ATTEMPTS} uids in a row were taken meanwhile")


def _note_adopted_id(marks: IdMarkStore, uid: int, ids: range) -> None:
    # A pre-existing agent user hive-priv adopts: its uid, if in our range,
    # is never handed to another agent later.
    mark = marks.load()
    if uid in ids and (mark is None or uid >= mark):
        marks.save(uid + 1)


def _private_dir(path: Path) -> None:
    """``path`` as a directory only this process's uid can use (made 0700 if missing).

    An existing one must be a real directory (not a symlink), owned by us, with
    no access for group or others: anything else was made by someone else -
    for ``STATE/priv``, possibly the core before hive-priv's first start - and
    is refused (:class:`Conflict`), never adopted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if (
        not stat.S_ISDIR(st.st_mode)
        or st.st_uid != os.geteuid()
        or stat.S_IMODE(st.st_mode) & 0o077
    ):
        raise Conflict(
            f"{path} must be a directory owned by uid {os.geteuid()} with mode 0700; "
            "it was made by someone else: remove it after checking what is in it"
        )


def _own_file(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file owned by this process's uid."""
    st = path.lstat()  # FileNotFoundError passes to the caller
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise Conflict(f"{path} is not a file hive-priv wrote: refused")


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): pid + this = identity."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[19])


def _proc_state_uids(pid: int) -> tuple[str, set[int]] | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    state, uids = "", set()
    for line in lines:
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("Uid:"):
            uids = {int(x) for x in line.split()[1:]}
    return state, uids


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes with ``uid`` as real, effective, saved or fs uid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _proc_state_uids(int(entry))
        if info and uid in info[1] and info[0] != "Z":
            found.append(int(entry))
    return found


def _kill_every_process_of(uid: int, gid: int) -> None:
    """SIGKILL every process of ``uid`` at once, forking ones included.

    Signalling pids found in ``/proc`` one by one loses to an agent whose
    processes fork and exit in a chain (each pid is gone by the time its
    signal is sent, and the scan may not even see the live one): found by an
    attack review, such an agent outlived ``stop`` and ``destroy``. Instead a
    short-lived process with the agent's uid calls ``kill(-1, SIGKILL)``: the
    kernel signals every process that uid may signal - exactly that uid's
    (an agent cannot change its uid: no capabilities, no new privileges) -
    holding the task list, so no fork slips past.
    """
    if uid <= 0 or uid == os.getuid():
        raise HiveError(f"refusing to kill every process of uid {uid}")
    # A fork, no exec: an agent at its process limit (RLIMIT_NPROC) would make
    # an execve as its uid fail (EAGAIN), and a helper must work then most of
    # all. The child only drops to the uid and signals: plain system calls.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its exit status says how it went
        code = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
            code = 0
        except BaseException:  # noqa: S110 - reported by the exit status, nothing else to do
            pass
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


_CLONE_NEWNET = 0x40000000


def _shared_dir(path: Path) -> None:
    """A root-owned 0755 directory every agent traverses (``STATE/agents``, ``RUN/agents``).

    Modes are set explicitly: hive-priv runs under umask 0077. An existing
    path must be a real directory owned by root - never a symlink someone
    planted, since hive-priv creates, chowns and removes things beneath it.
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o755)  # noqa: S103 - agents must traverse it; holds no secrets
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise Conflict(f"{path} must be a directory owned by uid {os.geteuid()}")


def _enter_netns(path: Path) -> None:
    """setns(2) the calling thread into the network namespace at ``path``.

    (``os.setns`` only exists from Python 3.12; Debian 12 ships 3.11.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


# What each agent run gets privately (a tmpfs of its own, mode 1777): the
# host's world-writable directories. Sizes bound the RAM one run can pin.
PRIVATE_DIRS: tuple[tuple[str, int], ...] = (
    ("/tmp", 64 << 20),
    ("/var/tmp", 64 << 20),
    ("/dev/shm", 64 << 20),
    ("/run/lock", 1 << 20),
)
_TMPFS_INODES = 65536

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWCGROUP = 0x02000000
CGROUP_FS = Path("/sys/fs/cgroup")
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MS_REMOUNT = 0x20
_MNT_DETACH = 0x2
_PR_SET_NO_NEW_PRIVS = 38


def paths_to_keep(needed: Sequence[Path], private: Sequence[str]) -> list[tuple[str, Path]]:
    """Which of the agent's own paths a private directory would hide, with that directory.

    ``STATE`` or ``RUN`` under ``/tmp`` (a development set-up) would put the
    agent's ``state/`` and socket under its private ``/tmp``: those are bound
    back in, nothing else of the host's directory. A private directory
    itself is never kept (that would undo it), nor a path beneath another
    kept one (stubs made for it would land in the real directory).
    """
    hidden = []
    for path in needed:
        for top in private:
            if Path(top) in path.parents:
                hidden.append((top, path))
                break
    # One beneath another kept path is visible through that one's bind mount.
    return [(top, p) for top, p in hidden if not any(o in p.parents for _, o in hidden)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _mount(
    libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str
) -> None:
    rc = libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        flags,
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def program_dirs(command: Sequence[str]) -> list[Path]:
    """The directories of the files an agent's command names by absolute path (not dirs).

    Its executable and, say, its script (``/srv/x/.venv/bin/python -I
    /srv/x/agent.py``): a private directory must not hide them when they lie
    under one (a checkout under ``/tmp``), so :func:`_enter_sandbox` binds
    these back, read-only. The operator registered the command, so what it
    names is meant to be run; nothing else of the host's directory comes back.
    """
    dirs: list[Path] = []
    for arg in command:
        if not arg.startswith("/") or "\0" in arg:
            continue
        path = Path(arg)
        # Files only (a directory argument is data the agent may be refused).
        if path.is_file() and path.parent not in dirs:
            dirs.append(path.parent)
    return dirs


def _enter_sandbox(needed: Sequence[Path], programs: Sequence[Path] = ()) -> None:
    """Give the calling thread a mount and an IPC namespace of its own, set up for an agent.

    Runs in the short-lived spawn thread; the agent process forked from it
    inherits both (``fork`` copies the calling thread's namespaces and
    filesystem context). ``unshare(CLONE_NEWNS)`` implies ``CLONE_FS`` -
    allowed in a multi-threaded process (only ``CLONE_NEWUSER``/``CLONE_VM``/
    ``CLONE_SIGHAND``/``CLONE_THREAD`` need a single thread): this thread gets
    its own root, cwd and umask, hive-priv's other threads keep theirs.

    - Propagation of every mount is made private first, so nothing mounted
      here reaches the host (a shared ``/`` would carry the tmpfs back) and
      nothing of the host's later mounts arrives.
    - A fresh tmpfs (``nosuid,nodev``, mode 1777, size-bounded) on each of
      :data:`PRIVATE_DIRS` that is a real directory; what the agent leaves
      there dies with its last process.
    - The agent's own paths (``needed``) that a private directory covers are
      bound back (opened before the tmpfs hides them), and so are, read-only,
      the directories of its program (``programs``, :func:`program_dirs`).
    - ``/run/netns`` (the network layer's nsfs mounts) is detached.
    - A fresh mqueue filesystem on ``/dev/mqueue`` (if present): it shows the
      new IPC namespace's queues, not the host's.
    - A fresh procfs on ``/proc`` with ``hidepid=invisible`` (Linux >= 5.8,
      one procfs instance per mount): the agent sees only the processes it
      may ptrace - its own uid's - not the host's or another agent's, so no
      ``/proc/<pid>/root`` or ``cwd`` of a host process leads back to the
      host's ``/tmp``. Still the host's PID namespace: pids are the host's,
      which hive-priv's records and ``/proc`` checks rely on.

    Any failure raises: the thread (and with it the half-made namespace) is
    discarded, and the agent does not start.
    """
    libc = _libc()
    # CLONE_NEWCGROUP: the thread's (the agent's) control group becomes the
    # root of every cgroup file system the agent could mount itself (in a user
    # namespace of its own), so none shows it another group or host pid.
    if libc.unshare(_CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWCGROUP) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS|CLONE_NEWIPC|CLONE_NEWCGROUP): {os.strerror(err)}")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE, "")
    # Where a directory is a symlink (/dev/shm -> /run/shm on older systems),
    # its target is what must be private; one that does not exist is skipped.
    sizes: dict[str, int] = {}
    for top, size in PRIVATE_DIRS:
        real = os.path.realpath(top)
        if os.path.isdir(real):
            sizes.setdefault(real, size)
    private = list(sizes.items())
    read_only = {Path(os.path.realpath(p)) for p in programs}
    writable = [Path(os.path.realpath(p)) for p in needed]
    # Each kind on its own (a writable path beneath a read-only one is bound
    # again on top), shallower first: a deeper bind lands on an existing
    # directory seen through the shallower one, so no stub is made there.
    keep = sorted(
        {
            *paths_to_keep(writable, list(sizes)),
            *paths_to_keep(sorted(read_only - set(writable)), list(sizes)),
        },
        key=lambda kept: len(kept[1].parts),
    )
    fds = {
        path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        for _, path in keep
    }
    try:
        for top, size in private:
            options = f"mode=1777,size={size},nr_inodes={_TMPFS_INODES}"
            _mount(libc, "tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
        for top, path in keep:
            # Root-owned 0755 stubs down to the path, in the fresh tmpfs.
            here = Path(top)
            for part in path.relative_to(top).parts:
                here = here / part
                try:
                    here.mkdir(mode=0o700)
                except FileExistsError:
                    continue  # a stub made for another path, or inside one bound already
                os.chmod(here, 0o755)  # noqa: S103 - the agent traverses it; holds nothing
            _mount(libc, f"/proc/thread-self/fd/{fds[path]}", str(path), None, _MS_BIND, "")
            if path in read_only and path not in writable:
                flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
                _mount(libc, None, str(path), None, flags, "")
    finally:
        for fd in fds.values():
            os.close(fd)
    # The network layer's namespace files (/run/netns/*, nsfs mounts any uid
    # may open): an open one would pin another agent's namespace after its
    # destroy. Detached here, the agent sees only their empty placeholders.
    if libc.umount2(str(NETNS_DIR).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in {errno.EINVAL, errno.ENOENT}:  # not a mount point, or none at all
            raise OSError(err, f"umount {NETNS_DIR}: {os.strerror(err)}")
    if os.path.isdir("/dev/mqueue") and not os.path.islink("/dev/mqueue"):
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        _mount(libc, "mqueue", "/dev/mqueue", "mqueue", flags, "")
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    _mount(libc, "proc", "/proc", "proc", flags, "hidepid=invisible")
    # The host's cgroup file systems list every group's pids (cgroup.procs and
    # tasks are world-readable) and other agents' use: past hidepid, a side
    # channel. Covered by an empty read-only tmpfs; agents need none of it.
    if CGROUP_FS.is_dir() and not CGROUP_FS.is_symlink():
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY
        _mount(libc, "tmpfs", str(CGROUP_FS), "tmpfs", flags, "mode=0555,size=4k,nr_inodes=1")


AGENT_LOG_LIMIT = 8 << 20
"""Bytes ``harness/agent.log`` may grow to before :func:`bound_log` turns it over."""
AGENT_LOG_KEEP = 1 << 20
"""Its newest bytes kept in ``agent.log.1`` when it is turned over."""


def bound_log(path: Path, limit: int = AGENT_LOG_LIMIT, keep: int = AGENT_LOG_KEEP) -> bool:
    """Past ``limit`` bytes, move the newest ``keep`` of ``path`` to ``<path>.1`` and empty it.

    An agent's output goes straight from its process to ``harness/agent.log``
    (a root-owned file, which a disk quota on the agent's uid would not
    count): unbounded, one agent printing in a loop fills the disk. hive-priv
    checks it every second (:meth:`NetnsBackend.bound_logs`). The agent's
    descriptor is ``O_APPEND``, so after the truncation its writes go on at
    the new end; lines written between the copy and the truncation are lost.
    Returns whether the file was turned over.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        info = os.fstat(fd)
        # Blocks too, not only the size (with a little slack for the
        # filesystem's block granularity): space reserved past the end counts.
        over = info.st_size > limit or info.st_blocks * 512 > limit + (64 << 10)
        if not stat.S_ISREG(info.st_mode) or not over:
            return False
        start = max(0, info.st_size - keep)
        tail = os.pread(fd, info.st_size - start, start)
        replace_file(path.with_name(path.name + ".1"), tail, mode=0o600)
        os.ftruncate(fd, 0)
        return True
    finally:
        os.close(fd)


# A seccomp filter for agents (classic BPF over struct seccomp_data: nr at
# offset 0, arch at 4): fallocate(2) fails (EOPNOTSUPP), io_uring (ENOSYS), and every
# system call of another ABI (x32 numbers, 32-bit int 0x80), which would
# reach fallocate under another number. fallocate with FALLOC_FL_KEEP_SIZE
# on the agent's stdout (harness/agent.log, root's) reserved disk blocks
# without growing the file - past any size check and any quota on its uid.
_AUDIT_ARCH = {"x86_64": (0xC000003E, 285), "aarch64": (0xC00000B7, 47)}
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGT_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x25, 0x35, 0x06
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_X32_SYSCALL_BIT = 0x40000000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


_IO_URING_SYSCALLS = (425, 427)  # io_uring_setup, _enter, _register: one number on every ABI


def _seccomp_program(arch: int, fallocate_nr: int) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k): fallocate, foreign ABIs and io_uring refused."""
    # EOPNOTSUPP, as from a filesystem without it: glibc's posix_fallocate
    # then writes the range instead, which grows the file visibly (bounded).
    refused = _SECCOMP_RET_ERRNO | errno.EOPNOTSUPP
    # io_uring as if the kernel had none (ENOSYS: libraries fall back to plain
    # system calls): its operations run in kernel threads no seccomp filter
    # sees - IORING_OP_FALLOCATE reserved 512 MiB past this filter (found by
    # an attack review).
    no_uring = _SECCOMP_RET_ERRNO | errno.ENOSYS
    first_uring, last_uring = _IO_URING_SYSCALLS
    return [
        (_BPF_LD_W_ABS, 0, 0, 4),  # 0: arch
        (_BPF_JEQ_K, 0, 5, arch),  # 1: native? on : refused (7)
        (_BPF_LD_W_ABS, 0, 0, 0),  # 2: nr
        (_BPF_JGE_K, 3, 0, _X32_SYSCALL_BIT),  # 3: x32? refused (7) : on
        (_BPF_JEQ_K, 2, 0, fallocate_nr),  # 4: fallocate? refused (7) : on
        (_BPF_JGE_K, 0, 2, first_uring),  # 5: >= io_uring_setup? on : allow (8)
        (_BPF_JGT_K, 1, 2, last_uring),  # 6: > io_uring_register? allow (8) : no_uring (9)
        (_BPF_RET_K, 0, 0, refused),  # 7
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),  # 8
        (_BPF_RET_K, 0, 0, no_uring),  # 9
    ]


def _deny_fallocate() -> None:
    """Install the agents' seccomp filter on the calling (spawn) thread; its child inherits it.

    Per thread, like no_new_privs (which must be set first): hive-priv's other
    threads are untouched. On an architecture without an entry the agent
    starts without it (logged).
    """
    entry = _AUDIT_ARCH.get(os.uname().machine)
    if entry is None:
        _log().warning("agent.seccomp_unavailable", machine=os.uname().machine)
        return
    program = _seccomp_program(*entry)
    filters = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    fprog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


AGENT_MAX_PROCESSES = 512
"""Processes (and threads) one agent's uid may have at once (``RLIMIT_NPROC``)."""
AGENT_MAX_FILE_BYTES = 1 << 30
"""The largest file an agent's process may write (``RLIMIT_FSIZE``)."""


def _limit_processes() -> None:
    """Cap the agent's processes at :data:`AGENT_MAX_PROCESSES`, soft and hard.

    ``RLIMIT_NPROC`` counts the processes of the *real uid* - one agent's,
    since every agent has its own - and a child inherits it. Set on
    hive-priv itself (a resource limit is per process, not per thread), it
    binds only its non-root children, the agents: root is exempt from it, so
    hive-priv's own forks (``useradd``, ``rm``) are not. Without it one agent
    could fork until the host has no pid left (found by an attack review).
    """
    limit = AGENT_MAX_PROCESSES
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    # And no file the agent writes grows past AGENT_MAX_FILE_BYTES (its log
    # included, between two of hive-priv's checks). hive-priv, bound by it too,
    # writes nothing near that size.
    size = AGENT_MAX_FILE_BYTES
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def _no_new_privileges() -> None:
    """``PR_SET_NO_NEW_PRIVS`` for the calling thread, inherited by the agent it forks.

    A per-thread attribute (prctl(2)): hive-priv's other threads keep theirs.
    The agent can then gain nothing through exec - no setuid/setgid bit, no
    file capability - as under ``hive-priv.service`` (``NoNewPrivileges=yes``),
    now also when hive-priv runs without the unit.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


REMOVE_TIMEOUT = 300.0


def _remove_tree(path: Path, timeout: float = REMOVE_TIMEOUT) -> None:
    """Remove ``path`` and everything beneath it, whatever the agent made there.

    Not ``shutil.rmtree``: it recurses once per directory level, and an agent
    can nest directories deeper than Python's recursion limit - the
    ``RecursionError`` is no ``OSError`` (``ignore_errors`` does not catch
    it) and left the destroy half done. GNU ``rm`` walks any depth without
    one descriptor per level, never follows a symlink (``fts`` physical walk,
    checking each directory's device and inode as it climbs back up) and,
    with ``--one-file-system``, does not descend into another mount.
    """
    try:
        out = subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)],
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise HiveError(f"cannot remove {path}: still removing after {timeout:.0f} s") from e
    except OSError as e:
        raise HiveError(f"cannot remove {path}: {e}") from e
    if out.returncode != 0 or os.path.lexists(path):
        reason = out.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise HiveError(f"cannot remove {path}: {reason[0] if reason else 'rm failed'}")


class NetnsBackend:
    """Containers as network namespaces plus a per-agent-uid process. Thread-safe."""

    def __init__(
        self,
        *,
        state_dir: Path,
        run_dir: Path,
        isolation: IsolationProvider,
        record_path: Path | None = None,
        ui_port: int = 8000,
        core_gid: int | None = None,
        roles_for: Callable[[str], Sequence[str]] | None = None,
        user_prefix: str = AGENT_USER_PREFIX,
        stop_timeout: float = 5.0,
        agent_ids: range = AGENT_IDS,
        cgroups: AgentCgroups | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.isolation = isolation
        self.store = RecordStore(record_path or state_dir / "priv" / "containers.json")
        self.id_marks = IdMarkStore(self.store.path.parent / "agent-ids.json")
        self.agent_ids = agent_ids
        self.ui_port = ui_port
        self.core_gid = core_gid
        self.roles_for = roles_for or (lambda name: (f"agent:{name}", "role:agent"))
        self.user_prefix = user_prefix
        self.stop_timeout = stop_timeout
        # Each agent's memory, CPU and task limits (None: unbounded, e.g. tests
        # of other layers): the agent's first process is born in its group.
        self.cgroups = cgroups
        self._lock = threading.RLock()
        self._records = self.store.load()
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # --- paths -------------------------------------------------------------

    def agent_dir(self, name: str) -> Path:
        """``STATE/agents/<name>``."""
        return self.state_dir / "agents" / name

    def socket_path(self, name: str) -> Path:
        """``RUN/agents/<name>.sock``."""
        return self.run_dir / "agents" / f"{name}.sock"

    # --- records -------------------------------------------------------------

    def _get(self, name: str) -> ContainerRecord:
        rec = self._records.get(name)
        if rec is None:
            raise NotFound(f"no container {name!r}")
        return rec

    def _save(self) -> None:
        self.store.save(self._records)

    @contextlib.contextmanager
    def _pending(self, rec: ContainerRecord, op: str) -> Iterator[None]:
        rec.pending = op
        self._save()
        yield
        rec.pending = None
        self._save()

    def names(self) -> list[str]:
        """Every container hive-priv knows."""
        with self._lock:
            return sorted(self._records)

    def _info(self, rec: ContainerRecord) -> dict[str, Any]:
        self._refresh(rec)
        info = self._snapshot(rec)
        if self.cgroups is not None:
            # Its limits, what it uses, and how often the kernel killed in it.
            info["resources"] = self.cgroups.usage(rec.name)
        return info

    @staticmethod
    def _snapshot(rec: ContainerRecord) -> dict[str, Any]:
        return {
            "agent": rec.name,
            "state": rec.state,
            "uid": rec.uid,
            "pid": rec.pid,
            "exit_code": rec.exit_code,
            "net": rec.net,
            "ui_url": (rec.net or {}).get("ui_url"),
            "socket": rec.socket,
            "pending": rec.pending,
        }

    # --- processes ------------------------------------------------------------

    def _alive(self, rec: ContainerRecord) -> bool:
        """Is the recorded agent process still running? Never blocks.

        For a child of this hive-priv, ``waitpid(WNOHANG)`` (``Popen.poll``)
        decides and reaps it, keeping its exit status. A process an earlier
        hive-priv started (adopted after a restart) is not our child: it is
        alive only if ``/proc/<pid>`` still shows the recorded start time, the
        agent's uid and no zombie - a pid reused by anything else fails that.
        """
        if rec.pid is None:
            return False
        child = self._children.get(rec.name)
        if child is not None:
            return child.poll() is None
        info = _proc_state_uids(rec.pid)
        return (
            info is not None
            and info[0] != "Z"
            and _proc_start_time(rec.pid) == rec.pid_start
            and rec.uid in info[1]
        )

    def _refresh(self, rec: ContainerRecord) -> None:
        """Notice an agent process that exited by itself (and reap it).

        It should have been running, so the container becomes ``failed`` -
        unless it exited cleanly with status 0 (``stopped``, as the core's
        local backend says). A process that was not our child (adopted after a
        restart) leaves no exit status: ``exit_code`` null, ``failed``.
        """
        if rec.state == "running" and rec.pending is None and not self._alive(rec):
            child = self._children.pop(rec.name, None)
            # Already reaped by _alive's poll(): wait() only reads the status.
            rec.exit_code = child.wait() if child is not None else None
            rec.state = "stopped" if rec.exit_code == 0 else "failed"
            rec.pid, rec.pid_start = None, None
            self._save()
            _log().warning(
                "container.exited", agent=rec.name, exit_code=rec.exit_code, state=rec.state
            )

    def _netns_path(self, rec: ContainerRecord) -> Path | None:
        if not rec.net:
            return None
        path = NETNS_DIR / rec.net["netns"]
        return path if path.exists() else None

    def _spawn(self, rec: ContainerRecord, netns_path: Path) -> subprocess.Popen[bytes]:
        agent_dir = self.agent_dir(rec.name)
        log_fd = os.open(
            agent_dir / "harness" / "agent.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(agent_dir / "state"),
            "HIVE_AGENT": rec.name,
            "HIVE_SOCKET": str(self.socket_path(rec.name)),
            "HIVE_STATE_DIR": str(agent_dir / "state"),
            "HIVE_UI_PORT": str(self.ui_port),
        }
        box: dict[str, Any] = {}

        # The agent's own paths, bound back if a private directory hides them.
        needed = [agent_dir / "state", self.socket_path(rec.name).parent]
        programs = program_dirs(rec.command)

        def in_namespace() -> None:
            # setns(CLONE_NEWNET) and unshare(CLONE_NEWNS|CLONE_NEWIPC) change
            # only this (short-lived) thread's namespaces; the child forked
            # from it inherits them, and is the agent's own process (its pid
            # is the one recorded). The uid/gid drop happens in the child
            # before exec (Popen user/group/extra_groups), with no preexec_fn.
            try:
                if self.cgroups is not None and self.cgroups.per_thread:
                    # This thread (only) joins the agent's groups; the agent
                    # forked from it is born there.
                    self.cgroups.enter_thread(rec.name)
                _enter_netns(netns_path)
                _enter_sandbox(needed, programs)
                _no_new_privileges()
                _deny_fallocate()
                _limit_processes()
                box["proc"] = subprocess.Popen(
                    rec.command,
                    env=env,
                    cwd=agent_dir / "state",
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    user=rec.uid,
                    group=rec.gid,
                    extra_groups=[],
                    start_new_session=True,
                    close_fds=True,
                    umask=0o007,
                )
            except BaseException as e:
                box["error"] = e

        try:
            thread = threading.Thread(target=in_namespace, name=f"spawn-{rec.name}")
            with self._born_in_group(rec.name):
                thread.start()
                thread.join()
        finally:
            os.close(log_fd)
        if "error" in box:
            err = box["error"]
            raise HiveError(f"cannot start agent {rec.name}: {err}") from err
        proc: subprocess.Popen[bytes] = box["proc"]
        return proc

    @contextlib.contextmanager
    def _born_in_group(self, name: str) -> Iterator[None]:
        """The block (the spawn) runs with agent ``name``'s control group made and ready.

        cgroup v1: the spawn thread joins the group itself (``enter_thread``);
        v2 moves whole processes only, so hive-priv enters it for the block.
        """
        if self.cgroups is None:
            yield
            return
        self.cgroups.prepare(name)
        if self.cgroups.per_thread:
            yield
            return
        with self.cgroups.spawning_in(name):
            yield

    def _remove_group(self, rec: ContainerRecord) -> None:
        if self.cgroups is not None:
            self.cgroups.remove(rec.name)

    def _terminate(self, rec: ContainerRecord) -> None:
        """SIGTERM the agent's process group, wait, SIGKILL, then every process of its uid."""
        child = self._children.pop(rec.name, None)
        if rec.pid is not None and self._alive(rec):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and self._alive_pid(rec, child):
                time.sleep(0.02)
            # The group by number only while its leader is provably ours and
            # alive; stragglers are found by uid below, each checked via pidfd.
            if self._alive_pid(rec, child):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(rec.pid, signal.SIGKILL)
        # The agent may have left its session: its uid is dedicated to it, so
        # every process of that uid is part of this container.
        # At least once: a /proc scan can miss a process that forks and exits
        # in a chain, so an empty scan proves nothing until after the kill.
        for _ in range(250):
            _kill_every_process_of(rec.uid, rec.gid)
            if not processes_of_uid(rec.uid):
                break
            time.sleep(0.02)
        else:
            raise HiveError(f"processes of {rec.user} survive SIGKILL")
        if child is not None:
            rec.exit_code = child.wait()
        rec.pid, rec.pid_start = None, None

    def _alive_pid(self, rec: ContainerRecord, child: subprocess.Popen[bytes] | None) -> bool:
        if child is not None:
            return child.poll() is None
        return self._alive(rec)

    # --- isolation -------------------------------------------------------------

    def _ensure_isolation(self, rec: ContainerRecord) -> Path:
        path = self._netns_path(rec)
        if path is not None:
            return path
        # Nothing recorded, or recorded but gone (host reboot, crash between
        # the network layer's up() and our record): clear leftovers, then up.
        with contextlib.suppress(NotFound):
            self.isolation.down(rec.name)
        rec.net = None
        self._save()
        net = self.isolation.up(rec.name, tuple(self.roles_for(rec.name)))
        rec.net = {
            k: str(getattr(net, k))
            for k in (
                "netns",
                "host_ifname",
                "ipv4",
                "ipv6",
                "host_ipv4",
                "host_ipv6",
                "ui_url",
            )
        }
        self._save()
        path = self._netns_path(rec)
        if path is None:
            raise Unavailable(f"isolation for {rec.name} reported up but its namespace is missing")
        return path

    def _drop_isolation(self, rec: ContainerRecord) -> None:
        # Called whether or not a network is recorded: a crash between the
        # network layer's up() and our record leaves one we must still remove.
        with contextlib.suppress(NotFound):
            self.isolation.down(rec.name)
        rec.net = None
        self._save()

    def apply_isolation(self, name: str) -> dict[str, Any]:
        """Bring up (or confirm) the container's isolated network."""
        with self._lock:
            rec = self._get(name)
            with self._pending(rec, "isolation.apply"):
                self._ensure_isolation(rec)
            return self._info(rec)

    def remove_isolation(self, name: str) -> dict[str, Any]:
        """Tear down the network; refused while the agent runs (fail closed)."""
        with self._lock:
            rec = self._get(name)
            self._refresh(rec)
            if rec.state == "running":
                raise Conflict(f"{name} is running: stop it before removing its isolation")
            with self._pending(rec, "isolation.remove"):
                self._drop_isolation(rec)
            return self._info(rec)

    # --- lifecycle ---------------------------------------------------------------

    def create(self, name: str, command: Sequence[str]) -> dict[str, Any]:
        """User, directories, isolated network; state ``created``."""
        with self._lock:
            if name in self._records:
                raise Conflict(f"container {name!r} exists")
            user_name = agent_user_name(name, self.user_prefix)
            existing = lookup_user(user_name)
            rec = ContainerRecord(
                name=name,
                user=user_name,
                uid=existing.uid if existing else -1,
                gid=existing.gid if existing else -1,
                user_created=False,
                command=list(command),
            )
            self._records[name] = rec
            self._save()
            try:
                if existing is None:
                    made = allocate_agent_user(user_name, self.id_marks, self.agent_ids)
                    rec.uid, rec.gid, rec.user_created = made.uid, made.gid, made.created
                    self._save()
                else:
                    _note_adopted_id(self.id_marks, existing.uid, self.agent_ids)
                self._make_dirs(rec)
                self._ensure_isolation(rec)
            except BaseException:
                _log().warning("container.create.rollback", agent=name)
                self._undo_create(rec)
                raise
            rec.state, rec.pending = "created", None
            self._save()
            return self._info(rec)

    def _make_dirs(self, rec: ContainerRecord) -> None:
        _shared_dir(self.state_dir / "agents")
        top = self.agent_dir(rec.name)
        group = self.core_gid if self.core_gid is not None else rec.gid
        # state/: the agent's own files; the core's group may read and write
        # (setgid keeps new files in that group). harness/: root only.
        for path, uid, gid, mode in (
            (top, 0, 0, 0o755),
            (top / "state", rec.uid, group, 0o2770 if self.core_gid is not None else 0o700),
            (top / "harness", 0, 0, 0o700),
        ):
            if not os.path.lexists(path):
                # Recorded before it is made: killed in between, the recovery
                # removes it (rm -rf of a missing path is a no-op); recorded
                # after, a kill there left a directory no record named.
                rec.made_dirs.append(str(path))
                self._save()
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                st = path.lstat()
                if not stat.S_ISDIR(st.st_mode):
                    raise Conflict(f"{path} exists and is not a directory") from None
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, mode, follow_symlinks=False)

    def _remove_dirs(self, rec: ContainerRecord) -> None:
        # Raises if a tree stays: the record keeps its pending operation and
        # names these directories, so a retry (or the next start) removes them.
        for made in reversed(rec.made_dirs):
            _remove_tree(Path(made))
        rec.made_dirs = []

    def _undo_create(self, rec: ContainerRecord) -> None:
        with contextlib.suppress(HiveError, OSError):
            self._terminate(rec)
        with contextlib.suppress(HiveError, OSError):
            self._remove_group(rec)
        with contextlib.suppress(HiveError, OSError):
            self._drop_isolation(rec)
        self._remove_socket(rec)
        self._remove_dirs(rec)
        # uid -1: the user did not exist when this create began, so one that
        # exists now is ours even if we were killed between useradd and
        # recording user_created (remove_system_user is a no-op otherwise).
        if rec.user_created or rec.uid == -1:
            remove_system_user(rec.user)
        self._records.pop(rec.name, None)
        self._save()

    def start(self, name: str) -> dict[str, Any]:
        """Start the agent process in its namespace (isolation first)."""
        with self._lock:
            rec = self._get(name)
            self._refresh(rec)
            if rec.state == "running":
                return self._info(rec)
            with self._pending(rec, "start"):
                # A run that ended by itself may have left processes behind
                # (the uid is the container's alone): none survive into the new run.
                self._terminate(rec)
                netns_path = self._ensure_isolation(rec)
                proc = self._spawn(rec, netns_path)
                self._children[name] = proc
                rec.pid, rec.pid_start = proc.pid, _proc_start_time(proc.pid)
                rec.state, rec.exit_code = "running", None
            _log().info("container.started", agent=name, pid=proc.pid)
            return self._info(rec)

    def stop(self, name: str) -> dict[str, Any]:
        """Stop and reap the agent process (idempotent)."""
        with self._lock:
            rec = self._get(name)
            with self._pending(rec, "stop"):
                self._terminate(rec)
                rec.state = "stopped"
            return self._info(rec)

    def restart(self, name: str) -> dict[str, Any]:
        """Stop, then start."""
        with self._lock:
            self.stop(name)
            return self.start(name)

    def destroy(self, name: str) -> dict[str, Any]:
        """Process, network, socket, directories, user (if made here): all gone."""
        with self._lock:
            rec = self._get(name)
            rec.pending = "destroy"
            self._save()
            self._finish_destroy(rec)
            return {"agent": name, "state": "destroyed"}

    def _finish_destroy(self, rec: ContainerRecord) -> None:
        self._terminate(rec)
        self._drop_isolation(rec)
        self._remove_socket(rec)
        self._remove_dirs(rec)
        # Last before the user: one that cannot go yet (a process still being
        # torn down) leaves the record pending, and a retry finds the rest gone.
        self._remove_group(rec)
        if rec.user_created:
            remove_system_user(rec.user)
        self._records.pop(rec.name, None)
        self._save()

    def status(self, name: str) -> dict[str, Any]:
        """The container's status dictionary."""
        with self._lock:
            return self._info(self._get(name))

    def status_all(self) -> dict[str, dict[str, Any]]:
        """Every container's status dictionary, by name, without waiting on an operation.

        With the backend free, each record is refreshed first (exits noticed
        and reaped). While another operation holds it (a stop may take the
        whole stop timeout), the answer is the records as they stand: the
        operation in progress shows in ``pending``, and its own answer
        carries the outcome.
        """
        if not self._lock.acquire(blocking=False):
            return {rec.name: self._snapshot(rec) for rec in list(self._records.values())}
        try:
            return {name: self._info(rec) for name, rec in sorted(self._records.items())}
        finally:
            self._lock.release()

    def bound_logs(self) -> list[str]:
        """Turn over every agent's output file grown past its limit (:func:`bound_log`).

        Reads only the record names (no lock: a create or destroy in progress
        is not waited for); returns the agents whose log was turned over.
        """
        turned = []
        for name in list(self._records):
            path = self.agent_dir(name) / "harness" / "agent.log"
            with contextlib.suppress(OSError):
                if bound_log(path):
                    turned.append(name)
        return turned

    def reap(self) -> None:
        """Notice and reap agents that exited by themselves; skipped while the backend is busy."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            for rec in list(self._records.values()):
                self._refresh(rec)
        finally:
            self._lock.release()

    # --- socket and state ---------------------------------------------------------

    def create_socket(self, name: str) -> socket.socket:
        """Bind + listen ``RUN/agents/<name>.sock``, owner the agent's uid, mode 0600.

        Returns the listening socket; the caller passes its fd to the core and
        closes its own copy. Only the agent's uid can connect (file mode); the
        core accepts on the fd it holds and needs no file access at all.
        """
        with self._lock:
            rec = self._get(name)
            path = self.socket_path(name)
            _shared_dir(path.parent)
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(path.lstat().st_mode):
                    raise Conflict(f"{path} exists and is not a socket")
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # umask 0o177 at bind: the socket file is never connectable by
            # anyone else, not even between bind and chmod. All backend work
            # runs under self._lock, so the process-wide umask is not raced.
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            except OSError:
                sock.close()
                raise
            finally:
                os.umask(old)
            try:
                os.chown(path, rec.uid, rec.gid, follow_symlinks=False)
                os.chmod(path, 0o600, follow_symlinks=False)
                sock.listen(128)
            except OSError:
                sock.close()
                raise
            rec.socket = str(path)
            self._save()
            return sock

    def _remove_socket(self, rec: ContainerRecord) -> None:
        path = self.socket_path(rec.name)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        rec.socket = None

    def read_state(self, name: str, rel_path: str, max_bytes: int) -> bytes:
        """``ReadAgentStateFile``: confined beneath ``STATE/agents/<name>/state``."""
        return read_agent_state_file(self.agent_dir(name) / "state", rel_path, max_bytes)

    # --- recovery ------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Finish or undo every interrupted operation; return what was done.

        One container whose recovery fails does not stop the others, nor
        hive-priv's start: the failure is logged and returned, and its record
        keeps its pending operation, so the next start (or a repeated
        lifecycle request, e.g. destroy) tries again.
        """
        done: list[str] = []
        failed: list[str] = []
        with self._lock:
            for rec in list(self._records.values()):
                try:
                    line = self._recover_one(rec)
                except Exception as e:  # any one record must not wedge start-up
                    reason = e.reason if isinstance(e, HiveError) else f"{type(e).__name__}: {e}"
                    failed.append(f"{rec.name}: recovery of {rec.pending or rec.state} failed")
                    _log().error(
                        "container.recover_failed",
                        agent=rec.name,
                        pending=rec.pending,
                        state=rec.state,
                        reason=reason,
                    )
                else:
                    if line is not None:
                        done.append(line)
            self._save()
        for line in done:
            _log().warning("container.recovered", what=line)
        return done + failed

    def _recover_one(self, rec: ContainerRecord) -> str | None:
        op = rec.pending
        if op == "create":
            self._undo_create(rec)
            return f"{rec.name}: undid interrupted create"
        if op == "destroy":
            self._finish_destroy(rec)
            return f"{rec.name}: finished interrupted destroy"
        if op in {"start", "stop", "restart"}:
            self._terminate(rec)
            rec.state, rec.pending = "stopped", None
            return f"{rec.name}: interrupted {op}: left stopped"
        if op in {"isolation.apply", "isolation.remove"}:
            self._terminate(rec)
            self._drop_isolation(rec)
            rec.state = "stopped" if rec.state == "running" else rec.state
            rec.pending = None
            return f"{rec.name}: interrupted {op}: network removed"
        if rec.state == "running" and (not self._alive(rec) or self._netns_path(rec) is None):
            # Never a process without its namespace: kill it. It should
            # have been running and is not: failed (exit status
            # unknown - it was not this hive-priv's child).
            self._terminate(rec)
            rec.state, rec.exit_code = "failed", None
            return f"{rec.name}: process gone or namespace missing: failed"
        return None
