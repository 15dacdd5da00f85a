"""Per-agent control groups: how much memory, CPU and how many tasks an agent may use.

hive-priv gives every agent a control group of its own (``<parent>/a-<agent>``:
beneath hive-priv's own group on v1, at the top of the hierarchy on v2), with
the limits of ``[agents]`` (:class:`enforcer.config.AgentsConfig`) written
before the agent's first process exists:

- **memory**: a hard limit on what the agent's processes use together (page
  cache and kernel memory included); past it the kernel reclaims, then kills
  inside that group only. Swap is not a way round it (the memory+swap limit
  is the same where the kernel accounts swap).
- **CPU**: a quota of CPU time per 100 ms period (``cpu_max`` = 1.0 is one
  core's worth), so a spinning agent leaves the other core(s) to the daemons.
- **tasks**: processes and threads together (``pids``), beside the per-uid
  ``RLIMIT_NPROC`` (:func:`enforcer.containers._limit_processes`).

How an agent gets in: its first process is born inside, so everything it
forks stays there - it is never moved in after it could have forked. On
cgroup v1 (what this project's machines have, and what the tests exercise)
the spawn thread alone joins the agent's groups (:meth:`AgentCgroups.enter_thread`)
and forks the agent; hive-priv's other threads never enter. v2 moves whole
processes only, so there hive-priv enters the agent's group for the instant
of the spawn and leaves right after (:meth:`AgentCgroups.spawning_in`);
meanwhile its own threads count against the agent's task limit, which is
why ``tasks_max`` is at least 16. On v2 the agents' parent is at the top of
the hierarchy (``/sys/fs/cgroup/<parent>``), not beneath hive-priv's unit
(see :func:`discover`); this path is not exercised on this project's
machines (cgroup v1). The spawn thread also unshares the cgroup namespace:
a cgroup file system the agent mounted itself would show only its own group.

The pure parts (reading ``/proc/self/mountinfo`` and ``/proc/self/cgroup``,
the files and values a set of limits means) are plain functions; the thin
shell writes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from enforcer.errors import HiveError

__all__ = [
    "CONTROLLERS",
    "GROUP_PREFIX",
    "AgentCgroups",
    "CgroupError",
    "Layout",
    "Limits",
    "Setting",
    "discover",
    "oom_kills",
    "own_paths",
    "parse_mountinfo",
    "settings",
    "sweep",
]

CONTROLLERS = ("memory", "pids", "cpu")
"""The controllers every agent's group needs."""

CPU_PERIOD_US = 100_000
"""The CPU quota's period (the kernel's default): ``cpu_max`` CPUs' worth of it per period."""

_LEAF = "priv"

GROUP_PREFIX = "a-"
"""Agent ``name``'s group is ``<parent>/a-<name>``."""


class CgroupError(HiveError):
    """Agents' control groups cannot be made or used here (the reason says why)."""

    status = 503
    code = "cgroups_unavailable"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one agent may use; ``None`` leaves that resource unbounded."""

    memory_bytes: int | None = None
    cpu: float | None = None
    pids: int | None = None

    @property
    def bounded(self) -> bool:
        """Whether any limit is set at all."""
        return any(v is not None for v in (self.memory_bytes, self.cpu, self.pids))


@dataclass(frozen=True, slots=True)
class Setting:
    """One file of an agent's group and what to write there."""

    controller: str
    file: str
    value: str
    # Absent on kernels that do not account swap: skipped there, not an error.
    optional: bool = False


