"""The live installation: socket files and the daemons' processes.

Gather (reads ``stat``, ``/proc`` and the core's database, changes nothing)
is apart from the judges (pure functions of the gathered facts).

Processes are found by what they serve, not by their names, so that only
*this* installation's daemons are judged even when other stacks run on the
host: the core is whoever holds the listening socket bound at ``core.sock``,
hive-priv whoever holds the one at ``priv.sock`` (``/proc/net/unix`` inode ->
``/proc/<pid>/fd``), the gateway whoever listens on its TCP ``host:port``.

Socket activation of hive-priv is judged from what the kernel shows about
the process: its *initial* environment (``/proc/<pid>/environ``, which keeps
what ``execve`` received even after the process unset the variables) carries
``LISTEN_FDS=1`` and ``LISTEN_PID=<its own pid>`` - the activation protocol,
which only a socket activator (systemd, ``systemd-socket-activate``) sets up -
and its fd 3 (``SD_LISTEN_FDS_START``) is the listening socket bound at
``priv.sock``. A hive-priv that bound its own socket would show neither. A
socket held only by pid 1 or by a ``systemd-socket-activate`` that has not
exec'd yet means activation is waiting for its first connection: that passes.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from enforcer.audit.report import Check, Finding, Section, Table, check
from enforcer.config import HiveConfig

__all__ = [
    "Expectations",
    "LiveFacts",
    "ProcessFact",
    "SocketFact",
    "gather_live",
    "judge_processes",
    "judge_sockets",
    "live_section",
    "process_fact",
    "socket_fact",
]

_SO_ACCEPTCON = 0x10000
_TCP_LISTEN = "0A"
_LISTEN_STATE = 10  # TCP_LISTEN, also for unix sockets in sock_diag


@dataclass(frozen=True, slots=True)
class SocketFact:
    """A path under RUN and what ``lstat`` says about it."""

    role: str  # "core", "priv", "agent:<name>", "dir"
    path: str
    exists: bool
    is_socket: bool = False
    is_dir: bool = False
    uid: int = -1
    gid: int = -1
    mode: int = 0


@dataclass(frozen=True, slots=True)
class ProcessFact:
    """One process holding one of the daemons' listening sockets."""

    pid: int
    ppid: int
    comm: str
    cmdline: tuple[str, ...]
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]
    socket_fds: tuple[int, ...]  # the fds holding the daemon's listening socket
    environ: dict[str, str] = field(default_factory=dict)  # LISTEN_* only
    parent_comm: str = ""

    @property
    def user(self) -> str:
        """The effective user's name (or uid)."""
        uid = self.uids[1] if len(self.uids) > 1 else -1
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)


@dataclass(frozen=True, slots=True)
class Expectations:
    """Who should own what: the core user's ids and each registered agent's uid."""

    core_uid: int | None
    core_gid: int | None
    agent_uids: dict[str, int] | None  # None: the core's database could not be read


@dataclass(frozen=True, slots=True)
class LiveFacts:
    """Everything the live checks judge."""

    run_dir: str
    sockets: tuple[SocketFact, ...]
    processes: dict[str, tuple[ProcessFact, ...]]  # "core" | "gateway" | "priv"
    gateway_listen: str
    expect: Expectations


# --- gather --------------------------------------------------------------------


