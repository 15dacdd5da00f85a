"""The gateway's agent registry asks the core over the lean client, and trusts only a clean answer.

Each case scripts the core's answer to ``GET /api/agents/<name>`` byte for byte
(:mod:`tests.gateway.scripted`) and checks what the registry makes of it: the
UI address, a 404 for an unknown agent, or a clean refusal (never a crash,
never an address it did not check). Whole answers leave the connection for
the next lookup.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enforcer import proxy
from enforcer.config import HiveConfig
from enforcer.errors import HiveError, NotFound, Unavailable
from enforcer.gateway import AgentRegistry
from tests.gateway.scripted import ok, pool_to, scripted, served


def _record(ui_url: object) -> bytes:
    return json.dumps({"agent": {"name": "alpha", "ui_url": ui_url}}).encode()


async def test_a_lookup_sends_the_operator_marker_and_returns_the_checked_ui_address(
    sock_dir: Path,
) -> None:
    async with served(sock_dir, lambda n, req: ok(_record("http://10.7.0.2:8000/"))) as (
        server,
        pool,
    ):
        registry = AgentRegistry(HiveConfig(), pool)
        base = await registry.ui_base("alpha", "00ff")
        assert str(base) == "http://10.7.0.2:8000/"
        registry.forget("alpha")
        await registry.ui_base("alpha", "0100")
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"get /api/agents/alpha http/1.1\r\n")
    assert b"\r\nx-hive-principal: operator" in head
    assert b"\r\nx-hive-request-id: 00ff" in head
    # Both lookups on one connection: the whole answer was read.
    assert (len(server.requests), server.connections) == (2, 1)


async def test_a_cached_address_is_not_asked_again(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, req: ok(_record("http://10.7.0.2:8000"))) as (
        server,
        pool,
    ):
        registry = AgentRegistry(HiveConfig(), pool)
        for _ in range(3):
            await registry.ui_base("alpha", "01")
    assert len(server.requests) == 1


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
    len(_record("http://10.7.0.3/")),
    _record("http://10.7.0.3/"),
)


async def test_an_unknown_agent_is_not_found(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, req: _NOT_FOUND) as (server, pool):
        registry = AgentRegistry(HiveConfig(), pool)
        with pytest.raises(NotFound):
            await registry.ui_base("ghost", "01")
        with pytest.raises(NotFound):
            await registry.ui_base("ghost", "02")
    assert server.connections == 1  # the 404's body was read: the connection stayed


async def test_a_chunked_answer_is_read_whole(sock_dir: Path) -> None:
    async with served(sock_dir, lambda n, req: _CHUNKED) as (_server, pool):
        base = await AgentRegistry(HiveConfig(), pool).ui_base("alpha", "01")
    assert str(base) == "http://10.7.0.3/"


@pytest.mark.parametrize(
    ("answer", "refusal"),
    [
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", Unavailable),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}", Unavailable),
        (ok(b"not json"), Unavailable),
        (ok(b"[1, 2]"), proxy.UpstreamUnreachable),
        (ok(_record(None)), proxy.UpstreamUnreachable),
        (ok(_record(42)), proxy.UpstreamUnreachable),
        (ok(_record("file:///etc/passwd")), proxy.UpstreamError),
        (ok(_record("http://10.7.0.2/admin")), proxy.UpstreamError),
        (ok(_record("http://user:pw@10.7.0.2/")), proxy.UpstreamError),
        (ok(_record("http://10.7.0.2/") + b" " * (300 * 1024)), Unavailable),
        # The core closes after 2 of the 50 bytes it announced.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\n{}", Unavailable),
        (None, Unavailable),  # the core closes without answering
    ],
    ids=[
        "core-500",
        "core-403",
        "not-json",
        "not-an-object",
        "no-ui",
        "ui-not-a-string",
        "not-http",
        "with-a-path",
        "with-credentials",
        "oversized",
        "cut-short",
        "no-answer",
    ],
)
async def test_anything_but_a_clean_answer_is_refused_cleanly(
    sock_dir: Path, answer: bytes | None, refusal: type[HiveError]
) -> None:
    async with (
        scripted(sock_dir, lambda n, req: answer) as (_server, path),
        pool_to(path, idle=1.0) as pool,
    ):
        registry = AgentRegistry(HiveConfig(), pool)
        with pytest.raises(refusal) as caught:
            await registry.ui_base("alpha", "01")
    assert caught.value.status in {404, 502, 503, 504}
    # Nothing is remembered from a refusal.
    assert registry._cache == {}


async def test_the_core_down_is_unavailable(sock_dir: Path) -> None:
    async with pool_to(sock_dir / "absent.sock") as pool:
        with pytest.raises(Unavailable):
            await AgentRegistry(HiveConfig(), pool).ui_base("alpha", "01")
