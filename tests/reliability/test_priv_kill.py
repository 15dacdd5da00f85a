"""hive-priv SIGKILLed mid-request: re-activated by its socket, the operation done or not done.

In production systemd holds ``priv.sock`` (``hive-priv.socket``, ``Accept=no``)
and starts ``hive-priv.service`` again when a connection is pending and the
service is not running. ``systemd-socket-activate`` (the development launcher)
hands the socket to one child only, so here :class:`Activator` does what
systemd does: it holds the listening socket (root:<core group> 0660) and,
whenever a connection is pending and no hive-priv is alive, forks, sets
``LISTEN_FDS=1``/``LISTEN_PID=<child pid>`` in the child, ``dup2``s the
listener to fd 3 and execs ``hive-boundary priv``.

Each scenario sends one lifecycle request (create, start, isolation.apply,
destroy) on the real netns backend (unique table, prefixes, subnets, users),
waits for hive-priv's ``priv.request`` log line for it, sleeps a fraction of
that operation's measured duration and SIGKILLs hive-priv. The next request
re-activates it (its start-up recovery runs before it serves), and then the
whole host is checked with pyroute2, ``nft -j list table`` and the durable
records: every container is whole (user, record, namespace, veth up, set
elements; a running process lives in its namespace) or entirely absent, no
namespace, veth, set element, inventory entry, user or process is left over,
and the interrupted operation can be completed by simply asking again.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from enforcer.containers import processes_of_uid
from enforcer.errors import HiveError, NotFound, Unavailable
from enforcer.priv_client import exchange
from enforcer.priv_protocol import (
    ContainerCreate,
    ContainerDestroy,
    ContainerStart,
    IsolationApply,
    IsolationRemove,
    PrivRequest,
    StateRead,
    decode_response,
    encode_request,
)
from enforcer.users import lookup_user
from netns import links
from netns.cli import load_network_policy
from netns.manager import NetnsManager
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv, priv_env  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]
HIVE_BOUNDARY = Path(sys.executable).parent / "hive-boundary"
FRACTIONS = (
    0.0,
    0.15,
    0.3,
    0.45,
    0.6,
    0.75,
    0.9,
    1.0,
)  # kill points, as fractions of the operation's duration

AGENT = "import time\nwhile True:\n    time.sleep(1)\n"


class Activator:
    """What systemd does for a non-``Accept`` ``.socket`` unit, for one service.

    Holds the listening socket for the whole test; starts the service
    whenever a connection is pending and no instance is alive.
    """

    def __init__(self, path: Path, gid: int, argv: list[str], env: dict[str, str], log: Path):
        self.argv, self.env, self.log = argv, env, log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # never connectable by others, even before the chmod
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        os.chown(path, 0, gid, follow_symlinks=False)  # SocketUser=root, SocketGroup=
        os.chmod(path, 0o660, follow_symlinks=False)  # SocketMode=0660
        self.sock.listen(128)
        self.pid: int | None = None
        self.activations = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activator", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                self._reap()
                if self.pid is None and poller.poll(0):
                    self._spawn()
            time.sleep(0.005)

    def _reap(self) -> None:
        if self.pid is not None and os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
            self.pid = None

    def _spawn(self) -> None:
        log_fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        listen_fd = self.sock.fileno()
        pid = os.fork()
        if pid == 0:  # the child: only fd plumbing and environment, then exec
            try:
                os.setsid()
                os.umask(0o077)  # UMask=0077 in hive-priv.service
                null = os.open("/dev/null", os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(log_fd, 2)
                if listen_fd == 3:
                    os.set_inheritable(3, True)
                else:
                    os.dup2(listen_fd, 3)  # dup2 clears close-on-exec on fd 3
                env = dict(self.env, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
                os.execve(self.argv[0], self.argv, env)
            finally:
                os._exit(127)
        os.close(log_fd)
        self.pid = pid
        self.activations += 1

    def kill(self) -> bool:
        """SIGKILL the running instance (if any) and reap it; True if one was killed."""
        with self._lock:
            self._reap()
            if self.pid is None:
                return False
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
            return True

    def close(self) -> None:
        """Stop activating; SIGTERM (then SIGKILL) the instance; close the socket."""
        self._stop.set()
        self._thread.join()
        if self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(500):
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                    break
                time.sleep(0.02)
            else:
                self.kill()
            self.pid = None
        self.sock.close()


@pytest.fixture
def activated(priv_env: PrivEnv) -> Iterator[tuple[PrivEnv, Activator]]:  # noqa: F811
    """hive-priv behind the test's activator (instead of systemd-socket-activate)."""
    env = priv_env.environ()
    argv = [str(HIVE_BOUNDARY), "priv", *priv_env.args()]
    priv_env.log_path.touch(mode=0o600)
    act = Activator(priv_env.socket, priv_env.core.gid, argv, env, priv_env.log_path)
    try:
        yield priv_env, act
    finally:
        act.close()


# --- talking to hive-priv ------------------------------------------------------


