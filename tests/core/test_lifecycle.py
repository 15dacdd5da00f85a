"""LocalProcessBackend's status: an agent that dies on its own is ``failed``, not ``stopped``.

Real child processes (the current Python), real signals.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enforcer.lifecycle import LocalProcessBackend
from enforcer.store import AgentRecord
from tests.core.conftest import make_config


@pytest.fixture
async def backend() -> AsyncIterator[LocalProcessBackend]:
    base = Path(tempfile.mkdtemp(prefix="hbl-", dir="/tmp"))
    local = LocalProcessBackend(make_config(base / "run", base / "state"), stop_timeout=2.0)
    try:
        yield local
    finally:
        await local.close()
        shutil.rmtree(base, ignore_errors=True)


def _agent(name: str, code: str) -> AgentRecord:
    return AgentRecord(name, os.getuid(), (sys.executable, "-c", code), time.time(), "", "", None)


async def _settles(backend: LocalProcessBackend, name: str, status: str) -> None:
    """Wait (bounded) until the backend reports ``status`` for ``name``."""
    deadline = time.monotonic() + 10
    while backend.status(name) != status:
        assert time.monotonic() < deadline, (name, backend.status(name), status)
        await asyncio.sleep(0.02)


async def test_an_agent_that_exits_with_an_error_is_failed(backend: LocalProcessBackend) -> None:
    await backend.start(_agent("crashy", "import sys; sys.exit(3)"))
    await _settles(backend, "crashy", "failed")


async def test_an_agent_killed_while_it_should_run_is_failed(backend: LocalProcessBackend) -> None:
    agent = _agent("victim", "import time; time.sleep(60)")
    await backend.start(agent)
    assert backend.status("victim") == "running"
    os.kill(backend._procs["victim"].pid, signal.SIGKILL)
    await _settles(backend, "victim", "failed")
    # The operator can start it again.
    await backend.start(agent)
    assert backend.status("victim") == "running"


async def test_a_clean_exit_and_an_operator_stop_are_stopped(backend: LocalProcessBackend) -> None:
    await backend.start(_agent("done", "pass"))
    await _settles(backend, "done", "stopped")
    sleeper = _agent("sleeper", "import time; time.sleep(60)")
    await backend.start(sleeper)
    assert backend.status("sleeper") == "running"
    # SIGTERM from the operator's stop ends it with a signal: still "stopped", not "failed".
    await backend.stop(sleeper)
    assert backend.status("sleeper") == "stopped"
    # A failed agent the operator then stops is stopped too.
    crashy = _agent("crashy", "import sys; sys.exit(1)")
    await backend.start(crashy)
    await _settles(backend, "crashy", "failed")
    await backend.stop(crashy)
    assert backend.status("crashy") == "stopped"
    assert backend.status("never-made") == "absent"
