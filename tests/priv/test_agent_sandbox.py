"""Each agent run has its own /tmp, /var/tmp, /dev/shm, SysV IPC and /proc; uids are never reused.

Real agents under a real hive-priv: what one agent leaves in the world-writable
places reaches neither the host, nor another agent, nor the next agent created
after it is destroyed; an agent's /proc lists only its own processes; the
host's mount table is untouched; and a destroyed agent's uid is never handed
to a later one. An agent that tries to undo its sandbox (umount, a user
namespace, another process's /proc/<pid>/root) still never reaches the host's
/tmp.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enforcer.containers import (
    AGENT_LOG_KEEP,
    AGENT_LOG_LIMIT,
    AGENT_MAX_FILE_BYTES,
    AGENT_MAX_PROCESSES,
    IdMarkStore,
    allocate_agent_user,
    bound_log,
    processes_of_uid,
)
from enforcer.errors import HiveError
from enforcer.priv_client import PrivClient
from enforcer.users import (
    IdsExhausted,
    SystemUser,
    create_user_with_id,
    host_id_in_use,
    lookup_user,
    remove_system_user,
)
from tests.conftest import require_root, wait_until
from tests.priv.conftest import (
    AGENT_REPORT,
    SYSTEM_PYTHON,
    PrivEnv,
    priv_env_under,
    read_report,
    running_agent,
)

# The agent: optionally leaves a file in each private directory and a SysV
# shared memory segment, then reports what it sees (atomically, into its own
# state/) and stays running.
PROBE = (
    AGENT_REPORT
    + r"""
import ctypes, json, os, sys, time
token, key, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
left = [f"/tmp/x-{token}", f"/dev/shm/y-{token}", f"/var/tmp/z-{token}"]
mine = f"/tmp/run-{os.environ['HIVE_AGENT']}"
mine_before = os.path.exists(mine)
open(mine, "w").close()
if mode == "write":
    for path in left:
        with open(path, "w") as f:
            f.write("left by " + os.environ["HIVE_AGENT"])
    if libc.shmget(key, 4096, 0o1000 | 0o666) < 0:  # IPC_CREAT
        sys.exit(f"shmget: {ctypes.get_errno()}")
def uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("Uid:"))
    except OSError:
        return None
with open("/proc/sysvipc/shm") as f:
    keys = [int(line.split()[0]) for line in f.readlines()[1:]]
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
netns = []
for entry in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
    try:
        fd = os.open(os.path.join("/run/netns", entry), os.O_RDONLY)
    except OSError:
        continue
    if os.readlink(f"/proc/self/fd/{fd}").startswith("net:"):
        netns.append(entry)
    os.close(fd)
with open("/proc/self/status") as f:
    caps = {l.split(":")[0]: int(l.split()[1], 16) for l in f if l.startswith("Cap")}
with open("/proc/self/status") as f:
    status = {l.split(":")[0]: l.split()[1:] for l in f}
groups, no_new_privs = status["Groups"], status["NoNewPrivs"]
report = {
    "caps": caps,
    "groups": groups,
    "no_new_privs": no_new_privs,
    "netns": netns,
    "pid": os.getpid(),
    "uid": os.getuid(),
    "seen": [p for p in left + [f"/tmp/host-{token}"] if os.path.exists(p)],
    "mine_before": mine_before,
    "shm_key": key in keys,
    "pids": pids,
    "uids": sorted({uid_of(p) for p in pids} - {None}),
    "tmp": sorted(os.listdir("/tmp")),
}
send_report(report)
while True:
    time.sleep(60)
"""
)

# The agent as an attacker: every way it can think of to the host's /tmp.
ATTACK = (
    AGENT_REPORT
    + r"""
import ctypes, json, os, sys, time
token, host_pid = sys.argv[1], int(sys.argv[2])
marker = f"/tmp/host-{token}"
libc = ctypes.CDLL(None, use_errno=True)
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
out = {}
def read(name, path):
    try:
        with open(path) as f:
            out[name] = f.read()
    except OSError as e:
        out[name] = type(e).__name__