def socket_fact(role: str, path: Path) -> SocketFact:
    """``lstat`` of ``path`` (never follows a symlink)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return SocketFact(role, str(path), False)
    return SocketFact(
        role,
        str(path),
        True,
        stat.S_ISSOCK(st.st_mode),
        stat.S_ISDIR(st.st_mode),
        st.st_uid,
        st.st_gid,
        stat.S_IMODE(st.st_mode),
    )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def unix_listeners(path: Path) -> set[int]:
    """Socket inodes of the listening unix sockets whose file is ``path`` now.

    Matched by the file's (device, inode) through ``sock_diag``
    (``UDIAG_SHOW_VFS``), not by name: a daemon may bind under a temporary name
    and rename the file into place (``enforcer.transport.bind_unix_socket``),
    and ``/proc/net/unix`` keeps the name of the bind. Without ``sock_diag``,
    falls back to that name.
    """
    try:
        st = path.lstat()
    except OSError:
        return set()
    if not stat.S_ISSOCK(st.st_mode):
        return set()
    try:
        return _diag_listeners(st.st_dev, st.st_ino)
    except (ImportError, OSError):
        pass
    want = str(path)
    out: set[int] = set()
    for line in _read("/proc/net/unix").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[7] == want and int(cols[3], 16) & _SO_ACCEPTCON:
            out.add(int(cols[6]))
    return out


def _diag_listeners(dev: int, ino: int) -> set[int]:
    import socket

    from pyroute2 import DiagSocket
    from pyroute2.netlink.diag import UDIAG_SHOW_VFS

    # The kernel reports the device in its internal encoding (major << 20 | minor).
    kdev = (os.major(dev) << 20) | os.minor(dev)
    out: set[int] = set()
    with DiagSocket() as ds:
        ds.bind()
        for msg in ds.get_sock_stats(
            family=socket.AF_UNIX, states=1 << _LISTEN_STATE, show=UDIAG_SHOW_VFS
        ):
            vfs = msg.get_attr("UNIX_DIAG_VFS")
            if vfs and vfs["udiag_vfs_ino"] == ino and vfs["udiag_vfs_dev"] == kdev:
                out.add(int(msg["udiag_ino"]))
    return out


def tcp_listeners(host: str, port: int) -> set[int]:
    """Inodes of TCP sockets listening on ``host:port`` (or on the wildcard, same port)."""
    try:
        want = ipaddress.ip_address(host)
    except ValueError:
        want = None
    out: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in _read(table).splitlines()[1:]:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _TCP_LISTEN:
                continue
            addr_hex, port_hex = cols[1].split(":")
            if int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # /proc/net/tcp* print each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addr = ipaddress.ip_address(raw)
            if addr.is_unspecified or want is None or addr == want:
                out.add(int(cols[9]))
    return out


def socket_holders(inodes: set[int]) -> dict[int, list[int]]:
    """pid -> fds holding any of ``inodes`` (every process on the host)."""
    targets = {f"socket:[{i}]" for i in inodes}
    out: dict[int, list[int]] = {}
    if not targets:
        return out
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in targets:
                        out.setdefault(int(entry.name), []).append(int(fd.name))
    return out


def _ids(status: str, key: str) -> tuple[int, ...]:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return tuple(int(x) for x in line.split()[1:])
    return ()


def process_fact(pid: int, fds: Iterable[int] = ()) -> ProcessFact | None:
    """What ``/proc/<pid>`` says (None if it is gone)."""
    status = _read(f"/proc/{pid}/status")
    if not status:
        return None
    ppid = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:")), 0)
    raw_env = b""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
        raw_env = f.read()
    env = {}
    for item in raw_env.split(b"\0"):
        key, _, value = item.decode(errors="replace").partition("=")
        if key.startswith("LISTEN_"):
            env[key] = value
    cmdline = tuple(x for x in _read(f"/proc/{pid}/cmdline").split("\0") if x)
    return ProcessFact(
        pid,
        ppid,
        _read(f"/proc/{pid}/comm").strip(),
        cmdline,
        _ids(status, "Uid"),
        _ids(status, "Gid"),
        tuple(sorted(fds)),
        env,
        _read(f"/proc/{ppid}/comm").strip() if ppid else "",
    )


def _holders(inodes: set[int]) -> tuple[ProcessFact, ...]:
    facts = (process_fact(pid, fds) for pid, fds in sorted(socket_holders(inodes).items()))
    return tuple(f for f in facts if f is not None)


def _agent_uids(db: Path) -> dict[str, int] | None:
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return {str(n): int(u) for n, u in conn.execute("SELECT name, uid FROM agents")}
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def gather_live(config: HiveConfig) -> LiveFacts:
    """Stat the sockets, find the daemons' processes, read the registered agents."""
    sockets = [
        socket_fact("dir", config.run_dir),
        socket_fact("dir", config.agent_socket_dir),
        socket_fact("core", config.core_socket),
        socket_fact("priv", config.priv_socket),
    ]
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(config.agent_socket_dir), key=lambda e: e.name):
            name = entry.name[: -len(".sock")] if entry.name.endswith(".sock") else entry.name
            sockets.append(socket_fact(f"agent:{name}", Path(entry.path)))
    try:
        pw = pwd.getpwnam(config.core.user)
        core_ids: tuple[int | None, int | None] = (pw.pw_uid, pw.pw_gid)
    except KeyError:
        core_ids = (None, None)
    gw = config.gateway
    processes = {
        "core": _holders(unix_listeners(config.core_socket)),
        "priv": _holders(unix_listeners(config.priv_socket)),
        "gateway": _holders(tcp_listeners(gw.host, gw.port)),
    }
    return LiveFacts(
        str(config.run_dir),
        tuple(sockets),
        processes,
        f"{gw.host}:{gw.port}",
        Expectations(core_ids[0], core_ids[1], _agent_uids(config.database)),
    )


