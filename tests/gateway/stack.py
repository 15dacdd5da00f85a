"""A real gateway between real sockets, for the gateway's tests.

- a *core double*: a small aiohttp app on the real ``core.sock`` unix socket
  that records what reaches it (path, headers, body) and counts state changes;
  it answers ``GET /api/agents/<name>`` with ``ui_url`` like the core will;
- an *agent UI double* on 127.0.0.1 (random port) that records what reaches it
  and answers with every header an agent should not get through
  (``Set-Cookie``, a loose CSP, ``Access-Control-*``, ``Clear-Site-Data``);
- the gateway itself (:func:`enforcer.gateway.create_app`) on 127.0.0.1.

:class:`Stack` runs in the caller's event loop; :class:`ThreadedStack` runs one
in a background thread for synchronous (Hypothesis) tests that send raw bytes.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from enforcer.config import GatewayConfig, HiveConfig
from enforcer.gateway import create_app, make_runner
from enforcer.sessions import CSRF_COOKIE
from tests.loop_thread import close_loop_thread

__all__ = ["RawResponse", "Seen", "Stack", "ThreadedStack", "raw_request"]

BIG = 8 << 20


@dataclass
class Seen:
    """One request as a backend received it."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes = b""


@dataclass
class Double:
    """What a backend double saw and did."""

    seen: list[Seen] = field(default_factory=list)
    state_changes: int = 0
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    client_has_first: asyncio.Event = field(default_factory=asyncio.Event)
    upload_bytes: int = 0


def _record(double: Double, request: web.Request, body: bytes = b"") -> None:
    double.seen.append(Seen(request.method, request.raw_path, CIMultiDict(request.headers), body))


async def _upload(double: Double, request: web.Request) -> web.Response:
    _record(double, request)
    first = await request.content.readany()
    double.first_chunk.set()
    total = len(first)
    while chunk := await request.content.readany():
        total += len(chunk)
    double.upload_bytes = total
    return web.json_response({"bytes": total})


async def _download(double: Double, request: web.Request) -> web.StreamResponse:
    _record(double, request)
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    await response.write(b"a" * 65536)
    # The rest only once the client has the first part: a buffering proxy deadlocks here.
    await asyncio.wait_for(double.client_has_first.wait(), 10)
    await response.write(b"b" * 65536)
    await response.write_eof()
    return response


FLOOD_BYTES = 32 << 20