read("direct", marker)
read("host_process_root", f"/proc/{host_pid}/root{marker}")
read("pid_1_root", f"/proc/1/root{marker}")
out["umount"] = "umounted" if libc.umount2(b"/tmp", 2) == 0 else os.strerror(ctypes.get_errno())
read("after_umount", marker)
# A user namespace of its own (root there) and a mount namespace owned by it:
# the mounts it copies came as one locked unit and may not be taken apart.
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
        res = {"userns": os.strerror(ctypes.get_errno())}
    else:
        rc = libc.umount2(b"/tmp", 2)
        res = {"userns": "ok", "umount": "umounted" if rc == 0 else os.strerror(ctypes.get_errno())}
        try:
            with open(marker) as f:
                res["read"] = f.read()
        except OSError as e:
            res["read"] = type(e).__name__
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
out["in_userns"] = json.loads(os.read(r, 4096))
send_report(out)
while True:
    time.sleep(60)
"""
)


def _program(env: PrivEnv, name: str, code: str) -> str:
    path = env.base / name
    path.write_text(code)
    path.chmod(0o644)
    return str(path)


def _mounts(pid: str = "self") -> list[str]:
    """A mount table, less the network namespaces' nsfs mounts (this and other tests add them)."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [line for line in lines if not line.split()[4].startswith("/run/netns/")]


def _shm_keys() -> set[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines}


@contextlib.contextmanager
def _host_marker(token: str) -> Iterator[Path]:
    marker = Path(f"/tmp/host-{token}")
    marker.write_text("the host's")
    marker.chmod(0o644)  # world-readable: only the mount namespace hides it
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def test_what_an_agent_leaves_reaches_neither_host_nor_other_agent_nor_next_agent(
    priv: PrivEnv,
) -> None:
    token, key = secrets.token_hex(4), 0x48000000 + secrets.randbelow(1 << 24)
    probe = _program(priv, "probe.py", PROBE)
    client = PrivClient(priv.socket, timeout=60)
    host_mounts = _mounts()
    a, b = priv.agent_name(), priv.agent_name()
    with _host_marker(token):
        for name, mode in ((a, "write"), (b, "read")):
            asyncio.run(
                client.container_create(name, [SYSTEM_PYTHON, probe, token, str(key), mode])
            )
            asyncio.run(client.container_start(name))
        seen_a, seen_b = read_report(priv, a), read_report(priv, b)
        status = asyncio.run(client.container_status())

        # A sees what it left (the probe works) - and nothing of the host's /tmp.
        assert seen_a["seen"] == [f"/tmp/x-{token}", f"/dev/shm/y-{token}", f"/var/tmp/z-{token}"]
        assert seen_a["shm_key"] is True
        assert seen_a["tmp"] == sorted([f"x-{token}", f"run-{a}"])
        # Dropped before exec: no capability, no supplementary group.
        for seen in (seen_a, seen_b):
            assert seen["caps"]["CapEff"] == seen["caps"]["CapPrm"] == 0
            assert seen["caps"]["CapAmb"] == seen["caps"]["CapInh"] == 0
            assert seen["groups"] == []
            # And none to gain through exec (setuid bits, file capabilities).
            assert seen["no_new_privs"] == ["1"]
        # The recorded pid is the agent's own process (stop/kill/adoption rely on it).
        assert status[a]["pid"] == seen_a["pid"]
        # Neither the host ...
        for left in seen_a["seen"]:
            assert not Path(left).exists()
        assert key not in _shm_keys()
        # ... nor another agent sees it; nor the host's /tmp.
        assert seen_b["seen"] == []
        assert seen_b["shm_key"] is False
        # No network namespace to open and pin: /run/netns holds placeholders only.
        assert seen_a["netns"] == seen_b["netns"] == []
        # Each /proc lists only its own uid's processes: not A, not hive-priv, not init.
        assert seen_b["uids"] == [status[b]["uid"]]
        assert seen_b["pid"] in seen_b["pids"]
        assert seen_a["pid"] not in seen_b["pids"]
        assert priv.proc is not None
        assert priv.proc.pid not in seen_b["pids"]
        assert 1 not in seen_b["pids"]

        # The host's mount table is as it was, and so is hive-priv's own.
        assert _mounts() == host_mounts
        assert _mounts(str(priv.proc.pid)) == host_mounts

        # A destroyed; the next agent created finds nothing of it, under a new uid.
        uid_a = status[a]["uid"]
        asyncio.run(client.container_destroy(a))
        c = priv.agent_name()
        asyncio.run(client.container_create(c, [SYSTEM_PYTHON, probe, token, str(key), "read"]))
        asyncio.run(client.container_start(c))
        seen_c = read_report(priv, c)
        assert seen_c["seen"] == []
        assert seen_c["shm_key"] is False
        assert seen_c["uid"] not in {uid_a, status[b]["uid"]}
        for name in (b, c):
            asyncio.run(client.container_destroy(name))
    assert _mounts() == host_mounts


