"""A destroyed agent writes nothing more, however long it held a request open.

Found by an attack review: an agent sent the headers of a write and held its
body back; the operator destroyed it; then the body came - and the question,
message, approval or state file was written under the destroyed agent's
name, to be inherited by the next agent registered under that name. Now a
destroy cuts the agent's open connections, and a write whose agent is no
longer the registered one is refused after its body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.core.conftest import Core

_WRITES = [
    ("POST", "/v1/questions", {"text": "written after my destroy"}),
    ("POST", "/v1/messages", {"text": "message after my destroy"}),
    ("POST", "/v1/approvals", {"action": "rm -rf /", "detail": "for the next alpha"}),
    ("PUT", "/v1/state/config.toml", None),
]


async def _held(core: Core, method: str, path: str, body: bytes) -> asyncio.StreamWriter:
    _reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:1]
    )
    await writer.drain()
    return writer


@pytest.mark.parametrize(("method", "path", "payload"), _WRITES, ids=[w[1] for w in _WRITES])
async def test_a_write_held_across_the_agents_destroy_lands_nowhere(
    core: Core, method: str, path: str, payload: dict[str, str] | None
) -> None:
    body = json.dumps(payload).encode() if payload is not None else b"planted by the old alpha"
    writer = await _held(core, method, path, body)
    await asyncio.sleep(0.2)  # the handler now waits inside request.read()
    async with core.operator() as op, op.post("/api/agents/alpha/destroy") as resp:
        assert resp.status == 200
    with contextlib.suppress(ConnectionError):
        writer.write(body[1:])
        await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    snapshot = core.state.db.snapshot()
    leftovers = [row for rows in snapshot.values() for row in rows if "alpha" in map(str, row)]
    assert leftovers == []
    assert not (core.config.agent_dir("alpha") / "state" / "config.toml").exists()
    # A new agent under the same name inherits nothing.
    await core.register("alpha")
    async with core.operator() as op, op.get("/api/agents/alpha") as resp:
        details = await resp.json()
    assert (details["questions"], details["approvals"], details["messages"]) == ([], [], [])
