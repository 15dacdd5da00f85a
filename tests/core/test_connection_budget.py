"""A few agents, each within its own connection cap, cannot lock the operator out.

Found by an attack review: the cap was 64 connections per agent and nothing
bounded the sum, so four agents filled a 256-descriptor core and neither the
operator (core.sock) nor any other agent got an answer. All agents'
connections together now stay below the core's file limit, minus one
listener per agent and a reserve the core keeps for itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enforcer import transport
from tests.core.conftest import Core, make_config, running_core

BUDGET = 6  # agent connections, all agents together


@pytest.fixture
async def small_core(
    hive_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Core]:
    # A core whose descriptor limit leaves room for BUDGET agent connections
    # (two agents: two listeners).
    monkeypatch.setattr(transport, "_soft_nofile", lambda: transport.FD_RESERVE + 2 + BUDGET)
    async with running_core(make_config(*hive_dirs)) as core:
        yield core


async def _whoami(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A kept connection that answered whoami, or None when the core refused it."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b"GET /v1/whoami HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        if line.startswith(b"HTTP/1.1 200"):
            await reader.readuntil(b"}")
            return reader, writer
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # refused: closed before anything was read
    writer.close()
    return None


async def test_the_sum_of_agent_connections_is_bounded_and_the_operator_still_gets_in(
    small_core: Core,
) -> None:
    core = small_core
    alpha = [await _whoami(core.config.agent_socket("alpha")) for _ in range(BUDGET)]
    assert all(c is not None for c in alpha)
    # Beta is within its own cap (64), but the agents' budget is spent.
    assert await _whoami(core.config.agent_socket("beta")) is None
    async with core.operator() as op, op.get("/api/agents") as resp:
        assert resp.status == 200
    # Alpha lets go of some: beta gets in.
    for kept in alpha[:2]:
        assert kept is not None
        kept[1].close()
        await kept[1].wait_closed()
    await asyncio.sleep(0.1)
    assert await _whoami(core.config.agent_socket("beta")) is not None
    for kept in alpha[2:]:
        assert kept is not None
        kept[1].close()