def settings(limits: Limits, version: int) -> list[Setting]:
    """The files (in write order) that put ``limits`` on a fresh group of cgroup ``version``."""
    out: list[Setting] = []
    if version == 1:
        if limits.memory_bytes is not None:
            # memory+swap must stay >= memory: lift it first (a group kept from
            # an earlier start may hold a lower one), then set both.
            out.append(Setting("memory", "memory.memsw.limit_in_bytes", "-1", optional=True))
            out.append(Setting("memory", "memory.limit_in_bytes", str(limits.memory_bytes)))
            out.append(
                Setting(
                    "memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes), optional=True
                )
            )
        if limits.pids is not None:
            out.append(Setting("pids", "pids.max", str(limits.pids)))
        if limits.cpu is not None:
            out.append(Setting("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)))
            out.append(Setting("cpu", "cpu.cfs_quota_us", str(_quota_us(limits.cpu))))
        return out
    if version == 2:
        if limits.memory_bytes is not None:
            out.append(Setting("memory", "memory.max", str(limits.memory_bytes)))
            out.append(Setting("memory", "memory.swap.max", "0", optional=True))
        if limits.pids is not None:
            out.append(Setting("pids", "pids.max", str(limits.pids)))
        if limits.cpu is not None:
            out.append(Setting("cpu", "cpu.max", f"{_quota_us(limits.cpu)} {CPU_PERIOD_US}"))
        return out
    raise ValueError(f"cgroup version {version}?")


def _quota_us(cpu: float) -> int:
    # The kernel refuses quotas under 1 ms.
    return max(1000, round(cpu * CPU_PERIOD_US))


@dataclass(frozen=True, slots=True)
class Mount:
    """One cgroup file system as ``/proc/self/mountinfo`` shows it."""

    version: int
    controllers: frozenset[str]  # v1: those of this hierarchy; v2: empty (see cgroup.controllers)
    root: str  # the hierarchy's directory mounted here
    mountpoint: Path


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup (v1) and cgroup2 mounts listed in ``/proc/self/mountinfo`` text."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, superopts = tail[0], tail[2].split(",")
        root, mountpoint = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            mounts.append(Mount(2, frozenset(), root, mountpoint))
        elif fstype == "cgroup":
            names = frozenset(o for o in superopts if o in CONTROLLERS or o == "cpuacct")
            if names:
                mounts.append(Mount(1, names, root, mountpoint))
    return mounts


def own_paths(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` text as controller -> path (v2's line under ``""``)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hier, controllers, path = parts
        if not controllers:
            paths[""] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    return paths


def _beneath(mount: Mount, path: str) -> Path | None:
    """The directory of group ``path`` under ``mount`` (None when the mount does not show it)."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root) :].lstrip("/")
    return mount.mountpoint / rel if rel else mount.mountpoint


@dataclass(frozen=True, slots=True)
class Layout:
    """Where agents' groups go, per controller, and where hive-priv itself lives.

    v1: one directory per controller (hierarchies can differ); v2: the same
    directory for all three.
    """

    version: int
    parents: Mapping[str, Path]  # controller -> directory holding agents' groups
    homes: Mapping[str, Path]  # controller -> hive-priv's own group (to move back to)

    def agent_dirs(self, name: str) -> dict[str, Path]:
        """Controller -> agent ``name``'s group directory (``a-<name>``).

        Prefixed: a bare agent name can be a control file's (``tasks`` is a
        valid agent name and a v1 file in every group); no control file of
        either version starts with ``a-``.
        """
        return {c: p / f"{GROUP_PREFIX}{name}" for c, p in self.parents.items()}


def discover(mountinfo: str, cgroup: str, parent: str) -> Layout:
    """The layout for agents' groups beneath ``parent``, from the two /proc texts (pure).

    cgroup v1 is used when memory, pids and cpu each have a hierarchy; else a
    cgroup2 mount (the v2 groups' own files are checked when they are made).
    """
    mounts = parse_mountinfo(mountinfo)
    paths = own_paths(cgroup)
    v1 = {c: m for m in mounts if m.version == 1 for c in m.controllers if c in CONTROLLERS}
    if all(c in v1 and c in paths for c in CONTROLLERS):
        homes: dict[str, Path] = {}
        for c in CONTROLLERS:
            home = _beneath(v1[c], paths[c])
            if home is None:
                raise CgroupError(f"this process's {c} group {paths[c]} is not visible here")
            homes[c] = home
        return Layout(1, {c: homes[c] / parent for c in CONTROLLERS}, homes)
    v2 = [m for m in mounts if m.version == 2]
    if v2 and "" in paths:
        home = _beneath(v2[0], paths[""])
        if home is None:
            raise CgroupError(f"this process's group {paths['']} is not visible here")
        # At the top of the hierarchy, not beneath hive-priv's unit: a v2 group
        # that hands controllers to children may hold no process, and systemd
        # (before DelegateSubgroup=) puts a restarted service's process into
        # the unit's own group - which would then refuse it while agents run.
        top = v2[0].mountpoint / parent
        return Layout(2, {c: top for c in CONTROLLERS}, {c: home for c in CONTROLLERS})
    missing = [c for c in CONTROLLERS if c not in v1]
    raise CgroupError(
        "no cgroup file system with the memory, pids and cpu controllers is mounted "
        f"(missing: {', '.join(missing)})"
    )


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class AgentCgroups:
    """The thin shell: make, enter, measure and remove agents' groups."""

    def __init__(self, layout: Layout, limits: Limits) -> None:
        self.layout = layout
        self.limits = limits
        self._settings = settings(limits, layout.version)

    @classmethod
    def here(cls, parent: str, limits: Limits) -> AgentCgroups:
        """For this process (hive-priv), agents' groups beneath ``parent``; ready to use."""
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
            cgroup = Path("/proc/self/cgroup").read_text()
        except OSError as e:
            raise CgroupError(f"cannot read this process's cgroups: {e}") from e
        groups = cls(discover(mountinfo, cgroup, parent), limits)
        groups.set_up()
        return groups

    def _dirs(self, per_controller: Mapping[str, Path]) -> list[Path]:
        # v2 (and v1 hierarchies mounted together) share directories: each once.
        return list(dict.fromkeys(per_controller.values()))

    def set_up(self) -> None:
        """Make the agents' parent group(s) (v2: with the three controllers handed down)."""
        try:
            for parent in self._dirs(self.layout.parents):
                if self.layout.version == 2:
                    self._check_v2(parent.parent)
                parent.mkdir(mode=0o755, exist_ok=True)
                if self.layout.version == 2:
                    self._enable_v2(parent)
        except OSError as e:
            raise CgroupError(f"cannot make the agents' control groups: {e}") from e

    def _check_v2(self, top: Path) -> None:
        available = (top / "cgroup.controllers").read_text().split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise CgroupError(f"{top}: controllers {', '.join(missing)} are not available")
        enabled = (top / "cgroup.subtree_control").read_text().split()
        if any(c not in enabled for c in CONTROLLERS):
            self._enable_v2(top)

    @staticmethod
    def _enable_v2(group: Path) -> None:
        _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))

    def prepare(self, name: str) -> None:
        """Agent ``name``'s group, made if missing, with the limits written (again)."""
        dirs = self.layout.agent_dirs(name)
        try:
            for path in self._dirs(dirs):
                path.mkdir(mode=0o755, exist_ok=True)
                if path.is_symlink() or not path.is_dir():
                    raise CgroupError(f"{path} is not a control group directory")
            for s in self._settings:
                target = dirs[s.controller] / s.file
                if s.optional and not target.exists():
                    continue
                _write(target, s.value)
        except OSError as e:
            raise CgroupError(f"cannot set agent {name}'s limits: {e}") from e

    @property
    def per_thread(self) -> bool:
        """Whether one thread can join a group alone (v1): see :meth:`enter_thread`."""
        return self.layout.version == 1

    def enter_thread(self, name: str) -> None:
        """(v1) Move the calling thread alone into agent ``name``'s groups.

        A process it forks is born there; hive-priv's other threads stay where
        they are (not counted against the agent's tasks, not held to its CPU
        quota, charging nothing to its memory). The thread is the spawn's own
        and ends after it, so it never moves back.
        """
        tid = str(threading.get_native_id())
        try:
            for path in self._dirs(self.layout.agent_dirs(name)):
                _write(path / "tasks", tid)
        except OSError as e:
            raise CgroupError(f"cannot enter agent {name}'s control group: {e}") from e

    @contextlib.contextmanager
    def spawning_in(self, name: str) -> Iterator[None]:
        """This process inside agent ``name``'s group for the block (a spawn), then back.

        Callers hold the backend's lock: nothing else of hive-priv spawns meanwhile.
        """
        pid = str(os.getpid())
        try:
            try:
                for path in self._dirs(self.layout.agent_dirs(name)):
                    _write(path / "cgroup.procs", pid)
            except OSError as e:
                raise CgroupError(f"cannot enter agent {name}'s control group: {e}") from e
            yield
        finally:
            # Back home whatever happened (also after a partial move).
            for home in self._dirs(self.layout.homes):
                _write(home / "cgroup.procs", pid)

    def pids(self, name: str) -> list[int]:
        """Processes in agent ``name``'s group (any hierarchy); [] when it has none."""
        found: set[int] = set()
        for path in self._dirs(self.layout.agent_dirs(name)):
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def usage(self, name: str) -> dict[str, int | float | None]:
        """Agent ``name``'s limits and what it uses now (keys absent when unknown).

        ``memory_bytes``, ``tasks``, ``oom_kills`` (processes the kernel killed
        at its memory limit, over the group's life) beside ``memory_max_bytes``,
        ``cpu_max``, ``tasks_max`` (None: unbounded).
        """
        dirs = self.layout.agent_dirs(name)
        v1 = self.layout.version == 1
        out: dict[str, int | float | None] = {
            "memory_max_bytes": self.limits.memory_bytes,
            "cpu_max": self.limits.cpu,
            "tasks_max": self.limits.pids,
        }
        memory = dirs["memory"] / ("memory.usage_in_bytes" if v1 else "memory.current")
        for key, path in (("memory_bytes", memory), ("tasks", dirs["pids"] / "pids.current")):
            with contextlib.suppress(OSError, ValueError):
                out[key] = int(path.read_text().strip())
        events = dirs["memory"] / ("memory.oom_control" if v1 else "memory.events")
        with contextlib.suppress(OSError, ValueError):
            out["oom_kills"] = oom_kills(events.read_text())
        return out

    def remove(self, name: str, timeout: float = 5.0) -> None:
        """Remove agent ``name``'s group (its processes gone; exiting ones are waited for)."""
        deadline = time.monotonic() + timeout
        for path in self._dirs(self.layout.agent_dirs(name)):
            try:
                _rmdir_waiting(path, deadline)
            except OSError as e:
                raise CgroupError(f"cannot remove agent {name}'s group {path}: {e}") from e

    def remove_parents(self) -> None:
        """Remove the (empty) agents' parent group(s): for tests and tear-down."""
        for parent in self._dirs(self.layout.parents):
            with contextlib.suppress(FileNotFoundError):
                parent.rmdir()


def oom_kills(text: str) -> int:
    """The ``oom_kill`` count of ``memory.oom_control`` (v1) or ``memory.events`` (v2) text."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise ValueError("no oom_kill line (a kernel before 4.13)")


def _rmdir_waiting(path: Path, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY while a killed process is still being torn down.
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def sweep(parent: str, timeout: float = 5.0) -> list[str]:
    """Remove every agent group beneath ``parent`` and ``parent`` itself (this process's tree).

    For tear-down (the demo's, tests'): the agents' processes must be gone.
    Returns what could not be removed (empty: all gone); never raises.
    """
    try:
        layout = discover(
            Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text(), parent
        )
    except (OSError, CgroupError):
        return []
    left: list[str] = []
    deadline = time.monotonic() + timeout
    for top in dict.fromkeys(layout.parents.values()):
        if not top.is_dir():
            continue
        for group in [p for p in top.iterdir() if p.is_dir()]:
            try:
                _rmdir_waiting(group, deadline)
            except OSError:
                left.append(str(group))
        try:
            _rmdir_waiting(top, deadline)
        except OSError:
            left.append(str(top))
    return left