def test_a_restart_and_a_restarted_hive_priv_keep_the_sandbox_and_the_pid(priv: PrivEnv) -> None:
    token = secrets.token_hex(4)
    probe = _program(priv, "probe.py", PROBE)
    client = PrivClient(priv.socket, timeout=60)
    name = priv.agent_name()
    asyncio.run(client.container_create(name, [SYSTEM_PYTHON, probe, token, "1", "read"]))
    first = asyncio.run(client.container_start(name))
    assert read_report(priv, name)["mine_before"] is False
    # Each run gets a fresh /tmp: what the last run left is gone.
    again = asyncio.run(client.container_restart(name))
    seen = read_report(priv, name)
    assert seen["mine_before"] is False
    assert again["pid"] == seen["pid"] != first["pid"]
    # hive-priv restarted: it adopts the sandboxed agent by pid and start time.
    priv.stop()
    priv.start()
    adopted = asyncio.run(client.container_status())[name]
    assert (adopted["state"], adopted["pid"]) == ("running", seen["pid"])
    stopped = asyncio.run(client.container_stop(name))
    assert stopped["state"] == "stopped"
    assert processes_of_uid(adopted["uid"]) == []
    asyncio.run(client.container_destroy(name))


def test_an_agent_cannot_take_its_sandbox_apart(priv: PrivEnv) -> None:
    token = secrets.token_hex(4)
    attack = _program(priv, "attack.py", ATTACK)
    client = PrivClient(priv.socket, timeout=60)
    name = priv.agent_name()
    assert priv.proc is not None
    # hive-priv's pid, given away: its /proc/<pid>/root is the host's root.
    argv = [SYSTEM_PYTHON, attack, token, str(priv.proc.pid)]
    with _host_marker(token) as marker:
        asyncio.run(client.container_create(name, argv))
        asyncio.run(client.container_start(name))
        out = read_report(priv, name)
        assert marker.read_text() == "the host's"
    assert "the host's" not in json.dumps(out), out
    assert out["direct"] == "FileNotFoundError"
    assert out["host_process_root"] == "FileNotFoundError"  # hidepid: no such pid
    assert out["pid_1_root"] == "FileNotFoundError"
    assert out["umount"] == os.strerror(1)  # EPERM: no CAP_SYS_ADMIN
    assert out["after_umount"] == "FileNotFoundError"
    # In a user namespace of its own, the tmpfs is locked to what it covers.
    assert out["in_userns"]["userns"] in {"ok", os.strerror(1), os.strerror(28)}
    if out["in_userns"]["userns"] == "ok":
        assert out["in_userns"]["umount"] == os.strerror(22)  # EINVAL: locked mount
        assert out["in_userns"]["read"] == "FileNotFoundError"
    asyncio.run(client.container_destroy(name))