def _call(env: PrivEnv, request: PrivRequest, timeout: float = 60) -> dict[str, Any]:
    line, fds = exchange(env.socket, encode_request(request), timeout)
    for fd in fds:
        os.close(fd)
    return decode_response(line)


def _reactivate(env: PrivEnv, name: str) -> None:
    """A harmless read: the connection that makes the activator start hive-priv again.

    hive-priv recovers before it serves, so the answer means recovery is done.
    """
    with contextlib.suppress(HiveError):
        _call(env, StateRead(name, "nothing-here"))


def _events(env: PrivEnv, start: int) -> list[dict[str, Any]]:
    out = []
    for line in env.log_path.read_bytes()[start:].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _wait_event(env: PrivEnv, start: int, match: Callable[[dict[str, Any]], bool]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(match(e) for e in _events(env, start)):
            return True
        time.sleep(0.001)
    return False


# --- what is on the host ---------------------------------------------------------


@dataclass
class Host:
    """Everything of this test's hive-priv on the host right now."""

    records: dict[str, dict[str, Any]]
    inventory: set[str]
    namespaces: set[str]
    veths: dict[str, bool]  # name -> up
    cont_if: set[str]
    cont_src4: set[str]
    problems: list[str] = field(default_factory=list)


def _nft_set(table: str, name: str) -> set[str]:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", table], capture_output=True, text=True, check=True
    ).stdout
    for item in json.loads(out)["nftables"]:
        s = item.get("set")
        if s and s["name"] == name:
            return {
                " . ".join(e["concat"]) if isinstance(e, dict) else str(e)
                for e in s.get("elem", [])
            }
    raise AssertionError(f"set {name} missing from inet {table}")


def _host(env: PrivEnv) -> Host:
    rec_file = env.state_dir / "priv" / "containers.json"
    records = json.loads(rec_file.read_text())["containers"] if rec_file.exists() else {}
    inv_file = env.run_dir / f"netns-{env.table}.json"
    inventory = set(json.loads(inv_file.read_text())["containers"]) if inv_file.exists() else set()
    with IPRoute() as ipr:
        veths = {
            str(link.get_attr("IFLA_IFNAME")): bool(link["flags"] & 1)
            for link in ipr.link("dump")
            if str(link.get_attr("IFLA_IFNAME")).startswith(env.ifprefix)
        }
    return Host(
        records,
        inventory,
        set(links.list_namespaces(env.netns_prefix)),
        veths,
        _nft_set(env.table, "cont_if"),
        _nft_set(env.table, "cont_src4"),
    )


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def assert_whole_or_absent(env: PrivEnv, name: str) -> str:
    """The container is entirely there (and consistent) or entirely gone; say which."""
    h = _host(env)
    ns = env.netns_prefix + name
    ifname = links.host_ifname(name, env.ifprefix)
    rec = h.records.get(name)
    # Nothing anywhere that no record accounts for.
    with_net = {n for n, r in h.records.items() if r["net"]}
    assert h.inventory == with_net, "netns inventory = containers with a network"
    assert h.namespaces == {env.netns_prefix + n for n in with_net}, "no orphan namespace"
    assert set(h.veths) == {links.host_ifname(n, env.ifprefix) for n in with_net}, "no orphan veth"
    assert h.cont_if == set(h.veths), "set elements = veths, no more, no less"
    assert all(h.veths.values()), "every veth of a container is up (and isolated: cont_if)"
    if rec is None:
        assert lookup_user(f"hive-a-{name}") is None, "no orphan user"
        assert not (env.state_dir / "agents" / name).exists(), "no orphan directories"
        assert not (env.run_dir / "agents" / f"{name}.sock").exists()
        return "absent"
    assert rec["pending"] is None, f"recovery left {rec['pending']!r} pending"
    assert rec["state"] in {"created", "running", "stopped", "failed"}
    user = lookup_user(rec["user"])
    assert user is not None
    assert user.uid == rec["uid"]
    assert (env.state_dir / "agents" / name / "state").is_dir()
    procs = processes_of_uid(user.uid)
    if rec["net"]:
        assert rec["net"]["netns"] == ns
        assert rec["net"]["host_ifname"] == ifname
        assert ifname in h.cont_if
        assert f"{ifname} . {rec['net']['ipv4']}" in h.cont_src4
    if rec["state"] == "running":
        # Never a running agent without its isolation: its namespace, veth up, elements.
        assert rec["net"], "running without a network record"
        assert procs, "recorded running but no process"
        ns_ino = os.stat(links.NETNS_DIR / ns).st_ino
        assert all(_netns_inode(p) == ns_ino for p in procs), "a process outside its namespace"
    else:
        assert procs == [], "a process of a container that is not running"
    return str(rec["state"]) + ("+net" if rec["net"] else "")


def _live_in_sync(env: PrivEnv) -> None:
    """The table and every container's links are what the inventory compiles to."""
    m = NetnsManager(
        load_network_policy(env.policy_dir),
        env.table,
        env.netns_prefix,
        ifprefix=env.ifprefix,
        state_path=env.run_dir / f"netns-{env.table}.json",
    )
    d = m.drift()
    assert d.in_sync, d.lines()