# --- judge -----------------------------------------------------------------------


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _socket_problems(s: SocketFact, mode: int) -> list[str]:
    if not s.exists:
        return ["missing"]
    if not s.is_socket:
        return ["not a socket"]
    if s.mode != mode:
        return [f"mode {s.mode:04o}, expected {mode:04o}"]
    return []


def judge_sockets(facts: LiveFacts) -> Check:
    """core.sock 0660 owned by the core user; priv.sock root:<core group> 0660;
    agents/<name>.sock 0600 owned by that agent's uid; RUN dirs not world-writable."""
    exp = facts.expect
    found: list[Finding] = []
    for s in facts.sockets:
        problems: list[str] = []
        if s.role == "dir":
            if s.exists and s.mode & 0o002 and not s.mode & stat.S_ISVTX:
                problems.append(f"directory is world-writable (mode {s.mode:04o})")
        elif s.role == "core":
            problems = _socket_problems(s, 0o660)
            if s.is_socket:
                if exp.core_uid is not None and s.uid != exp.core_uid:
                    problems.append(f"owner {_name(s.uid)}, expected {_name(exp.core_uid)}")
                elif exp.core_uid is None and s.uid == 0:
                    problems.append("owned by root: the core must not run as root")
        elif s.role == "priv":
            problems = _socket_problems(s, 0o660)
            if s.is_socket:
                if s.uid != 0:
                    problems.append(f"owner {_name(s.uid)}, expected root")
                if exp.core_gid is not None and s.gid != exp.core_gid:
                    problems.append(f"group {_group(s.gid)}, expected {_group(exp.core_gid)}")
        else:
            name = s.role.removeprefix("agent:")
            problems = _socket_problems(s, 0o600)
            if s.is_socket and not s.path.endswith(".sock"):
                problems.append("unexpected socket name (agents/<name>.sock)")
            if s.is_socket:
                want = exp.agent_uids.get(name) if exp.agent_uids is not None else None
                if want is not None and s.uid != want:
                    problems.append(f"owner {_name(s.uid)}, expected agent {name}'s uid {want}")
                elif want is None and exp.agent_uids is not None:
                    problems.append(f"no agent {name!r} is registered")
                elif s.uid == 0 or (exp.core_uid is not None and s.uid == exp.core_uid):
                    problems.append(f"owned by {_name(s.uid)}, not by the agent's own uid")
        found += [
            Finding(p, s.path, {"mode": f"{s.mode:04o}", "uid": s.uid, "gid": s.gid})
            for p in problems
        ]
    notes = []
    if exp.agent_uids is None:
        notes.append("agents' uids unknown (no readable hive.db): checked only 'not root/core'")
    if exp.core_uid is None:
        notes.append("core user does not exist here: core.sock checked only for 'not root'")
    n = sum(s.role != "dir" for s in facts.sockets)
    return check(
        "live.sockets",
        "socket files: owners and modes",
        found,
        ok=f"{n} socket(s) as designed",
        notes=notes,
    )


def _root(p: ProcessFact) -> bool:
    return 0 in p.uids


def _cmd(p: ProcessFact) -> str:
    return " ".join(p.cmdline)[:120]