# Where STATE and RUN live under /tmp (a development set-up): the agent's own
# state/ and socket directory are bound into its private /tmp, nothing else.
TMP_AGENT = (
    AGENT_REPORT
    + r"""
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["HIVE_SOCKET"])
s.sendall(b"hello")
seen = {
    "tmp": sorted(os.listdir("/tmp")),
    "base": sorted(os.listdir(sys.argv[1])),
    "host": os.path.exists(sys.argv[2]),
}
send_report(seen)
time.sleep(600)
"""
)


def test_state_and_socket_stay_reachable_when_state_and_run_live_under_tmp() -> None:
    require_root()
    token = secrets.token_hex(4)
    with priv_env_under("/tmp") as env, _host_marker(token) as marker:
        env.start()
        client = PrivClient(env.socket, timeout=60)
        name = env.agent_name()
        argv = [SYSTEM_PYTHON, "-c", TMP_AGENT, str(env.base), str(marker)]
        asyncio.run(client.container_create(name, argv))
        listener = asyncio.run(client.socket_create(name))
        try:
            asyncio.run(client.container_start(name))
            listener.settimeout(20)
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(16) == b"hello"
        finally:
            listener.close()
        seen = read_report(env, name)
        # Only the stubs down to its own paths: not the host's /tmp, not the
        # rest of the test's directory (hive-priv's log, the policy copy).
        assert seen == {"tmp": [env.base.name], "base": ["run", "state"], "host": False}
        asyncio.run(client.container_destroy(name))


PROGRAM_UNDER_TMP = (
    AGENT_REPORT
    + r"""
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
try:
    open(os.path.join(here, "planted"), "w").close()
    wrote = "written"
except OSError as e:
    wrote = os.strerror(e.errno)
seen = {
    "here": sorted(os.listdir(here)),
    "tmp": sorted(os.listdir("/tmp")),
    "host": os.path.exists(sys.argv[1]),
    "wrote": wrote,
}
send_report(seen)
time.sleep(600)
"""
)


def test_a_program_under_tmp_still_runs_and_sees_only_its_own_directory_read_only(
    priv: PrivEnv,
) -> None:
    # Found by a clean-clone CI run: a checkout under /tmp (the demo's agent
    # program and interpreter there) was hidden by the agent's private /tmp,
    # so no demo agent started. The directories the command names are bound
    # back, read-only; nothing else of the host's /tmp.
    token = secrets.token_hex(4)
    program_dir = Path(tempfile.mkdtemp(prefix=f"hbprog-{token}-", dir="/tmp"))
    try:
        program_dir.chmod(0o777)  # writable by its mode: only the bind stops the agent
        program = program_dir / "agent.py"
        program.write_text(PROGRAM_UNDER_TMP)
        program.chmod(0o644)
        (program_dir / "beside").write_text("")
        with _host_marker(token) as marker:
            client = PrivClient(priv.socket, timeout=60)
            name = priv.agent_name()
            asyncio.run(client.container_create(name, [SYSTEM_PYTHON, str(program), str(marker)]))
            try:
                asyncio.run(client.container_start(name))
                seen = read_report(priv, name)
            finally:
                asyncio.run(client.container_destroy(name))
        assert seen == {
            "here": ["agent.py", "beside"],
            "tmp": [program_dir.name],
            "host": False,
            "wrote": "Read-only file system",
        }
        assert not (program_dir / "planted").exists()
    finally:
        subprocess.run(["rm", "-rf", "--", str(program_dir)], check=False)


# --- uid allocation ------------------------------------------------------------------------


@pytest.fixture
def marks() -> Iterator[IdMarkStore]:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="hbm-", dir="/run"))
    try:
        yield IdMarkStore(base / "priv" / "agent-ids.json")
    finally:
        subprocess.run(["rm", "-rf", "--", str(base)], check=False)


def _free_ids(count: int) -> range:
    # A stretch of the agents' range nobody uses now (tests run concurrently).
    while True:
        start = 90000 + secrets.randbelow(9000)
        ids = range(start, start + count)
        if not any(host_id_in_use(i) for i in ids):
            return ids