async def _flood(double: Double, request: web.Request) -> web.StreamResponse:
    """A long answer, streamed as fast as the reader takes it (32 MiB)."""
    _record(double, request)
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    chunk = b"f" * (1 << 20)
    for _ in range(FLOOD_BYTES // len(chunk)):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _sse(double: Double, request: web.Request) -> web.StreamResponse:
    _record(double, request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: one\n\n")
    await asyncio.wait_for(double.client_has_first.wait(), 10)
    await response.write(b"data: two\n\n")
    await response.write_eof()
    return response


async def _ws(double: Double, request: web.Request) -> web.WebSocketResponse:
    _record(double, request)
    ws = web.WebSocketResponse(protocols=("chat",))
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo:{msg.data}")
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


def _bound(fn: Any, double: Double) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse = await fn(double, request)
        return response

    return handler


def core_double_app(double: Double, agents: dict[str, str]) -> web.Application:
    """The core as the gateway sees it, recording everything."""

    async def agent_record(request: web.Request) -> web.Response:
        _record(double, request)
        if request.headers.get("X-Hive-Principal") != "operator":
            return web.json_response({"error": "unauthorized"}, status=401)
        name = request.match_info["name"]
        if name not in agents:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response({"name": name, "ui_url": agents[name]})

    async def static(request: web.Request) -> web.Response:
        _record(double, request)
        return web.Response(text="body{}", content_type="text/css")

    async def leaky(request: web.Request) -> web.Response:
        _record(double, request)
        return web.json_response(
            {"ok": True},
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Credentials": "true",
                "X-Hive-Principal": "operator",
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
            },
        )

    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        _record(double, request, body)
        if request.method in {"POST", "PUT", "PATCH", "DELETE"}:
            double.state_changes += 1
        return web.json_response(
            {
                "principal": request.headers.get("X-Hive-Principal"),
                "path": request.raw_path,
                "body_len": len(body),
            }
        )

    app = web.Application(client_max_size=BIG)
    app.router.add_get("/api/agents/{name}", agent_record)
    app.router.add_get("/static/{path:.*}", static)
    app.router.add_get("/api/leaky", leaky)
    app.router.add_post("/api/upload", _bound(_upload, double))
    app.router.add_get("/api/download", _bound(_download, double))
    app.router.add_get("/api/flood", _bound(_flood, double))
    app.router.add_get("/api/events", _bound(_sse, double))
    app.router.add_get("/api/ws", _bound(_ws, double))
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def agent_double_app(double: Double) -> web.Application:
    """An agent's web UI that tries every header trick it should not get through."""
    hostile = {
        "Set-Cookie": "hive_session=stolen; Path=/",
        "Content-Security-Policy": "default-src *",
        "Access-Control-Allow-Origin": "*",
        "Clear-Site-Data": '"cookies"',
        "X-Frame-Options": "DENY",
        "Strict-Transport-Security": "max-age=1",
        "Refresh": "0; url=https://elsewhere.invalid/",
    }

    async def slow(request: web.Request) -> web.Response:
        _record(double, request)
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        # Wherever ?to= says (relative "elsewhere" by default: inside its pages).
        _record(double, request)
        raise web.HTTPFound(request.query.get("to", "elsewhere"), headers=hostile)

    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        _record(double, request, body)
        response = web.Response(
            text=f"<p>agent page {request.raw_path}</p>", content_type="text/html"
        )
        for name, value in hostile.items():
            response.headers.add(name, value)
        response.headers.add("Set-Cookie", "second=1")
        return response

    app = web.Application(client_max_size=BIG)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_post("/upload", _bound(_upload, double))
    app.router.add_get("/download", _bound(_download, double))
    app.router.add_get("/flood", _bound(_flood, double))
    app.router.add_get("/events", _bound(_sse, double))
    app.router.add_get("/ws", _bound(_ws, double))
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Stack:
    """Core double + agent double + the gateway, all on real sockets, in this loop."""

    def __init__(
        self,
        *,
        start_core: bool = True,
        gateway: dict[str, Any] | None = None,
        tls: tuple[Path, Path] | None = None,
        hot_path: bool = True,
    ) -> None:
        self._hot_path = hot_path
        self.base_dir = Path(tempfile.mkdtemp(prefix="hbg-", dir="/tmp"))
        self.run_dir = self.base_dir / "run"
        self.state_dir = self.base_dir / "state"
        self.run_dir.mkdir()
        self.state_dir.mkdir()
        self._start_core = start_core
        self._gateway_overrides = {"connect_timeout": 1.0, "idle_timeout": 1.0, **(gateway or {})}
        self._tls = tls
        self.core = Double()
        self.agent = Double()
        self.agents: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self.config = HiveConfig()
        self.port = 0
        self.csrf = ""  # the CSRF token of the last login

    @property
    def origin(self) -> str:
        """The gateway's own origin."""
        return self.config.gateway.origin

    @property
    def token(self) -> str:
        """The operator token the gateway generated."""
        return self.config.operator_token_file.read_text().strip()

    async def _serve(self, app: web.Application, site_of: Any) -> web.AppRunner:
        # auto_decompress=False: the doubles see bodies as sent, as the real core does.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2, auto_decompress=False)
        await runner.setup()
        await site_of(runner).start()
        self._runners.append(runner)
        return runner

    async def start(self) -> Stack:
        """Start the doubles, then the gateway."""
        agent_sock = _bound_socket()
        agent_port = agent_sock.getsockname()[1]
        await self._serve(agent_double_app(self.agent), lambda r: web.SockSite(r, agent_sock))
        self.agents.update(
            {
                "alpha": f"http://127.0.0.1:{agent_port}",
                "down": f"http://127.0.0.1:{_closed_port()}",
                "broken": "file:///etc/passwd",
            }
        )
        gw_sock = _bound_socket()
        self.port = gw_sock.getsockname()[1]
        gw_settings: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self._tls is not None:
            gw_settings.update(tls_cert=self._tls[0], tls_key=self._tls[1])
        gw_settings.update(self._gateway_overrides)
        self.config = HiveConfig(
            run_dir=self.run_dir,
            state_dir=self.state_dir,
            gateway=replace(GatewayConfig(), **gw_settings),
        )
        if self._start_core:
            core_path = str(self.config.core_socket)
            await self._serve(
                core_double_app(self.core, self.agents), lambda r: web.UnixSite(r, core_path)
            )
        from enforcer.gateway import _ssl_context

        ssl_context = _ssl_context(self.config)
        runner = make_runner(create_app(self.config), shutdown_timeout=0.2, hot_path=self._hot_path)
        await runner.setup()
        await web.SockSite(runner, gw_sock, ssl_context=ssl_context).start()
        self._runners.append(runner)
        return self

    async def stop(self) -> None:
        """Stop everything and remove the temporary directories."""
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    async def __aenter__(self) -> Stack:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, path: str) -> str:
        """An absolute URL on the gateway."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def client(self, **kwargs: Any) -> aiohttp.ClientSession:
        """A browser-like client: keeps cookies for the IP host, follows nothing by itself."""
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)

    async def login(self, client: aiohttp.ClientSession) -> str:
        """Log ``client`` in; returns the CSRF token."""
        async with client.post(
            self.url("/login"),
            data={"token": self.token},
            headers={"Origin": self.origin},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
        for cookie in client.cookie_jar:
            if cookie.key == CSRF_COOKIE:
                self.csrf = cookie.value
                return cookie.value
        raise AssertionError("no CSRF cookie after login")


class ThreadedStack:
    """A :class:`Stack` in a background thread's loop (for synchronous tests)."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.stack = Stack(**kwargs)
        self.cookie = ""
        self.csrf = ""

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine in the stack's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> ThreadedStack:
        self.call(self.stack.start())
        self.call(self._login())
        return self

    async def _login(self) -> None:
        async with self.stack.client() as client:
            self.csrf = await self.stack.login(client)
            for cookie in client.cookie_jar:
                if cookie.key == "hive_session":
                    self.cookie = cookie.value

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.stack.stop())
        finally:
            close_loop_thread(self._loop, self._thread)


@dataclass
class RawResponse:
    """A parsed raw HTTP/1.1 response."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


def raw_request(port: int, request: bytes, timeout: float = 10) -> RawResponse:
    """Send ``request`` bytes as they are (no client-side normalisation) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return RawResponse(status, headers, body)
