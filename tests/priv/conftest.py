"""Fixtures for hive-priv: throwaway users, a socket-activated daemon, cleanup.

Every name a test creates (users, namespaces, veths, the nftables table, the
address subnet) is unique to that test and removed afterwards, even when the
test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from enforcer.cgroups import Layout, discover, sweep
from enforcer.config import default_policy_dir
from enforcer.containers import processes_of_uid
from enforcer.priv import spawn_socket_activated
from enforcer.priv_client import PrivClient
from enforcer.users import SystemUser, ensure_system_user, lookup_user, remove_system_user
from tests.conftest import require_root, wait_until

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # for children running as other users: stdlib only


@contextlib.contextmanager
def throwaway_user(prefix: str = "hbt") -> Iterator[SystemUser]:
    """A unique system user (and group) that exists only for the block."""
    name = f"{prefix}{secrets.token_hex(4)}"
    user = ensure_system_user(name)
    try:
        yield user
    finally:
        kill_uid(user.uid)
        remove_system_user(name)


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a throwaway uid of this test only)."""
    for _ in range(100):
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def run_as(
    user: SystemUser, code: str, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as ``user`` (no supplementary groups), like a daemon would."""
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", code, *args],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def _random_subnets() -> tuple[str, str]:
    # Concurrent tests (other layers) use their own subnets; collide with none.
    v4 = ipaddress.IPv4Network(
        (int(ipaddress.IPv4Address("10.0.0.0")) + (secrets.randbelow(0xFFFF) << 8), 24)
    )
    v6 = ipaddress.IPv6Network(
        f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64"
    )
    return str(v4), str(v6)


@dataclass
class PrivEnv:
    """A running hive-priv under test and everything needed to clean it up."""

    base: Path
    run_dir: Path
    state_dir: Path
    policy_dir: Path
    core: SystemUser
    table: str
    netns_prefix: str
    ifprefix: str
    log_path: Path
    cgroup_parent: str
    proc: subprocess.Popen[bytes] | None = None
    agents: list[str] = field(default_factory=list)
    # hive.toml for this hive-priv ("" means none: every default).
    config: str = ""

    @property
    def socket(self) -> Path:
        """priv.sock."""
        return self.run_dir / "priv.sock"

    def agent_name(self) -> str:
        """A unique agent name, remembered for cleanup."""
        name = f"t{secrets.token_hex(3)}"
        self.agents.append(name)
        return name

    def log(self) -> str:
        """hive-priv's log so far (stderr: JSON lines)."""
        return self.log_path.read_text(errors="replace")

    def environ(self) -> dict[str, str]:
        """hive-priv's environment: this test's directories, no config file."""
        env = dict(
            os.environ,
            HIVE_RUN_DIR=str(self.run_dir),
            HIVE_STATE_DIR=str(self.state_dir),
            HIVE_POLICY_DIR=str(self.policy_dir),
            PYTHONPATH=str(REPO),
        )
        env.pop("HIVE_CONFIG", None)
        if self.config:
            path = self.base / "hive.toml"
            path.write_text(self.config)
            env["HIVE_CONFIG"] = str(path)
        return env

    def args(self) -> list[str]:
        """``hive-boundary priv``'s options for this test's core, table and names."""
        return [
            "--core-uid", str(self.core.uid),
            "--core-gid", str(self.core.gid),
            "--table", self.table,
            "--netns-prefix", self.netns_prefix,
            "--ifprefix", self.ifprefix,
            "--cgroup-parent", self.cgroup_parent,
        ]  # fmt: skip

    def start(self) -> None:
        """Launch hive-priv the dev way: systemd-socket-activate + group/mode fix-up."""
        with self.log_path.open("ab") as log:
            self.proc = spawn_socket_activated(
                self.socket,
                self.args(),
                group_gid=self.core.gid,
                env=self.environ(),
                executable=[sys.executable, "-m", "enforcer.cli"],
                stderr=log,
            )

    def stop(self) -> None:
        """SIGTERM hive-priv (SIGKILL if it lingers) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _cleanup(env: PrivEnv) -> None:
    env.stop()
    for name in env.agents:
        user = lookup_user(f"hive-a-{name}")
        if user is not None:
            kill_uid(user.uid)
            remove_system_user(user.name)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(env.netns_prefix):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname.startswith(env.ifprefix):
            subprocess.run(["ip", "link", "del", ifname], capture_output=True)
    subprocess.run(["nft", "delete", "table", "inet", env.table], capture_output=True)
    remove_cgroups(env.cgroup_parent)
    shutil.rmtree(env.base, ignore_errors=True)


def cgroup_layout(parent: str) -> Layout:
    """Where hive-priv started by this process puts agents' groups beneath ``parent``."""
    return discover(
        Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text(), parent
    )


def remove_cgroups(parent: str) -> None:
    """Remove this test's agents' groups and their parent (their processes are gone by now)."""
    left = sweep(parent)
    assert not left, f"control groups left behind: {left}"


@contextlib.contextmanager
def priv_env_under(parent: str) -> Iterator[PrivEnv]:
    """A prepared hive-priv environment in a fresh directory beneath ``parent``."""
    require_root()
    token = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix="hbp-", dir=parent))
    try:
        # Agents' users must traverse to their state/ and socket.
        os.chmod(base, 0o755)
        run_dir, state_dir, policy_dir = base / "run", base / "state", base / "policies"
        run_dir.mkdir(mode=0o755)
        state_dir.mkdir(mode=0o755)
        shutil.copytree(default_policy_dir(), policy_dir, ignore=shutil.ignore_patterns("__*"))
        v4, v6 = _random_subnets()
        net = (policy_dir / "network.toml").read_text()
        net = net.replace('ipv4 = "10.203.0.0/16"', f'ipv4 = "{v4}"')
        net = net.replace('ipv6 = "fd00:4869:7665::/48"', f'ipv6 = "{v6}"')
        (policy_dir / "network.toml").write_text(net)
        with throwaway_user("hbc") as core:
            env = PrivEnv(
                base=base,
                run_dir=run_dir,
                state_dir=state_dir,
                policy_dir=policy_dir,
                core=core,
                table=f"hbt{token}",
                netns_prefix=f"hbp{token}-",
                ifprefix=f"p{token}",
                log_path=base / "priv.log",
                cgroup_parent=f"hbt-{token}",
            )
            try:
                yield env
            finally:
                _cleanup(env)
    finally:
        # Also when the set-up failed (a throwaway user that could not be
        # made): the directory went unremoved then.
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def priv_env() -> Iterator[PrivEnv]:
    """A prepared (not yet started) hive-priv environment with a throwaway core user."""
    # Not under /tmp: each agent gets a private /tmp of its own, and the
    # agent programs tests write into ``base`` must stay visible to it.
    with priv_env_under("/run") as env:
        yield env