@contextlib.contextmanager
def _users(names: list[str]) -> Iterator[list[str]]:
    try:
        yield names
    finally:
        for name in names:
            remove_system_user(name)


def test_ids_are_handed_out_once_skip_taken_ones_and_run_out_clearly(marks: IdMarkStore) -> None:
    ids = _free_ids(4)
    token = secrets.token_hex(3)
    names = [f"hbu{token}{i}" for i in range(5)]
    with _users(names):
        first = allocate_agent_user(names[0], marks, ids)
        assert (first.uid, first.gid, first.created) == (ids[0], ids[0], True)
        # The mark is durable, in hive-priv's own 0600 file, and past the id.
        assert json.loads(marks.path.read_text())["next_id"] == ids[0] + 1
        assert stat.S_IMODE(marks.path.stat().st_mode) == 0o600
        remove_system_user(names[0])
        # Someone else takes the next id meanwhile: it is skipped.
        other: SystemUser = create_user_with_id(names[1], ids[1])
        assert other.uid == ids[1]
        second = allocate_agent_user(names[2], marks, ids)
        assert second.uid == ids[2]  # not ids[0] (freed), not ids[1] (taken)
        # A failing useradd (the name exists) still used up its id: the mark
        # moved before useradd ran, so no id is ever tried twice.
        with pytest.raises(HiveError):
            allocate_agent_user(names[2], marks, ids)
        assert json.loads(marks.path.read_text())["next_id"] == ids[3] + 1
        with pytest.raises(IdsExhausted, match="no agent uid left") as e:
            allocate_agent_user(names[4], marks, ids)
        assert e.value.status == 503
        assert lookup_user(names[4]) is None


def test_a_destroyed_agents_uid_is_not_reused_even_across_a_hive_priv_restart(
    priv: PrivEnv,
) -> None:
    client = PrivClient(priv.socket, timeout=60)
    seen: list[int] = []
    for round_ in range(3):
        name = priv.agent_name()
        made = asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "pass"]))
        user = lookup_user(f"hive-a-{name}")
        assert user is not None
        assert made["uid"] == user.uid == user.gid
        seen.append(user.uid)
        asyncio.run(client.container_destroy(name))
        assert lookup_user(f"hive-a-{name}") is None
        if round_ == 1:
            priv.stop()
            priv.start()
    assert seen == sorted(set(seen)), seen


# --- stopping an agent, however it forks ---------------------------------------------------

# Found by an attack review: a process chain that forks and exits at once is
# never where a /proc scan saw it, so signalling pids one by one missed it and
# the agent outlived stop and destroy. It reports its process limit, then
# forks away from its session and beats on a unix socket the test listens on.
WANDER = (
    AGENT_REPORT
    + r"""
import json, os, resource, socket, sys, time
send_report({"nproc": resource.getrlimit(resource.RLIMIT_NPROC)})
if os.fork() == 0:
    os.setsid()
    n = 0
    while True:
        n += 1
        if n % 50 == 0:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.sendto(b".", sys.argv[1])
                s.close()
            except OSError:
                pass
        if os.fork():
            os._exit(0)
time.sleep(600)
"""
)


def _beats_within(sock: socket.socket, seconds: float) -> int:
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:  # what arrived before does not count
            sock.recv(16)
    sock.settimeout(0.2)
    count, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            sock.recv(16)
            count += 1
    return count


