"""Attacks on the real hive-priv (root, socket-activated) from an agent's own uid.

An agent process runs as ``hive-a-<name>`` and owns its ``state/`` directory
(group ``hive-core``, setgid). From there it may plant anything a user can
make - hard links, FIFOs, symlinks swapped in a loop - and then wait for the
core to ask hive-priv (root) for ``ReadAgentStateFile``. Root ignores file
permissions, so the confinement alone must keep the read beneath ``state/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from enforcer.errors import HiveError
from enforcer.priv_client import PrivClient
from enforcer.users import SystemUser, lookup_user
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv, run_as

SECRET = b"ROOT-ONLY SECRET"


def _agent(priv: PrivEnv, client: PrivClient) -> tuple[str, SystemUser, Path]:
    name = priv.agent_name()
    asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "pass"]))
    user = lookup_user(f"hive-a-{name}")
    assert user is not None
    return name, user, priv.state_dir / "agents" / name / "state"


def _read(client: PrivClient, name: str, rel: str) -> bytes | str:
    """The file's bytes, or the error code hive-priv answered with."""
    try:
        return asyncio.run(client.read_state_file(name, rel))
    except HiveError as e:
        return e.code


# What an agent tries from inside its own state/ (as its own uid).
PLANT = r"""
import json, os, sys
state, secret = sys.argv[1], sys.argv[2]
out = {}
try:
    os.link(secret, os.path.join(state, "hard"))
    out["link"] = "made"
except OSError as e:
    out["link"] = type(e).__name__
with open(os.path.join(state, "tool"), "wb") as f:
    f.write(b"#!/bin/sh\n")
os.chmod(os.path.join(state, "tool"), 0o2755)
os.mkdir(os.path.join(state, "sub"))
os.chmod(os.path.join(state, "sub"), 0o2777)
with open(os.path.join(state, "sub", "inner"), "wb") as f:
    pass
os.chmod(os.path.join(state, "sub", "inner"), 0o2755)
os.mkfifo(os.path.join(state, "fifo"))
os.symlink(secret, os.path.join(state, "sym"))
print(json.dumps(out))
"""


def test_what_an_agent_plants_in_its_state_gives_it_nothing(priv: PrivEnv) -> None:
    client = PrivClient(priv.socket, timeout=60)
    name, user, state = _agent(priv, client)
    secret = priv.base / "root-secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    out = run_as(user, PLANT, str(state), str(secret))
    assert out.returncode == 0, out.stderr
    # fs.protected_hardlinks: a file the agent can neither read nor write
    # cannot be linked into its state/ at all.
    assert json.loads(out.stdout)["link"] == "PermissionError"
    # The setgid bit on a file of group hive-core is dropped: the agent is not
    # in that group, so it cannot make a program that runs with it.
    # (Setgid to its own group is harmless; to hive-core it would be a way in.)
    assert (state / "tool").lstat().st_gid == priv.core.gid
    for rel in ("tool", "sub", "sub/inner"):
        st = (state / rel).lstat()
        assert not (st.st_mode & stat.S_ISGID and st.st_gid == priv.core.gid), rel
    # Root reading for the core: a FIFO does not hang it, a symlink is refused.
    started = time.monotonic()
    assert _read(client, name, "fifo") == "confined"
    assert _read(client, name, "sym") == "confined"
    assert time.monotonic() - started < 10
    asyncio.run(client.container_destroy(name))


def test_a_hard_link_to_a_file_outside_state_is_not_read_by_root(priv: PrivEnv) -> None:
    """Where ``fs.protected_hardlinks`` is off (or the file is the agent's to link),
    a hard link beneath state/ names bytes outside it; root must not read them."""
    client = PrivClient(priv.socket, timeout=60)
    name, _, state = _agent(priv, client)
    secret = priv.base / "root-secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    os.link(secret, state / "looks-local")  # what a host without the sysctl allows
    assert _read(client, name, "looks-local") == "confined"
    assert SECRET not in priv.log().encode()
    asyncio.run(client.container_destroy(name))


