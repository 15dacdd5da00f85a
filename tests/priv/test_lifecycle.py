"""Containers end to end through hive-priv: real users, processes, namespaces, sockets."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from enforcer.containers import processes_of_uid
from enforcer.errors import Conflict, Forbidden, NotFound
from enforcer.priv import peer_credentials
from enforcer.priv_client import PrivClient
from enforcer.users import lookup_user
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv

# The agent used here: its web UI on HIVE_UI_PORT (inside its namespace) and a
# hello on its own socket, the only host-bound channel it has.
AGENT = r"""
import http.server, os, socket, threading, time
name = os.environ["HIVE_AGENT"]
def hello():
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(os.environ["HIVE_SOCKET"])
            s.sendall(f"hello from {name}\n".encode())
            s.close()
            return
        except OSError:
            time.sleep(0.05)
threading.Thread(target=hello, daemon=True).start()
class UI(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"agent {name} uid {os.getuid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["HIVE_UI_PORT"])), UI).serve_forever()
"""


def _agent_program(env: PrivEnv) -> list[str]:
    path = env.base / "agent.py"
    path.write_text(AGENT)
    path.chmod(0o644)
    return [SYSTEM_PYTHON, str(path)]


def _get_in_netns(ns: str, url: str) -> str:
    code = (
        "import sys,urllib.request;"
        "print(urllib.request.urlopen(sys.argv[1],timeout=2).read().decode())"
    )
    for _ in range(100):
        out = subprocess.run(
            ["ip", "netns", "exec", ns, SYSTEM_PYTHON, "-c", code, url],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if out.returncode == 0:
            return out.stdout.strip()
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered inside {ns}: {out.stderr}")


def _nft_elements(table: str) -> str:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", table], capture_output=True, text=True
    )
    return out.stdout


def test_create_start_answer_stop_destroy_leaves_nothing(priv: PrivEnv) -> None:
    name = priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)

    created = asyncio.run(client.container_create(name, _agent_program(priv)))
    assert created["state"] == "created"
    net = created["net"]
    ns = net["netns"]
    assert ns == priv.netns_prefix + name
    user = lookup_user(f"hive-a-{name}")
    assert user is not None
    assert created["uid"] == user.uid
    agent_dir = priv.state_dir / "agents" / name
    st = os.stat(agent_dir / "state")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, priv.core.gid, 0o2770)
    assert stat.S_IMODE(os.stat(agent_dir / "harness").st_mode) == 0o700
    assert net["ipv4"] in _nft_elements(priv.table)

    listener = asyncio.run(client.socket_create(name))
    sock_path = priv.run_dir / "agents" / f"{name}.sock"
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o600)
    assert listener.getsockname() == str(sock_path)

    started = asyncio.run(client.container_start(name))
    assert started["state"] == "running"
    assert started["pid"]
    # The agent reaches its socket; the core (holding the fd) accepts it.
    listener.settimeout(20)
    conn, _ = listener.accept()
    with conn:
        _, uid, _ = peer_credentials(conn)
        assert uid == user.uid
        assert conn.makefile().readline() == f"hello from {name}\n"
    listener.close()
    # Its UI answers inside its namespace, as its own uid ...
    assert _get_in_netns(ns, "http://127.0.0.1:8000/") == f"agent {name} uid {user.uid}"
    # ... and through the veth, as the gateway reaches it.
    with urllib.request.urlopen(net["ui_url"], timeout=5) as r:  # address inside our netns
        assert r.read().decode() == f"agent {name} uid {user.uid}"
    # Isolation cannot be removed under a running agent (fail closed).
    with pytest.raises(Conflict):
        asyncio.run(client.isolation_remove(name))

    restarted = asyncio.run(client.container_restart(name))
    assert restarted["state"] == "running"
    assert restarted["pid"] != started["pid"]
    assert _get_in_netns(ns, "http://127.0.0.1:8000/").startswith(f"agent {name}")

    stopped = asyncio.run(client.container_stop(name))
    assert stopped["state"] == "stopped"
    assert stopped["pid"] is None
    assert processes_of_uid(user.uid) == []

    assert (asyncio.run(client.container_destroy(name)))["state"] == "destroyed"
    # Nothing left: no process, user, namespace, veth, table elements, socket, dirs.
    assert processes_of_uid(user.uid) == []
    assert lookup_user(f"hive-a-{name}") is None
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert (
        net["host_ifname"]
        not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    )
    table = _nft_elements(priv.table)
    assert table
    assert net["ipv4"] not in table
    assert net["host_ifname"] not in table
    assert not sock_path.exists()
    assert not agent_dir.exists()
    records = json.loads((priv.state_dir / "priv" / "containers.json").read_text())
    assert records["containers"] == {}


def test_a_restarted_hive_priv_knows_its_containers(priv: PrivEnv) -> None:
    name = priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)
    asyncio.run(client.container_create(name, _agent_program(priv)))
    first = asyncio.run(client.container_start(name))
    priv.stop()
    priv.start()
    # The same process, adopted; still stoppable and destroyable.
    status = asyncio.run(client.container_start(name))
    assert status["state"] == "running"
    assert status["pid"] == first["pid"]
    asyncio.run(client.container_destroy(name))
    assert processes_of_uid(first["uid"]) == []


def test_an_interrupted_create_is_undone_on_restart(priv: PrivEnv) -> None:
    # Simulate a crash in the middle of create: a record still pending "create".
    name = priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)
    created = asyncio.run(client.container_create(name, _agent_program(priv)))
    priv.stop()
    path = priv.state_dir / "priv" / "containers.json"
    records = json.loads(path.read_text())
    records["containers"][name]["pending"] = "create"
    records["containers"][name]["state"] = "creating"
    path.write_text(json.dumps(records))
    priv.start()
    with pytest.raises(NotFound, match="no container"):
        asyncio.run(client.container_start(name))
    assert lookup_user(f"hive-a-{name}") is None
    assert not (priv.state_dir / "agents" / name).exists()
    ns = created["net"]["netns"]
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert created["net"]["ipv4"] not in _nft_elements(priv.table)


def test_state_read_is_confined_through_the_daemon(priv: PrivEnv) -> None:
    name = priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)
    asyncio.run(client.container_create(name, _agent_program(priv)))
    state = priv.state_dir / "agents" / name / "state"
    (state / "notes.txt").write_bytes(b"hello\x00world")
    (state / "escape").symlink_to("/etc/shadow")
    assert asyncio.run(client.read_state_file(name, "notes.txt")) == b"hello\x00world"
    with pytest.raises(Forbidden, match="symbolic links are refused"):
        asyncio.run(client.read_state_file(name, "escape"))
    asyncio.run(client.container_destroy(name))
    assert not Path(state).exists()