def _kill_uid(uid: int) -> None:
    """Cleanup whatever happens: kill(-1) as the uid reaches every process of it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("op", ["stop", "destroy"])
def test_an_agent_that_keeps_changing_its_pid_is_gone_after_stop_and_destroy(
    priv: PrivEnv, op: str
) -> None:
    client = PrivClient(priv.socket, timeout=120)
    name = priv.agent_name()
    path = str(priv.base / "beats.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as beats:
        beats.bind(path)
        os.chmod(path, 0o777)
        made = asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", WANDER, path]))
        try:
            asyncio.run(client.container_start(name))
            assert read_report(priv, name)["nproc"] == [AGENT_MAX_PROCESSES] * 2
            assert _beats_within(beats, 1.5) > 0, "the agent runs"
            asyncio.run(getattr(client, f"container_{op}")(name))
            time.sleep(0.3)
            assert _beats_within(beats, 1.5) == 0, f"the agent still runs after {op}"
            assert processes_of_uid(made["uid"]) == []
        finally:
            _kill_uid(made["uid"])
            with contextlib.suppress(HiveError):
                asyncio.run(client.container_destroy(name))


# --- the agent's output ---------------------------------------------------------------------


def test_bound_log_keeps_the_newest_bytes_and_empties_the_file(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    with log.open("ab") as writer:  # the agent's descriptor: O_APPEND
        writer.write(b"a" * 900 + b"b" * 200)
        writer.flush()
        assert bound_log(log, limit=1000, keep=100)
        assert (tmp_path / "agent.log.1").read_bytes() == b"b" * 100
        assert log.stat().st_size == 0
        writer.write(b"after")  # goes on at the new end, not at the old offset
        writer.flush()
    assert log.read_bytes() == b"after"
    assert not bound_log(log, limit=1000, keep=100)  # under the limit: left alone


CHATTY = r"""
import os, sys, time
line = b"x" * 1023 + b"\n"
for _ in range(24 * 1024):  # 24 MiB of output, as fast as it goes
    os.write(1, line)
time.sleep(3)
os.write(1, b"still here\n")
time.sleep(600)
"""


def test_an_agent_printing_without_end_cannot_fill_the_disk_with_its_log(priv: PrivEnv) -> None:
    # Found in review: the agent's stdout goes to harness/agent.log, a root-owned
    # file no disk quota on the agent's uid would count, and nothing bounded it.
    with running_agent(priv, CHATTY) as name:
        log = priv.state_dir / "agents" / name / "harness" / "agent.log"
        wait_until("the log turned over", (log.parent / "agent.log.1").exists, timeout=20)
        wait_until("the agent's next line", lambda: b"still here" in log.read_bytes(), timeout=20)
        assert log.stat().st_size <= AGENT_LOG_LIMIT
        assert (log.parent / "agent.log.1").stat().st_size <= AGENT_LOG_KEEP


HOG = (
    AGENT_REPORT
    + r"""
import ctypes, json, os, resource, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
FALLOC_FL_KEEP_SIZE = 1
rc = libc.fallocate(1, FALLOC_FL_KEEP_SIZE, 0, 256 << 20)
err = ctypes.get_errno()
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
uring = libc.syscall(425, 8, params)  # io_uring_setup: IORING_OP_FALLOCATE runs past seccomp
uring_err = ctypes.get_errno()
send_report({
        "rc": rc, "errno": err, "uring": uring, "uring_errno": uring_err,
        "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
    })
time.sleep(600)
"""
)


def test_an_agent_cannot_reserve_disk_through_its_output(priv: PrivEnv) -> None:
    # Found by an attack review: fallocate(FALLOC_FL_KEEP_SIZE) on its stdout
    # reserved 256 MiB of root's blocks in harness/agent.log while the file's
    # size stayed 0 - past the size check and any quota on the agent's uid.
    with running_agent(priv, HOG) as name:
        log = priv.state_dir / "agents" / name / "harness" / "agent.log"
        seen = read_report(priv, name)
        assert (seen["rc"], seen["errno"]) == (-1, errno.EOPNOTSUPP)
        # io_uring's operations run in kernel threads no seccomp filter sees:
        # an IORING_OP_FALLOCATE reserved 512 MiB past the filter (attack review).
        assert (seen["uring"], seen["uring_errno"]) == (-1, errno.ENOSYS)
        assert seen["fsize"] == [AGENT_MAX_FILE_BYTES] * 2
        assert log.stat().st_blocks * 512 <= AGENT_LOG_LIMIT
