"""Container status through hive-priv and the core's backend: running, stopped, failed.

An agent whose process dies on its own (a non-zero exit, a signal) must show
``failed`` in the core (``[core] backend = "priv"``), an operator's stop
``stopped``, as the core's local backend says - also across a hive-priv
restart, and while hive-priv is down the core keeps the last status it knew.
Everything here is the real thing: hive-priv socket-activated as root, real
users, namespaces and processes; the core's :class:`PrivLifecycleBackend`
polls it over its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enforcer.log import configure_logging
from enforcer.priv_backend import PrivLifecycleBackend
from enforcer.priv_client import PrivClient
from enforcer.store import AgentRecord
from enforcer.users import ensure_system_user
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv

# Waits for a file in its working directory (its state/) to appear, then
# exits with the status written in it: the test decides when and how it dies.
EXIT_ON_CUE = r"""
import os, signal, sys, time
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while not os.path.exists("exit-now"):
    time.sleep(0.02)
sys.exit(int(open("exit-now").read()))
"""

POLL = 0.1  # the backend's poll interval here: the real default is 1.5 s


def _program(env: PrivEnv, *extra: str) -> tuple[str, ...]:
    path = env.base / "exit_on_cue.py"
    path.write_text(EXIT_ON_CUE)
    path.chmod(0o644)
    return (SYSTEM_PYTHON, str(path), *extra)


def _agent(env: PrivEnv, *extra: str) -> AgentRecord:
    """A registered agent as the core knows it (its user made first, so its uid is known)."""
    name = env.agent_name()
    user = ensure_system_user(f"hive-a-{name}")  # removed by the fixture's cleanup
    return AgentRecord(name, user.uid, _program(env, *extra), time.time(), "", "", None)


def _cue_exit(env: PrivEnv, agent: AgentRecord, status: int) -> None:
    (env.state_dir / "agents" / agent.name / "state" / "exit-now").write_text(str(status))


async def _until(check: Callable[[], str], want: str, *, env: PrivEnv) -> None:
    deadline = time.monotonic() + 10.0
    while (got := check()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"status {got!r}, never {want!r}; hive-priv log:\n{env.log()}")
        await asyncio.sleep(0.02)


def _kill(pid: int, sig: signal.Signals) -> None:
    # A pidfd pins the process this test's hive-priv started for its agent.
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def _run(env: PrivEnv, body: Callable[[PrivLifecycleBackend, PrivClient], Awaitable[None]]) -> None:
    async def main() -> None:
        client = PrivClient(env.socket, timeout=60)
        backend = PrivLifecycleBackend(client, poll_interval=POLL, poll_timeout=5)
        try:
            await body(backend, client)
        finally:
            await backend.close()

    asyncio.run(main())


@contextlib.contextmanager
def _captured_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(stream)
    try:
        yield stream
    finally:
        configure_logging()


def _events(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]
    return [e for e in lines if e["event"] == event]


@pytest.mark.parametrize(("code", "want"), [(3, "failed"), (0, "stopped")])
def test_an_agent_that_exits_by_itself_is_failed_unless_it_exited_0(
    priv: PrivEnv, code: int, want: str
) -> None:
    agent = _agent(priv)

    async def body(backend: PrivLifecycleBackend, client: PrivClient) -> None:
        await backend.create(agent)
        assert backend.status(agent.name) == "stopped"  # created, never started
        await backend.start(agent)
        assert backend.status(agent.name) == "running"
        _cue_exit(priv, agent, code)
        await _until(lambda: backend.status(agent.name), want, env=priv)
        info = (await client.container_status())[agent.name]
        assert (info["state"], info["exit_code"], info["pid"]) == (want, code, None)
        # Starting it again is a new run: running, and no longer failed.
        (priv.state_dir / "agents" / agent.name / "state" / "exit-now").unlink()
        await backend.start(agent)
        assert backend.status(agent.name) == "running"
        await backend.destroy(agent)
        assert backend.status(agent.name) == "absent"

    _run(priv, body)


def test_an_agent_killed_by_a_signal_is_failed(priv: PrivEnv) -> None:
    agent = _agent(priv)

    async def body(backend: PrivLifecycleBackend, client: PrivClient) -> None:
        await backend.create(agent)
        await backend.start(agent)
        pid = (await client.container_status())[agent.name]["pid"]
        _kill(pid, signal.SIGKILL)
        await _until(lambda: backend.status(agent.name), "failed", env=priv)
        info = (await client.container_status())[agent.name]
        assert info["exit_code"] == -signal.SIGKILL
        await backend.destroy(agent)

    _run(priv, body)


def test_an_operator_stop_is_stopped_not_failed(priv: PrivEnv) -> None:
    agent = _agent(priv)

    async def body(backend: PrivLifecycleBackend, client: PrivClient) -> None:
        await backend.create(agent)
        await backend.start(agent)
        await backend.stop(agent)
        assert backend.status(agent.name) == "stopped"
        # Polls after the stop agree: ended by SIGTERM, but asked for.
        assert await backend.refresh()
        await asyncio.sleep(3 * POLL)
        assert backend.status(agent.name) == "stopped"
        info = (await client.container_status())[agent.name]
        assert (info["state"], info["exit_code"]) == ("stopped", -signal.SIGTERM)
        await backend.destroy(agent)

    _run(priv, body)


def test_status_answers_at_once_while_a_slow_stop_holds_the_backend(priv: PrivEnv) -> None:
    # The agent ignores SIGTERM: the stop takes hive-priv's whole stop timeout
    # (5 s). A status request meanwhile answers at once, showing the stop pending.
    agent = _agent(priv, "--ignore-term")

    async def body(backend: PrivLifecycleBackend, client: PrivClient) -> None:
        await backend.create(agent)
        await backend.start(agent)
        # The handler is installed once the interpreter is up: give it a moment.
        await asyncio.sleep(0.5)
        stop = asyncio.create_task(backend.stop(agent))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        info = (await client.container_status())[agent.name]
        assert time.monotonic() - started < 1.0
        assert not stop.done()
        assert (info["state"], info["pending"]) == ("running", "stop")
        await stop
        assert backend.status(agent.name) == "stopped"
        await backend.destroy(agent)

    _run(priv, body)


def test_a_death_while_hive_priv_was_down_is_failed_after_its_restart(priv: PrivEnv) -> None:
    alive, dies = _agent(priv), _agent(priv)

    async def body(backend: PrivLifecycleBackend, client: PrivClient) -> None:
        pids = {}
        for agent in (alive, dies):
            await backend.create(agent)
            await backend.start(agent)
            pids[agent.name] = (await client.container_status())[agent.name]["pid"]
        with _captured_log() as log:
            priv.stop()  # socket activation: the next connection would start it again
            _kill(pids[dies.name], signal.SIGKILL)  # not hive-priv's child any more
            # hive-priv down: the core no longer claims to know, and logs it once.
            for _ in range(3):
                assert not await backend.refresh()
            await asyncio.sleep(3 * POLL)
            assert backend.status(dies.name) == "unknown"
            assert backend.status(alive.name) == "unknown"
            assert len(_events(log, "priv.status_unavailable")) == 1
            priv.start()
            await _until(lambda: backend.status(dies.name), "failed", env=priv)
            assert len(_events(log, "priv.status_restored")) == 1
        # The survivor was adopted by pid + start time: still running, same process.
        assert backend.status(alive.name) == "running"
        status = await client.container_status()
        assert status[alive.name]["pid"] == pids[alive.name]
        assert (status[dies.name]["state"], status[dies.name]["exit_code"]) == ("failed", None)
        for agent in (alive, dies):
            await backend.destroy(agent)

    _run(priv, body)


def test_one_status_request_answers_for_every_container(priv: PrivEnv) -> None:
    a, b = _agent(priv), _agent(priv)

    async def body(backend: PrivLifecycleBackend, client: PrivClient) -> None:
        for agent in (a, b):
            await backend.create(agent)
        await backend.start(a)
        status = await client.container_status()
        assert {n: s["state"] for n, s in status.items()} == {a.name: "running", b.name: "created"}
        assert status[a.name]["ui_url"] == backend.ui_url(a.name)
        for agent in (a, b):
            await backend.destroy(agent)
        assert await client.container_status() == {}

    _run(priv, body)
    events = [json.loads(x) for x in priv.log().splitlines() if x.startswith("{")]
    results = [e for e in events if e["event"] == "priv.result"]
    polls = [e for e in results if e.get("request") == "container.status"]
    assert polls
    assert all(e["ok"] and e["action"] == "priv.container.status" for e in polls)
    assert all("agent" not in e for e in polls)


def test_a_status_request_with_fields_is_refused(priv: PrivEnv) -> None:
    from enforcer.priv_client import exchange

    for payload, words in (
        (b'{"request":"container.status","agent":"a"}\n', "unknown field"),
        (b'{"request":"container.status","agents":["a"]}\n', "unknown field"),
        (b'{"request":"container.status","all":true}\n', "unknown field"),
    ):
        line, fds = exchange(priv.socket, payload, 30)
        assert fds == []
        reply = json.loads(line)
        assert (reply["ok"], reply["error"]) == (False, "bad_request")
        assert words in reply["reason"]
    line, _ = exchange(priv.socket, b'{"request":"container.status"}\n', 30)
    assert json.loads(line) == {"ok": True, "result": {"containers": {}}}


def test_a_poll_sent_before_a_lifecycle_answer_does_not_overwrite_it(tmp_path: Path) -> None:
    # No hive-priv needed: the cache rule alone. A poll's snapshot may be
    # older than an answer that arrived while the poll was in flight.
    backend = PrivLifecycleBackend(PrivClient(tmp_path / "none.sock"))
    poll_sent = time.monotonic()
    backend._remember("a1", {"agent": "a1", "state": "running"})  # the start's answer
    backend._remember("b1", None)  # destroyed meanwhile
    stale = {
        "a1": {"agent": "a1", "state": "created"},
        "b1": {"agent": "b1", "state": "failed"},
        "c1": {"agent": "c1", "state": "failed"},
    }
    backend._apply(stale, poll_sent)
    assert [backend.status(n) for n in ("a1", "b1", "c1")] == ["running", "absent", "failed"]
    # The next poll, sent after those answers, is believed whole.
    backend._apply({"a1": {"agent": "a1", "state": "failed"}}, time.monotonic())
    assert [backend.status(n) for n in ("a1", "b1", "c1")] == ["failed", "absent", "absent"]


def test_an_unreachable_hive_priv_is_logged_once_and_nothing_crashes(tmp_path: Path) -> None:
    async def main() -> None:
        backend = PrivLifecycleBackend(PrivClient(tmp_path / "none.sock"), poll_interval=0.01)
        assert backend.status("a1") == "absent"  # starts the poller on this loop
        await asyncio.sleep(0.3)
        assert not await backend.refresh()
        assert backend.status_age is None
        assert backend.status("a1") == "unknown", "hive-priv never answered"
        await backend.close()

    with _captured_log() as log:
        asyncio.run(main())
    assert len(_events(log, "priv.status_unavailable")) == 1
    assert not _events(log, "priv.status_poll_failed")


def test_a_lifecycle_answer_after_a_failed_poll_gives_that_agent_its_status_back(
    tmp_path: Path,
) -> None:
    # The cache rule alone: no hive-priv. Polls fail (nothing listens there).
    async def main() -> None:
        backend = PrivLifecycleBackend(PrivClient(tmp_path / "none.sock"))
        backend._apply({"a1": {"state": "running"}, "b1": {"state": "running"}}, time.monotonic())
        assert [backend.status(n) for n in ("a1", "b1")] == ["running", "running"]
        assert not await backend.refresh()
        assert [backend.status(n) for n in ("a1", "b1")] == ["unknown", "unknown"]
        backend._remember("a1", {"state": "stopped"})  # e.g. a stop that hive-priv answered
        assert [backend.status(n) for n in ("a1", "b1")] == ["stopped", "unknown"]
        await backend.close()

    asyncio.run(main())