# Swap state/d between a real directory and a symlink to the secret's directory,
# as fast as possible, for as long as the test reads.
SWAP = r"""
import os, sys, time
state, outside, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
d, real, link = (os.path.join(state, n) for n in ("d", "d.real", "d.link"))
os.mkdir(real)
with open(os.path.join(real, "f"), "w") as f:
    f.write("inside")
os.symlink(outside, link)
os.rename(real, d)
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    os.rename(d, real); os.rename(link, d)       # d -> outside
    os.rename(d, link); os.rename(real, d)       # d -> the real directory
    n += 1
print(n)
"""


def test_swapping_a_directory_for_a_symlink_mid_read_never_escapes(priv: PrivEnv) -> None:
    client = PrivClient(priv.socket, timeout=60)
    name, user, state = _agent(priv, client)
    outside = priv.base / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(SECRET)
    outside.chmod(0o755)
    (outside / "f").chmod(0o600)
    swapper = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", SWAP, str(state), str(outside), "4"],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    try:
        seen: set[bytes | str] = set()
        deadline = time.monotonic() + 3.5
        time.sleep(0.2)
        while time.monotonic() < deadline:
            seen.add(_read(client, name, "d/f"))
    finally:
        swaps, errors = swapper.communicate(timeout=10)
    assert swapper.returncode == 0, errors
    assert int(swaps) > 10
    assert SECRET not in seen
    assert seen <= {b"inside", "confined", "not_found"}, seen
    asyncio.run(client.container_destroy(name))


@pytest.mark.parametrize(
    ("line", "words"),
    [
        # Duplicate keys: json keeps the last; hive-priv decodes once, so the
        # value it checks is the value it acts on.
        (b'{"request":"state.read","agent":"ok","agent":"../x","rel_path":"a"}', "agent"),
        (b'{"request":"container.start","agent":"a\\u002f..\\u002fb"}', "agent"),
        (b'{"request":"container.start","agent":"a\\n"}', "agent"),
        (b'{"request":"container.start","agent":"\\u0430gent"}', "agent"),
        (b'{"request":"container.start","agent":NaN}', "agent"),
        (
            b'{"request":"container.create","agent":"a","command":["/bin/sh",'
            + b"1" * 5000
            + b"]}",
            "JSON",
        ),
        (b'{"request":"state.read","agent":"a","rel_path":"x\\u0000y"}', "NUL"),
        (b'{"request":"state.read","agent":"a","rel_path":"' + b"a/" * 40 + b'b"}', "deeper"),
        (b"[" * 30_000 + b"]" * 30_000, "JSON"),
    ],
)
def test_decoder_edge_cases_are_refused_and_the_daemon_keeps_serving(
    priv: PrivEnv, line: bytes, words: str
) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(priv.socket))
        sock.sendall(line + b"\n")
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"] is False, reply
    assert reply["status"] in {400, 413}, reply
    assert words.lower() in reply["reason"].lower(), reply
    # Still serving.
    client = PrivClient(priv.socket, timeout=20)
    assert _read(client, "nosuch", "x") == "not_found"


# Take a write lease on a file of the agent's own state/ and hold it.
LEASE = r"""
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # keep the lease when root's open breaks it
path = sys.argv[1]
with open(path, "w") as f:
    f.write("hello")
fd = os.open(path, os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_state_file_leased_by_the_agent_is_a_409_and_readable_once_released(
    priv: PrivEnv,
) -> None:
    """A write lease makes root's ``O_NONBLOCK`` open fail with ``EWOULDBLOCK``: the
    agent's own choice, answered as a conflict to retry - not an internal error."""
    client = PrivClient(priv.socket, timeout=60)
    name, user, state = _agent(priv, client)
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", LEASE, str(state / "f"), "30"],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert holder.stdout is not None
        assert holder.stderr is not None
        assert "leased" in holder.stdout.readline(), holder.stderr.read()
        started = time.monotonic()
        with pytest.raises(HiveError) as leased:
            asyncio.run(client.read_state_file(name, "f"))
        assert time.monotonic() - started < 5  # no wait for the lease-break time
        assert (leased.value.status, leased.value.code) == (409, "conflict")
        assert "leased" in leased.value.reason
    finally:
        holder.kill()
        holder.wait()
    assert _read(client, name, "f") == b"hello"
    asyncio.run(client.container_destroy(name))
