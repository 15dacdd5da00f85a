"""A request body sent with a Content-Encoding is refused by name, on both surfaces.

The core's servers inflate nothing (``auto_decompress=False``): a compressed
body is not the JSON or file it claims to be. Raw bytes on the real sockets;
each answer is a 415 with a JSON reason, nothing is stored, nothing crashes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from pathlib import Path

import pytest

from tests.core.conftest import Core

_BODIES = {
    "garbage": b"not compressed at all",
    "gzip": gzip.compress(b'{"text": "hello?"}'),
}


def _exchange(path: Path, data: bytes) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("body", sorted(_BODIES))
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-anything"])
@pytest.mark.parametrize(
    "request_line", ["PUT /v1/state/notes.txt HTTP/1.1", "POST /v1/questions HTTP/1.1"]
)
async def test_an_agent_body_with_a_content_encoding_is_a_415_and_changes_nothing(
    core: Core, request_line: str, encoding: str, body: str
) -> None:
    raw = _BODIES[body]
    data = (
        f"{request_line}\r\nHost: agent\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + raw
    before = core.state.db.snapshot()
    status, answer = await asyncio.to_thread(_exchange, core.config.agent_socket("alpha"), data)
    assert status == 415, answer
    assert json.loads(answer)["error"] == "unsupported_media_type"
    assert core.state.db.snapshot() == before
    assert not (core.config.agent_dir("alpha") / "state" / "notes.txt").exists()


async def test_an_identity_content_encoding_is_taken(core: Core) -> None:
    data = (
        b"PUT /v1/state/notes.txt HTTP/1.1\r\nHost: agent\r\nContent-Encoding: identity\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    status, answer = await asyncio.to_thread(_exchange, core.config.agent_socket("alpha"), data)
    assert status == 200, answer
    assert (core.config.agent_dir("alpha") / "state" / "notes.txt").read_bytes() == b"ok"
