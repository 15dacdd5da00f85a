"""Worker shutdown with links open: idle, busy (core silent) and held for a
client that reads nothing.

After the gateway's runner is cleaned up, no connection to the core may stay
open (the application's are all closed): ``FrontDoor.close`` uses
``transport.close()``, which waits for a client that takes nothing, so the
door never hears ``connection_lost`` and its held link to the core stays open.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.gateway.link_harness import ScriptCore, cookie_of, get, path_of
from tests.gateway.stack import Stack

pytestmark = pytest.mark.asyncio


async def _script(
    core: ScriptCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        head = await core.head(reader)
        if path_of(head) == b"/api/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"10000\r\n" + b"e" * 65536 + b"\r\n")
                await writer.drain()
        elif path_of(head) == b"/api/stall":
            await reader.read(1)  # silent until the gateway lets go
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def _open_after_shutdown(hot_path: bool) -> int:
    stack = Stack(start_core=False, hot_path=hot_path, gateway={"idle_timeout": 30.0})
    await stack.start()
    core = ScriptCore(_script)
    await core.start(stack.config.core_socket)
    loop = asyncio.get_running_loop()
    socks = []
    try:
        cookie = await cookie_of(stack)
        for path in ("/api/stall", "/api/endless"):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", stack.port))
            await loop.sock_sendall(sock, get(path, cookie))
            socks.append(sock)
        await asyncio.sleep(0.3)
        r, w = await asyncio.open_connection("127.0.0.1", stack.port)
        w.write(get("/api/ok", cookie))
        await r.readuntil(b"ok")
        assert core.open >= 3
        async with asyncio.timeout(10):
            await stack.stop()
        await asyncio.sleep(0.5)
        w.close()
        return core.open
    finally:
        for s in socks:
            s.close()
        core.stop()


async def test_shutdown_lets_go_of_every_connection_to_the_core() -> None:
    plain = await _open_after_shutdown(hot_path=False)
    door = await _open_after_shutdown(hot_path=True)
    assert plain == 0
    assert door == plain, f"{door} connections to the core outlive the worker's shutdown"
