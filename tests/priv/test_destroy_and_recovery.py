"""Destroy removes whatever tree an agent made, and one bad record never wedges hive-priv.

An agent owns its ``state/``: it may nest directories deeper than Python's
recursion limit, or plant symlinks to the outside. Root removes the tree on
destroy without following a link; when a removal cannot finish, the record
stays pending and every later start of hive-priv still serves (and retries).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from enforcer.errors import HiveError, NotFound
from enforcer.priv_client import PrivClient
from enforcer.users import lookup_user
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv, run_as

# As the agent: a chain of directories deeper than Python's recursion limit,
# and a symlink to a directory outside state/ (its files must survive).
DEEP = r"""
import os, sys
state, outside, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.symlink(outside, os.path.join(state, "out"))
os.chdir(state)
for _ in range(depth):
    os.mkdir("d")
    os.chdir("d")
os.symlink(outside, "out")
print("ok")
"""


def _status(priv: PrivEnv) -> dict[str, dict[str, object]]:
    return asyncio.run(PrivClient(priv.socket, timeout=30).container_status())


def test_a_state_tree_deeper_than_the_recursion_limit_is_destroyed_links_not_followed(
    priv: PrivEnv,
) -> None:
    client = PrivClient(priv.socket, timeout=120)
    name = priv.agent_name()
    asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "pass"]))
    user = lookup_user(f"hive-a-{name}")
    assert user is not None
    agent_dir = priv.state_dir / "agents" / name
    outside = priv.base / "outside"
    outside.mkdir(mode=0o755)
    (outside / "keep").write_bytes(b"not the agent's")
    try:
        out = run_as(user, DEEP, str(agent_dir / "state"), str(outside), "3000")
        assert out.returncode == 0, out.stderr
        asyncio.run(client.container_destroy(name))
        assert not agent_dir.exists()
        assert (outside / "keep").read_bytes() == b"not the agent's"
        # Nothing pending: a restarted hive-priv has nothing to recover and serves.
        priv.stop()
        priv.start()
        assert name not in _status(priv)
    finally:
        # The fixture's shutil.rmtree would itself hit the recursion limit.
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(agent_dir)], check=False)


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def test_a_destroy_that_cannot_finish_never_stops_hive_priv_and_is_finished_later(
    priv: PrivEnv,
) -> None:
    client = PrivClient(priv.socket, timeout=60)
    names = sorted(priv.agent_name() for _ in range(2))
    for name in names:
        asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "pass"]))
    # The first record (recovered first) cannot be removed: an immutable file
    # (only root can set the flag; it stands for any removal that fails).
    stuck, other = names
    pinned = priv.state_dir / "agents" / stuck / "state" / "pinned"
    pinned.write_bytes(b"x")
    _chattr("+i", pinned)
    try:
        with pytest.raises(HiveError, match="cannot remove"):
            asyncio.run(client.container_destroy(stuck))
        # A crash while the other container was stopping: its recovery comes after.
        priv.stop()
        path = priv.state_dir / "priv" / "containers.json"
        records = json.loads(path.read_text())
        assert records["containers"][stuck]["pending"] == "destroy"
        records["containers"][other]["pending"] = "stop"
        path.write_text(json.dumps(records))
        priv.start()
        status = _status(priv)  # serving
        assert status[stuck]["pending"] == "destroy"  # kept, to retry
        assert (status[other]["state"], status[other]["pending"]) == ("stopped", None)
        failures = [
            json.loads(line)
            for line in priv.log().splitlines()
            if '"container.recover_failed"' in line
        ]
        assert [f["agent"] for f in failures] == [stuck]
        assert "cannot remove" in failures[0]["reason"]
    finally:
        _chattr("-i", pinned)
    priv.stop()
    priv.start()  # the next start finishes the destroy
    assert stuck not in _status(priv)
    assert not (priv.state_dir / "agents" / stuck).exists()
    assert lookup_user(f"hive-a-{stuck}") is None
    asyncio.run(client.container_destroy(other))
    with pytest.raises(NotFound):
        asyncio.run(client.container_start(other))
