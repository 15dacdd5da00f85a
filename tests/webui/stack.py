"""The whole operator path on real sockets, for the browser tests.

- the real core (:func:`tests.core.conftest.start_core`) on ``core.sock`` in a
  short temp dir, its gateway uid being this process's;
- the real gateway (:func:`enforcer.gateway.create_app`) on 127.0.0.1, a free port;
- agents registered through the operator API, whose command is the test agent
  UI (``tests/webui/agent_ui.py``) on 127.0.0.1: the lifecycle backend really
  starts, stops and restarts it, and reports its address as ``ui_url``;
- agent clients on each agent's own socket (ask questions, request approvals).

Everything runs in one background event loop (:class:`WebStack`), so the
synchronous Playwright API can drive Chromium from the test thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from enforcer.config import GatewayConfig, HiveConfig
from enforcer.corestate import CORE
from enforcer.gateway import create_app as create_gateway
from enforcer.gateway import make_runner
from enforcer.lifecycle import LocalProcessBackend
from enforcer.store import AgentRecord
from tests.core.conftest import Core, make_config
from tests.loop_thread import close_loop_thread

__all__ = ["AGENT_UI", "UiBackend", "WebStack", "free_port"]

AGENT_UI = Path(__file__).resolve().parent / "agent_ui.py"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class UiBackend(LocalProcessBackend):
    """The local process backend, knowing where each agent serves its UI."""

    def __init__(self, config: HiveConfig) -> None:
        super().__init__(config, stop_timeout=3.0)
        self.ui_urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}

    def ui_url(self, name: str) -> str | None:
        """The agent's UI address (the operator API reports it to the gateway)."""
        return self.ui_urls.get(name)

    async def start(self, agent: AgentRecord) -> None:
        """Start, then wait until the agent's UI answers (a page loads right after)."""
        await super().start(agent)
        proc = self._procs[agent.name]
        self.pids[agent.name] = proc.pid
        url = self.ui_urls.get(agent.name)
        if url is None:
            return
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"agent {agent.name} UI did not come up")


class WebStack:
    """Core + gateway + agents in a background loop; blocking helpers for tests."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hbw-", dir="/tmp"))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = free_port()
        cfg = make_config(self.base / "run", self.base / "state")
        gateway = replace(GatewayConfig(), host="127.0.0.1", port=self.port, connect_timeout=2.0)
        self.config: HiveConfig = replace(cfg, gateway=gateway)
        self.core: Core | None = None
        self.backend = UiBackend(self.config)
        self._gateway: web.AppRunner | None = None
        self.agent_ports: dict[str, int] = {}

    # --- loop plumbing ---------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` in the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> WebStack:
        """Start the core, then the gateway."""
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        from enforcer.core import create_app, serve
        from enforcer.log import configure_logging

        configure_logging(open(os.devnull, "w"))  # noqa: SIM115, ASYNC230 - /dev/null
        app = create_app(self.config, backend=self.backend)
        runner = await serve(self.config, app)
        self.core = Core(self.config, app, runner)
        # Proxied event streams end only at their next write: do not wait for them.
        self._gateway = make_runner(create_gateway(self.config), shutdown_timeout=0.5)
        await self._gateway.setup()
        await web.TCPSite(self._gateway, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        """Stop everything (agents included) and remove the temp directory."""
        try:
            self.call(self._stop())
        finally:
            close_loop_thread(self.loop, self._thread)
            shutil.rmtree(self.base, ignore_errors=True)

    async def _stop(self) -> None:
        if self._gateway is not None:
            await self._gateway.cleanup()
        if self.core is not None:
            await self.core.runner.cleanup()

    # --- the operator's and agents' view ------------------------------------------

    @property
    def origin(self) -> str:
        """The gateway's origin, as the browser must use it."""
        return self.config.gateway.origin

    def url(self, path: str) -> str:
        """An absolute URL on the gateway."""
        return f"{self.origin}{path}"

    @property
    def token(self) -> str:
        """The operator token (the gateway wrote it at start-up)."""
        return self.config.operator_token_file.read_text().strip()

    def operator(self, method: str, path: str, body: Any = None) -> Any:
        """Call the core's operator API directly on core.sock (the test's eyes on the data)."""

        async def go() -> Any:
            assert self.core is not None
            async with self.core.operator() as op:
                resp = await op.request(method, path, json=body)
                return resp.status, await resp.json(content_type=None)

        status, data = self.call(go())
        assert status < 400, (status, data)
        return data

    def anonymous(self, method: str, path: str) -> int:
        """A request on core.sock without the operator marker (the policy denies it); status."""

        async def go() -> int:
            assert self.core is not None
            async with self.core.operator(headers={}) as anon:
                resp = await anon.request(method, path)
                return resp.status

        return self.call(go())

    def agent(self, name: str, method: str, path: str, body: Any = None) -> Any:
        """Call the agent surface on ``name``'s own socket."""

        async def go() -> Any:
            assert self.core is not None
            async with self.core.agent(name) as ag:
                resp = await ag.request(method, path, json=body)
                return resp.status, await resp.json(content_type=None)

        status, data = self.call(go())
        assert status < 400, (status, data)
        return data

    def add_agent(self, name: str, *, hostile: bool = False, start: bool = True) -> None:
        """Register an agent whose process serves the test agent UI, and start it."""
        port = free_port()
        self.agent_ports[name] = port
        self.backend.ui_urls[name] = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(AGENT_UI), "--port", str(port), "--name", name]
        if hostile:
            command.append("--hostile")
        self.operator("POST", "/api/agents", {"name": name, "uid": os.getuid(), "command": command})
        if start:
            self.operator("POST", f"/api/agents/{name}/start")

    def ask(self, agent: str, text: str, options: list[str] | None = None) -> int:
        """``agent`` asks the operator a question over its socket; its id."""
        body: dict[str, Any] = {"text": text}
        if options:
            body["options"] = options
        qid: int = self.agent(agent, "POST", "/v1/questions", body)["id"]
        return qid

    def request_approval(self, agent: str, action: str, detail: str = "") -> int:
        """``agent`` requests an approval over its socket; its id."""
        aid: int = self.agent(agent, "POST", "/v1/approvals", {"action": action, "detail": detail})[
            "id"
        ]
        return aid

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the core's store (compare two: "nothing changed")."""

        async def go() -> dict[str, list[tuple[Any, ...]]]:
            assert self.core is not None
            return self.core.app[CORE].db.snapshot()

        return self.call(go())

    def decisions(self) -> list[dict[str, Any]]:
        """The core's decision ring (every decision either surface made)."""

        async def go() -> list[dict[str, Any]]:
            assert self.core is not None
            return list(self.core.app[CORE].decisions)

        return self.call(go())

    def collected(self, agent: str) -> dict[str, Any]:
        """What the test agent UI's collector received (read directly, not via the gateway)."""
        url = f"http://127.0.0.1:{self.agent_ports[agent]}/collected"
        with urllib.request.urlopen(url, timeout=5) as resp:  # loopback, our own server
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def client(self) -> aiohttp.ClientSession:
        """An aiohttp client for the gateway (create and use it inside :meth:`call`)."""
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