@pytest.fixture
def priv(priv_env: PrivEnv) -> PrivEnv:
    """A running hive-priv (socket-activated)."""
    priv_env.start()
    return priv_env


# Prepended to an agent program: send_report(data) writes state/report.json
# atomically (a test reads it only once it is whole).
AGENT_REPORT = r"""
import json as _json, os as _os
def send_report(data):
    state = _os.environ["HIVE_STATE_DIR"]
    with open(_os.path.join(state, ".report"), "w") as f:
        _json.dump(data, f)
    _os.rename(_os.path.join(state, ".report"), _os.path.join(state, "report.json"))
"""


def read_report(env: PrivEnv, name: str, timeout: float = 30) -> dict[str, Any]:
    """Agent ``name``'s next report (waited for, then consumed)."""
    path = env.state_dir / "agents" / name / "state" / "report.json"
    wait_until(f"{name}'s report", path.exists, timeout=timeout)
    data: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return data


@contextlib.contextmanager
def running_agent(env: PrivEnv, code: str) -> Iterator[str]:
    """A container running ``python -c code``, destroyed afterwards; yields its name."""
    client = PrivClient(env.socket, timeout=60)
    name = env.agent_name()
    asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", code]))
    try:
        asyncio.run(client.container_start(name))
        yield name
    finally:
        asyncio.run(client.container_destroy(name))
