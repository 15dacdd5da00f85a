"""An agent cannot pin the core's memory by sending or taking its bytes slowly.

Found by an attack review: 64 connections of one agent that each asked for a
4 MiB state file and never read the answer pinned about 500 MiB of the core's
memory; 64 that each sent a body of 4 MiB less one byte and stopped pinned
about 265 MiB - for as long as the agent liked. A body must now arrive, and an
answer be taken, within ``[core] agent_io_timeout``, or the connection is
closed; and one agent has at most ``TRANSFERS_PER_AGENT`` state files in memory at
once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enforcer.corestate import TRANSFERS_PER_AGENT
from tests.core.conftest import Core, make_config, running_core

TIMEOUT = 0.5
BOUND = 10.0


@pytest.fixture
async def core(hive_dirs: tuple[Path, Path]) -> AsyncIterator[Core]:
    config = make_config(*hive_dirs, agent_io_timeout=TIMEOUT)
    async with running_core(config) as running:
        yield running


async def _closed_within(reader: asyncio.StreamReader) -> bytes:
    """Everything the core sends until it closes the connection (fails past BOUND)."""
    data = b""
    async with asyncio.timeout(BOUND):
        while chunk := await reader.read(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    ("head", "path"),
    [
        (b"POST /v1/messages HTTP/1.1\r\nContent-Type: application/json\r\n", None),
        (b"PUT /v1/state/big HTTP/1.1\r\n", "big"),
    ],
    ids=["json", "state"],
)
async def test_a_body_that_stops_coming_closes_the_connection_and_changes_nothing(
    core: Core, head: bytes, path: str | None
) -> None:
    before = core.state.db.snapshot()
    reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
    try:
        writer.write(head + b"Host: agent\r\nContent-Length: 100000\r\n\r\n" + b"{" * 1000)
        await writer.drain()
        answer = await _closed_within(reader)  # ... and nothing more is sent
    finally:
        writer.close()
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:100]
    assert core.state.db.snapshot() == before
    if path is not None:
        assert not (core.config.agent_dir("alpha") / "state" / path).exists()


async def test_an_answer_the_agent_never_takes_closes_the_connection(core: Core) -> None:
    size = 3 << 20
    async with core.agent("alpha") as client, client.put("/v1/state/big", data=b"x" * size) as r:
        assert r.status == 200
    reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
    try:
        writer.write(b"GET /v1/state/big HTTP/1.1\r\nHost: agent\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(TIMEOUT * 4)  # not reading: the socket's buffers fill up
        received = await _closed_within(reader)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < size  # cut off, not held until taken


async def test_one_agent_has_at_most_its_transfers_in_flight(core: Core) -> None:
    state = core.state
    entered = 0
    release = asyncio.Event()

    async def transfer() -> None:
        nonlocal entered
        async with state.transfer_slot("alpha"):
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(transfer()) for _ in range(TRANSFERS_PER_AGENT + 3)]
    await asyncio.sleep(0.1)
    assert entered == TRANSFERS_PER_AGENT
    async with state.transfer_slot("beta"):  # another agent's slots are its own
        pass
    release.set()
    await asyncio.gather(*tasks)
    assert entered == TRANSFERS_PER_AGENT + 3
    assert len(state.transfer_slots) == 0  # nothing kept once no one uses them


async def test_a_json_body_declared_past_its_limit_is_refused_before_it_is_read(
    core: Core,
) -> None:
    # Found by an attack review: a JSON route read a body of up to the largest
    # limit of any route (a state file's, 4 MiB) before checking its own (1 MiB).
    reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
    try:
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % (4 << 20)
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)  # no byte sent
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head


async def test_a_chunked_json_body_is_cut_off_at_its_limit(core: Core) -> None:
    limit = core.config.core.max_body_bytes
    reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
    try:
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        for _ in range(limit // len(chunk) + 2):
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head


@pytest.mark.parametrize(("method", "path"), [(b"POST", b"/v1/messages"), (b"PUT", b"/v1/state/x")])
async def test_an_agent_leaving_mid_body_is_no_failure_of_the_core(
    core: Core, capfd: pytest.CaptureFixture[str], method: bytes, path: bytes
) -> None:
    # Found by an attack review: each such disconnect was logged at error
    # level as a 500 of the core's - any agent could fill the error log.
    for _ in range(3):
        _reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
        writer.write(
            method + b" " + path + b" HTTP/1.1\r\nHost: agent\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"text": "'
        )
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
    await asyncio.sleep(0.5)
    out, err = capfd.readouterr()
    failed = [line for line in (out + err).splitlines() if "request.failed" in line]
    assert failed == []
