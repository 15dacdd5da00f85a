"""Helpers for the front door's link tests: a scripted raw core, raw clients (attack review)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from enforcer.sessions import cookie_name
from tests.gateway.stack import Stack

Script = Callable[["ScriptCore", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptCore:
    """A raw core: each connection runs ``script(reader, writer, n)`` (n: connection number)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.open = 0
        self.heads: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(path))

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        self.open += 1
        try:
            await self.script(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


def always(answer: bytes) -> Script:
    """A core script that gives ``answer``, as it is, to every request on the connection."""

    async def script(
        core: ScriptCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await core.head(reader)
            writer.write(answer)
            await writer.drain()

    return script


def path_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1].split(b"?")[0]


async def cookie_of(stack: Stack) -> str:
    async with stack.client() as client:
        await stack.login(client)
        return next(c.value for c in client.cookie_jar if c.key == cookie_name(False))


def get(path: str, cookie: str, tail: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie_name(False)}={cookie}\r\n{tail}\r\n"
    ).encode()


@asynccontextmanager
async def stacks(
    script: Script, gateway: dict[str, Any] | None = None
) -> AsyncIterator[list[tuple[Stack, str, ScriptCore]]]:
    """[(door stack, cookie, core), (plain stack, cookie, core)]."""
    cores = [ScriptCore(script), ScriptCore(script)]
    async with (
        Stack(start_core=False, gateway=gateway) as fast,
        Stack(start_core=False, hot_path=False, gateway=gateway) as plain,
    ):
        for core, stack in zip(cores, (fast, plain), strict=True):
            await core.start(stack.config.core_socket)
        try:
            yield [
                (fast, await cookie_of(fast), cores[0]),
                (plain, await cookie_of(plain), cores[1]),
            ]
        finally:
            for core in cores:
                core.stop()


@asynccontextmanager
async def door_stack(
    script: Script, gateway: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Stack, str, ScriptCore]]:
    core = ScriptCore(script)
    async with Stack(start_core=False, gateway=gateway) as stack:
        await core.start(stack.config.core_socket)
        try:
            yield stack, await cookie_of(stack), core
        finally:
            core.stop()


async def read_answer(
    reader: asyncio.StreamReader, wait: float = 3.0
) -> tuple[int, dict[str, str], bytes]:
    """One whole answer (Content-Length or chunked); (0, {}, b'') if cut/nothing."""
    try:
        async with asyncio.timeout(wait):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (x.partition(":") for x in lines[1:] if x)
            }
            status = int(lines[0].split(" ")[1])
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                    if size == 0:
                        break
                body = b"".join(parts)
            else:
                body = b""
            return status, headers, body
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        return 0, {}, b""


async def raw_all(port: int, data: bytes, wait: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        chunks = []
        while True:
            try:
                async with asyncio.timeout(wait):
                    chunk = await reader.read(65536)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def small_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


def fd_count() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def hot_of(stack: Stack):  # type: ignore[no-untyped-def]
    from enforcer import gateway

    runner = stack._runners[-1]
    return runner.app[gateway._HOT]
