"""Disk full for the database or for the decision log: writes are refused with a
clear 503 JSON error, nothing is corrupted or half-written, nothing acknowledged
is lost, and the service resumes by itself when space returns.

Each test mounts its own 2 MiB tmpfs on a unique temporary directory (unmounted
in ``finally``) and fills it with a file of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import Daemons, RawConn
from tests.conftest import fill, tmpfs


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs of this test's own."""
    with tmpfs("2m", "hbd-") as mount:
        yield mount


async def _register(d: Daemons, name: str) -> None:
    op, csrf = await d.operator()
    try:
        async with op.post(
            d.url + "/api/agents",
            json={"name": name, "uid": os.getuid()},
            headers={"X-CSRF-Token": csrf, "Origin": d.origin},
        ) as r:
            assert r.status == 201, await r.text()
    finally:
        await op.close()


def _refused(status: int, body: bytes, what: str) -> None:
    assert status == 503, (status, body)
    error = json.loads(body)
    assert error["error"] == "unavailable"
    assert what in error["reason"]


def test_database_disk_full_refuses_writes_keeps_everything_and_recovers(
    small_disk: Path,
) -> None:
    with Daemons(state_dir=small_disk / "state") as d:
        d.start_core()
        d.start_gateway()
        state = d.config.agent_dir("alpha") / "state"

        async def scenario() -> None:
            await _register(d, "alpha")
            agent = RawConn(str(d.config.agent_socket("alpha")))
            acked: dict[int, str] = {}
            for i in range(20):
                status, body = await agent.request("POST", "/v1/messages", b'{"text": "m%d"}' % i)
                assert status == 201
                acked[json.loads(body)["id"]] = f"m{i}"
            status, _ = await agent.request("PUT", "/v1/state/kept.txt", b"k" * 1000)
            assert status == 200
            filler = fill(small_disk)
            for i in range(20):
                status, body = await agent.request(
                    "POST", "/v1/messages", b'{"text": "lost%d"}' % i
                )
                _refused(status, body, "database")
                status, body = await agent.request("POST", "/v1/questions", b'{"text": "q?"}')
                _refused(status, body, "database")
                status, body = await agent.request("PUT", "/v1/state/new.txt", b"n" * 8192)
                _refused(status, body, "no space left")
                # Reads still work while the disk is full.
                status, _ = await agent.request("GET", "/v1/whoami")
                assert status == 200
                status, body = await agent.request("GET", "/v1/state/kept.txt")
                assert (status, body) == (200, b"k" * 1000)
            # Nothing half-written on disk: no new file, no temporary left behind.
            assert sorted(p.name for p in state.iterdir()) == ["kept.txt"]
            filler.unlink()  # space returns: writes resume without a restart
            status, body = await agent.request("POST", "/v1/messages", b'{"text": "after"}')
            assert status == 201, body
            acked[json.loads(body)["id"]] = "after"
            status, _ = await agent.request("PUT", "/v1/state/new.txt", b"n" * 8192)
            assert status == 200
            await agent.close()
            db = sqlite3.connect(f"file:{d.config.database}?mode=ro", uri=True)
            try:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                rows = dict(db.execute("SELECT id, text FROM messages WHERE agent='alpha'"))
                assert db.execute("SELECT count(*) FROM questions").fetchone() == (0,)
            finally:
                db.close()
            assert rows == acked  # every acknowledged message, no refused one

        asyncio.run(scenario())
        assert d.core is not None
        assert d.core.poll() is None  # it never went down


def test_log_disk_full_refuses_unlogged_decisions_and_recovers(small_disk: Path) -> None:
    with Daemons(log_dir=small_disk) as d:
        d.start_core()
        d.start_gateway()

        async def scenario() -> None:
            await _register(d, "alpha")
            agent = RawConn(str(d.config.agent_socket("alpha")))
            filler = fill(small_disk)
            refused = answered = 0
            for i in range(200):
                text = b'{"text": "during%d"}' % i
                status, body = await agent.request("POST", "/v1/messages", text)
                if status == 503:
                    _refused(status, body, "decision log")
                    refused += 1
                else:
                    # Only while the last log page still had room (tmpfs pages).
                    assert status == 201, body
                    answered += 1
            assert refused > 150
            filler.unlink()
            status, body = await agent.request("POST", "/v1/messages", b'{"text": "after"}')
            assert status == 201, body
            await agent.close()
            db = sqlite3.connect(f"file:{d.config.database}?mode=ro", uri=True)
            try:
                (stored,) = db.execute("SELECT count(*) FROM messages").fetchone()
            finally:
                db.close()
            # A refused request ran no handler: only the answered ones were stored.
            assert stored == answered + 1

        asyncio.run(scenario())
        assert d.core is not None
        assert d.core.poll() is None
        d.stop_core()
        # Nothing corrupted: every record is whole JSON on its own line. Only the one
        # line the kernel took part of when the disk filled (a short write) is a
        # fragment - on a line of its own, never glued to the records after it.
        lines = d.core_log.read_text().splitlines()
        assert lines
        bad = []
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                bad.append(line)
        assert len(bad) <= 1, (len(bad), len(lines), [b[:300] for b in bad[:3]])
        assert all(b.startswith("{") and "\n" not in b for b in bad)
        assert json.loads(lines[-1])["event"] == "core.stopped"  # logging resumed
