"""``hive-boundary gateway`` with several workers: the supervisor keeps them, and stops them.

Real processes: the supervisor binds the port once per worker
(``SO_REUSEPORT``), forks the workers, restarts one that dies (SIGKILL here),
and on SIGTERM stops every worker - checked by PID - and exits 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from enforcer.supervisor import bind_listeners
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _health(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        status: int = resp.status
        return status


class Gateway:
    def __init__(self, workers: int, run_dir: Path | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hbw-", dir="/tmp"))
        (self.base / "run").mkdir()
        (self.base / "state").mkdir()
        run = run_dir or self.base / "run"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        env = {
            **os.environ,
            "HIVE_RUN_DIR": str(run),
            "HIVE_STATE_DIR": str(self.base / "state"),
            "HIVE_CONFIG": os.devnull,
        }
        self.log = (self.base / "gateway.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enforcer.cli", "gateway",
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers)],
            cwd=REPO, env=env, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        wait_until(
            f"{workers} workers answering",
            lambda: len(_children(self.proc.pid)) == workers and self._answers(),
        )

    def _answers(self) -> bool:
        try:
            return _health(self.port) == 200
        except OSError:
            return False

    def workers(self) -> set[int]:
        return _children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    running = Gateway(workers=2)
    try:
        yield running
    finally:
        running.stop()


def test_a_worker_that_dies_is_replaced_and_the_port_keeps_answering(gateway: Gateway) -> None:
    before = gateway.workers()
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until("a replacement worker", lambda: len(gateway.workers() - before) == 1)
    after = gateway.workers()
    assert victim not in after
    assert len(after) == 2
    assert not _alive(victim)
    for _ in range(20):  # new connections spread over both sockets: all answered
        assert _health(gateway.port) == 200


def test_sigterm_stops_every_worker_and_the_supervisor_exits_cleanly(gateway: Gateway) -> None:
    workers = gateway.workers()
    assert len(workers) == 2
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
    for pid in workers:
        assert not _alive(pid), pid
    with pytest.raises(OSError, match="refused"):
        _health(gateway.port)


def test_a_port_already_taken_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base = Path(tempfile.mkdtemp(prefix="hbw-", dir="/tmp"))
        try:
            env = {
                **os.environ,
                "HIVE_RUN_DIR": str(base),
                "HIVE_STATE_DIR": str(base),
                "HIVE_CONFIG": os.devnull,
            }
            done = subprocess.run(
                [sys.executable, "-m", "enforcer.cli", "gateway",
                 "--listen", f"127.0.0.1:{port}", "--workers", "2"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        finally:
            shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_listeners_share_one_port() -> None:
    listeners = bind_listeners("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in listeners}
        assert len(ports) == 1
    finally:
        for s in listeners:
            s.close()


_STREAMING_CORE = """
import asyncio, sys
from aiohttp import web

async def stream(request):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    try:
        while True:
            await resp.write(b"data: tick\\n\\n")
            await asyncio.sleep(0.1)
    except ConnectionError:  # the gateway went away: expected here
        return resp

app = web.Application()
app.router.add_get("/static/stream", stream)
web.run_app(app, path=sys.argv[1], print=None, access_log=None)
"""


def test_sigterm_with_a_stream_open_stops_within_the_shutdown_timeout() -> None:
    # A core double on core.sock serving an endless stream, read through the
    # gateway (/static/ goes to the core anonymously); then SIGTERM. The worker
    # gives the stream SHUTDOWN_SECONDS, cancels it, and exits cleanly.
    from enforcer.gateway import SHUTDOWN_SECONDS

    base = Path(tempfile.mkdtemp(prefix="hbs-", dir="/tmp"))
    core = subprocess.Popen(
        [sys.executable, "-c", _STREAMING_CORE, str(base / "core.sock")], cwd=REPO
    )
    gateway: Gateway | None = None
    try:
        wait_until("the core double", lambda: (base / "core.sock").exists())
        gateway = Gateway(workers=1, run_dir=base)
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as conn:
            conn.sendall(b"GET /static/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = conn.recv(4096)
            assert first.startswith(b"HTTP/1.1 200"), first[:200]
            started = time.monotonic()
            gateway.proc.send_signal(signal.SIGTERM)
            assert gateway.proc.wait(SHUTDOWN_SECONDS + 10) == 0
            took = time.monotonic() - started
        assert took < SHUTDOWN_SECONDS + 2, took
        log = (gateway.base / "gateway.log").read_text(errors="replace")
        assert "Task was destroyed" not in log
        assert "Traceback" not in log
    finally:
        if gateway is not None:
            gateway.stop()
        core.terminate()
        core.wait(10)
        shutil.rmtree(base, ignore_errors=True)
