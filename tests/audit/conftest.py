"""Fixtures of the live audit's tests: a temporary installation, throwaway users."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from enforcer.store import Store
from enforcer.users import SystemUser, ensure_system_user, remove_system_user
from tests.conftest import require_root


@dataclass
class Install:
    """A temporary RUN/STATE pair, its hive.toml, and what to clean up."""

    base: Path
    run_dir: Path
    state_dir: Path
    config: Path
    core: SystemUser
    agent: SystemUser
    listeners: list[socket.socket] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def listen(self, path: Path, uid: int, gid: int, mode: int) -> None:
        """A real listening unix socket at ``path`` with that owner and mode."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(1)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.listeners.append(s)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM a process this test started (by its pid), SIGKILL if it lingers."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _user(prefix: str) -> Iterator[SystemUser]:
    user = ensure_system_user(f"{prefix}{secrets.token_hex(4)}")
    try:
        yield user
    finally:
        remove_system_user(user.name)


@pytest.fixture
def install() -> Iterator[Install]:
    """An empty installation: RUN (with agents/), STATE with hive.db, a core and an agent user."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="hba-", dir="/tmp"))
    os.chmod(base, 0o755)
    run_dir, state_dir = base / "run", base / "state"
    (run_dir / "agents").mkdir(parents=True)
    state_dir.mkdir()
    for d in (run_dir, run_dir / "agents", state_dir):
        os.chmod(d, 0o755)
    with _user("hbac") as core, _user("hbaa") as agent:
        config = base / "hive.toml"
        config.write_text(
            f'run_dir = "{run_dir}"\nstate_dir = "{state_dir}"\n\n'
            f'[core]\nuser = "{core.name}"\ngateway_uid = {core.uid}\n\n'
            f'[gateway]\nlisten = "127.0.0.1:1"\n'
        )
        store = Store(state_dir / "hive.db")
        store.add_agent("alpha", agent.uid, ("true",))
        store.close()
        inst = Install(base, run_dir, state_dir, config, core, agent)
        try:
            yield inst
        finally:
            for proc in inst.procs:
                inst.stop(proc)
            for s in inst.listeners:
                s.close()
            shutil.rmtree(base, ignore_errors=True)
