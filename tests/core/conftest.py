"""Fixtures of the core's tests: a real core on real unix sockets, throwaway users."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from enforcer.config import CoreConfig, HiveConfig
from enforcer.core import create_app, serve
from enforcer.corestate import CORE, CoreState, Instrument
from enforcer.log import configure_logging

OPERATOR = {"X-Hive-Principal": "operator"}
# Decision logs of the cores under test go nowhere (the ring keeps them for asserts).
_DEVNULL = open(os.devnull, "w")  # noqa: SIM115


@dataclass
class Core:
    """A running in-process core and clients for its sockets."""

    config: HiveConfig
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> CoreState:
        return self.app[CORE]

    def operator(self, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
        """A client of core.sock carrying the gateway's operator marker."""
        return aiohttp.ClientSession(
            "http://core",
            connector=aiohttp.UnixConnector(path=str(self.config.core_socket)),
            headers=OPERATOR if headers is None else headers,
        )

    def agent(self, name: str) -> aiohttp.ClientSession:
        """A client of agent ``name``'s socket (as this process's uid)."""
        return aiohttp.ClientSession(
            "http://agent",
            connector=aiohttp.UnixConnector(path=str(self.config.agent_socket(name))),
        )

    async def register(self, name: str, uid: int | None = None) -> None:
        async with self.operator() as op:
            resp = await op.post(
                "/api/agents", json={"name": name, "uid": os.getuid() if uid is None else uid}
            )
            assert resp.status == 201, await resp.text()


def make_config(run_dir: Path, state_dir: Path, **core: object) -> HiveConfig:
    values: dict[str, object] = {"gateway_uid": os.getuid(), "long_poll_max_seconds": 5.0}
    values.update(core)
    return HiveConfig(run_dir=run_dir, state_dir=state_dir, core=CoreConfig(**values))  # type: ignore[arg-type]


async def start_core(config: HiveConfig, instrument: Instrument | None = None) -> Core:
    configure_logging(_DEVNULL)
    app = create_app(config, instrument=instrument)
    runner = await serve(config, app)
    return Core(config, app, runner)


@contextlib.asynccontextmanager
async def running_core(config: HiveConfig) -> AsyncIterator[Core]:
    """A core on ``config`` with agents 'alpha' and 'beta' (this uid), stopped afterwards."""
    c = await start_core(config)
    try:
        await c.register("alpha")
        await c.register("beta")
        yield c
    finally:
        await c.runner.cleanup()


@pytest.fixture
async def core(hive_dirs: tuple[Path, Path]) -> AsyncIterator[Core]:
    """A core on a fresh run/state directory; agents 'alpha' and 'beta' (this uid)."""
    async with running_core(make_config(*hive_dirs)) as c:
        yield c


def let_others_traverse(config: HiveConfig) -> None:
    """Make the temp directories above the sockets traversable (not listable) for others."""
    for d in (config.run_dir.parent, config.run_dir, config.agent_socket_dir):
        os.chmod(d, 0o711)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture
def make_user() -> Iterator[Callable[[], User]]:
    """Create unique throwaway system users; all removed afterwards, even on failure."""
    made: list[str] = []

    def make() -> User:
        name = f"hbt{secrets.token_hex(4)}"
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        made.append(name)
        entry = pwd.getpwnam(name)
        return User(name, entry.pw_uid, entry.pw_gid)

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


async def run_as(uid: int, gid: int, fn: Callable[[], int]) -> int:
    """Fork; in the child drop to (uid, gid) and exit with ``fn()``; return its exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            code = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    # Wait in a thread: the core under test runs on this process's event loop.
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status)


@dataclass
class CoreProcess:
    """``hive-boundary core`` as a subprocess."""

    config_file: Path
    config: HiveConfig
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enforcer.core", "--config", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.config.core_socket.exists():
                try:
                    import socket

                    s = socket.socket(socket.AF_UNIX)
                    s.connect(str(self.config.core_socket))
                    s.close()
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError("the core exited at start-up")
            time.sleep(0.05)
        raise RuntimeError("the core did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def core_process() -> Iterator[CoreProcess]:
    """A core subprocess on a fresh short temp directory (killed afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="hbc-", dir="/tmp"))
    config = make_config(base / "run", base / "state")
    config_file = base / "hive.toml"
    config_file.write_text(
        f'run_dir = "{config.run_dir}"\nstate_dir = "{config.state_dir}"\n'
        f"[core]\ngateway_uid = {os.getuid()}\nlong_poll_max_seconds = 5.0\n"
    )
    cp = CoreProcess(config_file, config)
    try:
        yield cp
    finally:
        cp.kill()
        shutil.rmtree(base, ignore_errors=True)