# --- the scenarios ---------------------------------------------------------------


def _agent_cmd(env: PrivEnv) -> list[str]:
    path = env.base / "agent.py"
    if not path.exists():
        path.write_text(AGENT)
        path.chmod(0o644)
    return [SYSTEM_PYTHON, str(path)]


@dataclass(frozen=True)
class Op:
    """One lifecycle operation: how to prepare it, send it, and finish it by asking again."""

    kind: str
    prepare: Callable[[PrivEnv, str], None]
    request: Callable[[PrivEnv, str], PrivRequest]
    complete: Callable[[PrivEnv, str], None]
    done: Callable[[str], bool]  # from assert_whole_or_absent's answer


def _create(env: PrivEnv, name: str) -> None:
    _call(env, ContainerCreate(name, tuple(_agent_cmd(env))))


def _nothing(env: PrivEnv, name: str) -> None:
    return None


def _created_without_net(env: PrivEnv, name: str) -> None:
    _create(env, name)
    _call(env, IsolationRemove(name))


def _running(env: PrivEnv, name: str) -> None:
    _create(env, name)
    _call(env, ContainerStart(name))


def _start(env: PrivEnv, name: str) -> None:
    _call(env, ContainerStart(name))


def _apply(env: PrivEnv, name: str) -> None:
    _call(env, IsolationApply(name))


def _create_again(env: PrivEnv, name: str) -> None:
    with contextlib.suppress(HiveError):  # Conflict when it was done: fine
        _create(env, name)


def _destroy_again(env: PrivEnv, name: str) -> None:
    with contextlib.suppress(NotFound):
        _call(env, ContainerDestroy(name))


OPS = {
    "create": Op(
        "create",
        _nothing,
        lambda env, n: ContainerCreate(n, tuple(_agent_cmd(env))),
        _create_again,
        lambda state: state == "created+net",
    ),
    "start": Op(
        "start",
        _create,
        lambda env, n: ContainerStart(n),
        _start,
        lambda state: state == "running+net",
    ),
    "isolation.apply": Op(
        "isolation.apply",
        _created_without_net,
        lambda env, n: IsolationApply(n),
        _apply,
        lambda state: state.endswith("+net"),
    ),
    "destroy": Op(
        "destroy",
        _running,
        lambda env, n: ContainerDestroy(n),
        _destroy_again,
        lambda state: state == "absent",
    ),
}


def _measure(env: PrivEnv, op: Op) -> float:
    """How long hive-priv takes for this operation here (ms, from its own log)."""
    name = env.agent_name()
    op.prepare(env, name)
    start = env.log_path.stat().st_size
    _call(env, op.request(env, name))
    ms = [
        e["ms"]
        for e in _events(env, start)
        if e.get("event") == "priv.result" and e.get("agent") == name
    ]
    _destroy_again(env, name)
    assert ms, "hive-priv logged no result"
    return float(ms[-1])


@pytest.mark.parametrize("kind", list(OPS))
def test_sigkill_mid_request_leaves_the_operation_done_or_not_done(
    activated: tuple[PrivEnv, Activator], kind: str
) -> None:
    env, act = activated
    op = OPS[kind]
    duration = _measure(env, op)
    outcomes: list[str] = []
    for fraction in FRACTIONS:
        name = env.agent_name()
        op.prepare(env, name)
        start = env.log_path.stat().st_size
        box: dict[str, Any] = {}

        def send(name: str = name, box: dict[str, Any] = box) -> None:
            try:
                box["result"] = _call(env, op.request(env, name))
            except HiveError as e:
                box["error"] = e

        sender = threading.Thread(target=send)
        sender.start()

        def is_request(e: dict[str, Any], name: str = name) -> bool:
            return e.get("event") == "priv.request" and e.get("agent") == name

        assert _wait_event(env, start, is_request), "hive-priv never logged the request"
        time.sleep(duration * fraction / 1000)
        killed = act.kill()
        sender.join(60)
        assert killed, "hive-priv was not running"
        answered = "result" in box
        if not answered:
            assert isinstance(box.get("error"), Unavailable), box
        activations = act.activations
        _reactivate(env, name)
        assert act.activations == activations + 1, "the next connection re-activated hive-priv"

        state = assert_whole_or_absent(env, name)
        if answered:
            assert op.done(state), f"acknowledged {kind} but the container is {state}"
        outcomes.append(f"{fraction:.2f}:{'done' if op.done(state) else 'not done'}({state})")
        _live_in_sync(env)

        # Done or not done - never stuck: asking again finishes it.
        op.complete(env, name)
        assert op.done(assert_whole_or_absent(env, name))
        _live_in_sync(env)
        _destroy_again(env, name)
        assert assert_whole_or_absent(env, name) == "absent"
    print(f"\n{kind}: {duration:.0f} ms; kill points {' '.join(outcomes)}")