def _unprivileged(daemon: str, procs: tuple[ProcessFact, ...], listens: str) -> Check:
    found: list[Finding] = []
    if not procs:
        found.append(Finding(f"no process listens on {listens}: the {daemon} is not running"))
    for p in procs:
        if _root(p):
            found.append(
                Finding(
                    f"the {daemon} runs as root (uids {'/'.join(map(str, p.uids))}): "
                    "it must run unprivileged",
                    f"pid {p.pid}",
                    {"cmdline": _cmd(p)},
                )
            )
    users = ", ".join(f"pid {p.pid} as {p.user}" for p in procs)
    return check(
        f"live.process.{daemon}",
        f"the {daemon} runs unprivileged",
        found,
        ok=f"{users} (not root)",
    )


def _activation_waiting(p: ProcessFact) -> bool:
    # comm is cut at 15 characters: look at argv[0] for the activator.
    exe = Path(p.cmdline[0]).name if p.cmdline else p.comm
    return p.pid == 1 or exe == "systemd-socket-activate"


def judge_priv(procs: tuple[ProcessFact, ...], listens: str) -> Check:
    """hive-priv holds priv.sock only through socket activation (see the module docstring)."""
    title = "hive-priv is socket-activated (fd 3 from LISTEN_FDS/LISTEN_PID)"
    if not procs:
        return check(
            "live.process.priv",
            title,
            [Finding(f"nothing holds the listening socket at {listens}: hive-priv is unreachable")],
            ok="",
        )
    found: list[Finding] = []
    notes: list[str] = []
    for p in procs:
        if _activation_waiting(p):
            notes.append(f"pid {p.pid} ({p.comm}) holds the socket for activation")
            continue
        env_ok = p.environ.get("LISTEN_PID") == str(p.pid) and p.environ.get("LISTEN_FDS") == "1"
        if not env_ok:
            found.append(
                Finding(
                    "holds priv.sock but was not started by socket activation "
                    "(no LISTEN_FDS=1/LISTEN_PID=<pid> in its initial environment)",
                    f"pid {p.pid}",
                    {"cmdline": _cmd(p), "environ": p.environ},
                )
            )
        elif 3 not in p.socket_fds:
            found.append(
                Finding(
                    f"the activated socket is not its fd 3 (fds {list(p.socket_fds)})",
                    f"pid {p.pid}",
                )
            )
        else:
            notes.append(
                f"pid {p.pid} as {p.user}: fd 3 is priv.sock, LISTEN_PID={p.pid}, "
                f"parent {p.ppid} ({p.parent_comm})"
            )
    return check("live.process.priv", title, found, ok="socket-activated", notes=notes)


def judge_processes(facts: LiveFacts) -> list[Check]:
    """Core and gateway not root; hive-priv socket-activated."""
    run = Path(facts.run_dir)
    return [
        _unprivileged("core", facts.processes.get("core", ()), str(run / "core.sock")),
        _unprivileged("gateway", facts.processes.get("gateway", ()), facts.gateway_listen),
        judge_priv(facts.processes.get("priv", ()), str(run / "priv.sock")),
    ]


def _tables(facts: LiveFacts) -> tuple[Table, Table]:
    sockets = Table(
        "socket files",
        ("role", "path", "type", "owner", "group", "mode"),
        tuple(
            (
                s.role,
                s.path,
                ("socket" if s.is_socket else "dir" if s.is_dir else "other")
                if s.exists
                else "MISSING",
                _name(s.uid) if s.exists else "-",
                _group(s.gid) if s.exists else "-",
                f"{s.mode:04o}" if s.exists else "-",
            )
            for s in facts.sockets
        ),
    )
    procs = Table(
        "daemon processes",
        ("daemon", "pid", "user", "uids", "parent", "command"),
        tuple(
            (
                daemon,
                str(p.pid),
                p.user,
                "/".join(map(str, p.uids)),
                f"{p.ppid} ({p.parent_comm})",
                _cmd(p),
            )
            for daemon, ps in sorted(facts.processes.items())
            for p in ps
        ),
    )
    return sockets, procs


def live_section(facts: LiveFacts) -> Section:
    """Sockets and processes."""
    return Section(
        "live",
        f"Live installation ({facts.run_dir})",
        (judge_sockets(facts), *judge_processes(facts)),
        _tables(facts),
    )
