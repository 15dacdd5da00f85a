"""Load: many agents and the operator at once, with policy reloads and hostile clients.

The real core and the real gateway run as subprocesses (``python -m
enforcer.core``, ``python -m enforcer.cli gateway``) on a temporary directory,
their JSON logs in files. This process registers N agents and then, for a
bounded time:

- every agent, on its own unix socket (raw HTTP/1.1 keep-alive), cycles through
  allowed and denied requests (the bench policy grants ``status.report`` only
  to agents ``r*``; agents ``d*`` are denied it);
- an operator session through the gateway reads the API, and an anonymous
  client is refused (401);
- the policy is rewritten (a new revision with the same decisions) and
  reloaded through the gateway every second;
- hostile clients: slowloris connections (headers sent a byte at a time),
  huge headers, huge bodies, many idle connections, on the gateway and on
  agent sockets.

Checked, as figures: 5xx answers (must be 0), wrong decisions (each response
against the decision the policy gives for that request; must be 0), decision
log lines per request id (each exactly once) and per (principal, action,
decision) against what the clients counted, failed reloads, RSS and open fds
of both daemons before, at peak, and after the run.

``--quick`` finishes in < 1 minute. The last line is one JSON object.
``run_load()`` is what ``tests/reliability/test_load_short.py`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

__all__ = ["Daemons", "LoadResult", "bench_policy_dir", "read_decisions", "run_load"]

Tally = collections.Counter[tuple[str, str, str]]  # (principal, action, allow|deny)


# --- the bench policy ---------------------------------------------------------------


def bench_policy_dir(directory: Path, reporters: list[str], comment: str = "") -> Path:
    """The shipped policy, except that ``status.report`` is granted only to ``reporters``.

    ``comment`` changes the revision without changing any decision (reloads).
    """
    from enforcer.config import default_policy_dir
    from enforcer.policy.loader import POLICY_FILES

    directory.mkdir(parents=True, exist_ok=True)
    shipped = default_policy_dir()
    for name in POLICY_FILES:
        text = (shipped / name).read_text()
        if name == "policy.csv":
            text = text.replace(
                "p, role:agent, socket, agent:{self}/status, status.report",
                "p, role:reporter, socket, agent:{self}/status, status.report",
            )
            # tests.toml expects agent:alpha to report its status.
            text += "".join(f"g, agent:{n}, role:reporter\n" for n in ["alpha", *reporters])
            if comment:
                text += f"# {comment}\n"
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, directory / name)  # a reader never sees half a file
    return directory


# --- the daemons --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def proc_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (0 if gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the gateway is a supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
    return out


@dataclass
class Daemons:
    """The real core and gateway as subprocesses on one temporary directory.

    Logs (JSON lines) go to ``core.log`` / ``gateway.log`` beside the config;
    ``state_dir`` and ``policy_dir`` may be given (e.g. a small tmpfs).
    """

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hbl-", dir="/tmp")))
    state_dir: Path | None = None
    policy_dir: Path | None = None
    log_dir: Path | None = None
    port: int = field(default_factory=_free_port)
    core: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.run_dir = self.base / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.state_dir = self.state_dir or self.base / "state"
        self.policy_dir = self.policy_dir or bench_policy_dir(self.base / "policies", [])
        self.log_dir = self.log_dir or self.base
        self.config_file = self.base / "hive.toml"
        self.config_file.write_text(
            f'run_dir = "{self.run_dir}"\nstate_dir = "{self.state_dir}"\n'
            f'policy_dir = "{self.policy_dir}"\n'
            f"[core]\ngateway_uid = {os.getuid()}\nlong_poll_max_seconds = 2.0\n"
            f'[gateway]\nlisten = "127.0.0.1:{self.port}"\nconnect_timeout = 1.0\n'
            "idle_timeout = 2.0\n"
        )
        from enforcer.config import load_config

        self.config = load_config(self.config_file)

    @property
    def core_log(self) -> Path:
        assert self.log_dir is not None
        return self.log_dir / "core.log"

    @property
    def gateway_log(self) -> Path:
        assert self.log_dir is not None
        return self.log_dir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.config.gateway.origin

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", *args, "--config", str(self.config_file)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def start_core(self, timeout: float = 20) -> None:
        """Start the core; return once core.sock accepts connections."""
        self.core = self._spawn(["enforcer.core"], self.core_log)
        path = str(self.config.core_socket)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
            if self.core.poll() is not None:
                raise RuntimeError(f"the core exited: {self.core_log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("the core did not start")

    def start_gateway(self, timeout: float = 20) -> None:
        """Start the gateway; return once its port accepts connections."""
        self.gateway = self._spawn(["enforcer.cli", "gateway"], self.gateway_log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self.gateway_log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("the gateway did not start")

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill_core(self) -> None:
        """SIGKILL the core (a crash: no cleanup runs)."""
        self._end(self.core, signal.SIGKILL)

    def stop_core(self) -> None:
        """SIGTERM the core."""
        self._end(self.core, signal.SIGTERM)

    def stop(self) -> None:
        """Stop both daemons and remove the temporary directory."""
        self._end(self.gateway, signal.SIGTERM)
        self._end(self.core, signal.SIGTERM)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def token(self) -> str:
        """The operator login token the gateway wrote."""
        return self.config.operator_token_file.read_text().strip()

    async def operator(self) -> tuple[aiohttp.ClientSession, str]:
        """A logged-in operator session through the gateway, and its CSRF token."""
        client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        for _ in range(100):
            if self.config.operator_token_file.exists():
                break
            await asyncio.sleep(0.05)
        async with client.post(
            self.url + "/login",
            data={"token": self.token()},
            headers={"Origin": self.origin},
            allow_redirects=False,
        ) as resp:
            if resp.status != 303:
                await client.close()
                raise RuntimeError(f"login failed: {resp.status} {await resp.text()}")
        csrf = next(c.value for c in client.cookie_jar if c.key == "hive_csrf")
        return client, csrf


def read_decisions(log: Path) -> list[dict[str, Any]]:
    """Every ``decision`` event of a daemon's JSON log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"decision"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "decision":
            out.append(event)
    return out


# --- raw HTTP over an agent's unix socket --------------------------------------------


class RawConn:
    """One keep-alive HTTP/1.1 connection to a unix socket, reconnecting when closed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: str = ""
    ) -> tuple[int, bytes]:
        """Send one request; (status, body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_unix_connection(self.path)
        assert self.reader is not None
        head = f"{method} {target} HTTP/1.1\r\nHost: agent\r\n{headers}"
        if body or method in {"POST", "PUT"}:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise
        length, close = 0, False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return int(raw.split(b" ", 2)[1]), data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


# --- the load -----------------------------------------------------------------------------


@dataclass
class Figures:
    """What the clients saw."""

    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    wrong: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    core_tally: Tally = field(default_factory=collections.Counter)
    gateway_tally: Tally = field(default_factory=collections.Counter)
    deny_ids: list[str] = field(default_factory=list)
    reloads: int = 0
    failed_reloads: list[str] = field(default_factory=list)
    hostile: collections.Counter[str] = field(default_factory=collections.Counter)

    def seen(self, status: int) -> None:
        self.requests += 1
        self.statuses[status] += 1


# (method, target, body, action, resource suffix, status when allowed)
AGENT_OPS: tuple[tuple[str, str, bytes, str, str, int], ...] = (
    ("GET", "/v1/whoami", b"", "agent.whoami", "", 200),
    ("POST", "/v1/messages", b'{"text": "load"}', "message.send", "/messages", 201),
    ("POST", "/v1/status", b'{"state": "busy"}', "status.report", "/status", 200),
    ("PUT", "/v1/state/load.txt", b"x" * 64, "state.write", "/state/load.txt", 200),
    ("GET", "/v1/state/load.txt", b"", "state.read", "/state/load.txt", 200),
)
OPERATOR_OPS: tuple[tuple[str, str, str], ...] = (
    ("/api/agents", "agent.list", "agents"),
    ("/api/questions?status=open", "question.list", "questions"),
    ("/api/policy", "policy.read", "policy"),
)


def _expected(policy: Any, principal: str, channel: str, res: str, action: str) -> bool:
    from enforcer.policy import AccessRequest

    return bool(policy.decide(AccessRequest(principal, channel, res, action)).allowed)


async def _agent_worker(name: str, path: str, deadline: float, policy: Any, fig: Figures) -> None:
    conn = RawConn(path)
    principal = f"agent:{name}"
    i = 0
    try:
        while time.monotonic() < deadline:
            method, target, body, action, suffix, ok = AGENT_OPS[i % len(AGENT_OPS)]
            i += 1
            if action == "state.read" and i <= len(AGENT_OPS):
                continue  # nothing written yet on the first round
            allow = _expected(policy, principal, "socket", f"agent:{name}{suffix}", action)
            try:
                status, data = await conn.request(method, target, body)
            except (OSError, asyncio.IncompleteReadError) as e:
                fig.errors.append(f"{name} {target}: {e!r}")
                continue
            fig.seen(status)
            fig.core_tally[(principal, action, "allow" if allow else "deny")] += 1
            if (allow and status != ok) or (not allow and status != 403):
                fig.wrong.append(f"{principal} {method} {target}: {status} {data[:120]!r}")
            if status == 403:
                fig.deny_ids.append(json.loads(data).get("request_id", ""))
    finally:
        await conn.close()


async def _operator_worker(
    d: Daemons, client: aiohttp.ClientSession, deadline: float, policy: Any, fig: Figures
) -> None:
    i = 0
    while time.monotonic() < deadline:
        target, action, res = OPERATOR_OPS[i % len(OPERATOR_OPS)]
        i += 1
        try:
            async with client.get(d.url + target) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientError as e:
            fig.errors.append(f"operator {target}: {e!r}")
            continue
        fig.seen(status)
        allow = _expected(policy, "operator", "gateway", res, action)
        fig.gateway_tally[("operator", "dashboard.view", "allow")] += 1
        fig.core_tally[("operator", action, "allow" if allow else "deny")] += 1
        if status != (200 if allow else 403):
            fig.wrong.append(f"operator GET {target}: {status}")


async def _anonymous_worker(d: Daemons, deadline: float, policy: Any, fig: Figures) -> None:
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            try:
                async with client.get(d.url + "/api/agents") as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as e:
                fig.errors.append(f"anonymous: {e!r}")
                continue
            fig.seen(status)
            allow = _expected(policy, "anonymous", "gateway", "ui", "dashboard.view")
            fig.gateway_tally[("anonymous", "dashboard.view", "allow" if allow else "deny")] += 1
            if allow or status != 401:
                fig.wrong.append(f"anonymous GET /api/agents: {status}")
            await asyncio.sleep(0.02)


async def _reloader(
    d: Daemons,
    client: aiohttp.ClientSession,
    csrf: str,
    reporters: list[str],
    deadline: float,
    fig: Figures,
) -> None:
    assert d.policy_dir is not None
    n = 0
    while time.monotonic() + 1.0 < deadline:
        await asyncio.sleep(1.0)
        n += 1
        # A new revision with the same decisions, written file by file (atomic renames).
        await asyncio.to_thread(bench_policy_dir, d.policy_dir, reporters, f"reload {n}")
        try:
            async with client.post(
                d.url + "/api/policy/reload",
                headers={"X-CSRF-Token": csrf, "Origin": d.origin},
            ) as resp:
                body = await resp.json()
                status = resp.status
        except (aiohttp.ClientError, ValueError) as e:
            fig.failed_reloads.append(repr(e))
            continue
        fig.seen(status)
        fig.reloads += 1
        fig.gateway_tally[("operator", "dashboard.view", "allow")] += 1
        fig.core_tally[("operator", "policy.reload", "allow")] += 1
        if status != 200 or not body.get("ok"):
            fig.failed_reloads.append(f"{status} {body}")


async def _slowloris(host: tuple[str, int] | str, stop: asyncio.Event, fig: Figures) -> None:
    """Open a request and send its headers one byte at a time, forever (until stop)."""
    try:
        if isinstance(host, str):
            _, writer = await asyncio.open_unix_connection(host)
        else:
            _, writer = await asyncio.open_connection(*host)
    except OSError:
        fig.hostile["slowloris_refused"] += 1
        return
    fig.hostile["slowloris_open"] += 1
    try:
        writer.write(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set():
            writer.write(b"X")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    except OSError:
        fig.hostile["slowloris_dropped_by_server"] += 1
    finally:
        writer.close()


async def _idle(host: tuple[str, int] | str, stop: asyncio.Event, fig: Figures) -> None:
    try:
        if isinstance(host, str):
            _, writer = await asyncio.open_unix_connection(host)
        else:
            _, writer = await asyncio.open_connection(*host)
    except OSError:
        fig.hostile["idle_refused"] += 1
        return
    fig.hostile["idle_open"] += 1
    await stop.wait()
    writer.close()


async def _huge(
    d: Daemons,
    op: aiohttp.ClientSession,
    csrf: str,
    agent_sock: str,
    name: str,
    policy: Any,
    fig: Figures,
) -> None:
    """Huge headers and huge bodies, on an agent socket and on the gateway: 4xx, never 5xx."""
    big_header = "X-Big: " + "a" * (256 << 10) + "\r\n"
    # Huge header on the agent socket: refused by the HTTP parser (no decision).
    conn = RawConn(agent_sock)
    try:
        status, _ = await conn.request("GET", "/v1/whoami", headers=big_header)
        fig.seen(status)
        fig.hostile[f"huge_header_agent_{status}"] += 1
    except (OSError, asyncio.IncompleteReadError):
        fig.hostile["huge_header_agent_closed"] += 1
    finally:
        await conn.close()
    # Huge body on the agent socket: decided (allowed), then 413.
    status = await _huge_body_unix(agent_sock, "/v1/messages", 16 << 20)
    fig.hostile[f"huge_body_agent_{status or 'closed'}"] += 1
    if status:
        fig.seen(status)
        allow = _expected(
            policy, f"agent:{name}", "socket", f"agent:{name}/messages", "message.send"
        )
        fig.core_tally[(f"agent:{name}", "message.send", "allow" if allow else "deny")] += 1
    # The same at the gateway (anonymous: refused before any body is read).
    async with aiohttp.ClientSession() as client:
        try:
            async with client.get(d.url + "/health", headers={"X-Big": "a" * (256 << 10)}) as r:
                fig.seen(r.status)
                fig.hostile[f"huge_header_gateway_{r.status}"] += 1
        except aiohttp.ClientError:
            fig.hostile["huge_header_gateway_closed"] += 1
        try:
            async with client.post(d.url + "/login", data=b"t" * (16 << 20)) as r:
                fig.seen(r.status)
                fig.hostile[f"huge_body_gateway_{r.status}"] += 1
                fig.gateway_tally[("anonymous", "session.login", "allow")] += 1
        except aiohttp.ClientError:
            fig.hostile["huge_body_gateway_closed"] += 1
    # The operator's huge body through the gateway: streamed to the core, which refuses it.
    try:
        async with op.post(
            d.url + "/api/questions/1/answer",
            data=b"a" * (16 << 20),
            headers={"X-CSRF-Token": csrf, "Origin": d.origin, "Content-Type": "application/json"},
        ) as r:
            await r.read()
            fig.seen(r.status)
            fig.hostile[f"huge_body_operator_{r.status}"] += 1
            fig.gateway_tally[("operator", "dashboard.view", "allow")] += 1
            fig.core_tally[("operator", "question.answer", "allow")] += 1
    except aiohttp.ClientError:
        fig.hostile["huge_body_operator_closed"] += 1


async def _huge_body_unix(path: str, target: str, size: int) -> int:
    """POST ``size`` bytes while reading the answer (a server may answer early); 0 if none."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n".encode())

    async def send() -> None:
        with contextlib.suppress(OSError):
            for _ in range(size >> 16):
                writer.write(b"a" * 65536)
                await writer.drain()

    sender = asyncio.create_task(send())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])
    except (OSError, asyncio.IncompleteReadError):
        return 0
    finally:
        sender.cancel()
        writer.close()


@dataclass
class LoadResult:
    """Figures of one run (``as_json()`` is the bench's last line)."""

    agents: int
    seconds: float
    requests: int
    rps: float
    status_5xx: int
    wrong_decisions: int
    client_errors: int
    decisions_logged_core: int
    decisions_logged_gateway: int
    duplicate_request_ids: int
    tally_mismatches: int
    deny_ids_not_logged_once: int
    reloads: int
    failed_reloads: int
    hostile: dict[str, int]
    rss_kib: dict[str, dict[str, int]]
    fds: dict[str, dict[str, int]]
    samples: dict[str, list[str]]

    def as_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _usage(d: Daemons) -> tuple[dict[str, int], dict[str, int]]:
    assert d.core is not None
    assert d.gateway is not None
    # The gateway's figures add up its supervisor and every worker.
    gateway = proc_tree(d.gateway.pid)
    return (
        {"core": proc_rss_kib(d.core.pid), "gateway": sum(map(proc_rss_kib, gateway))},
        {"core": proc_fds(d.core.pid), "gateway": sum(map(proc_fds, gateway))},
    )


def _tally_of(events: list[dict[str, Any]]) -> Tally:
    return collections.Counter((e["principal"], e["action"], e["decision"]) for e in events)


async def _run(n_agents: int, seconds: float, hostile: bool) -> LoadResult:
    from enforcer.policy import load_policy

    names = [("r" if i % 2 == 0 else "d") + str(i) for i in range(n_agents)]
    reporters = [n for n in names if n.startswith("r")]
    with Daemons() as d:
        assert d.policy_dir is not None
        bench_policy_dir(d.policy_dir, reporters)
        policy = load_policy(d.policy_dir)
        d.start_core()
        d.start_gateway()
        fig = Figures()
        op, csrf = await d.operator()
        fig.gateway_tally[("anonymous", "session.login", "allow")] += 1
        try:
            for name in names:
                async with op.post(
                    d.url + "/api/agents",
                    json={"name": name, "uid": os.getuid()},
                    headers={"X-CSRF-Token": csrf, "Origin": d.origin},
                ) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"register {name}: {resp.status} {await resp.text()}")
                fig.gateway_tally[("operator", "dashboard.view", "allow")] += 1
                fig.core_tally[("operator", "agent.register", "allow")] += 1
            # Warm up, then the baseline.
            warm = time.monotonic() + 1.0
            await asyncio.gather(
                *(
                    _agent_worker(n, str(d.config.agent_socket(n)), warm, policy, fig)
                    for n in names[: min(20, n_agents)]
                ),
                _operator_worker(d, op, warm, policy, fig),
            )
            await asyncio.sleep(0.5)
            rss0, fds0 = _usage(d)
            stop = asyncio.Event()
            t0 = time.monotonic()
            deadline = t0 + seconds
            tasks = [
                *(
                    _agent_worker(n, str(d.config.agent_socket(n)), deadline, policy, fig)
                    for n in names
                ),
                _operator_worker(d, op, deadline, policy, fig),
                _anonymous_worker(d, deadline, policy, fig),
                _reloader(d, op, csrf, reporters, deadline, fig),
            ]
            if hostile:
                gw = ("127.0.0.1", d.port)
                sock0 = str(d.config.agent_socket(names[0]))
                tasks += [_slowloris(gw, stop, fig) for _ in range(50)]
                tasks += [_slowloris(sock0, stop, fig) for _ in range(50)]
                tasks += [_idle(gw, stop, fig) for _ in range(200)]
                tasks += [_idle(sock0, stop, fig) for _ in range(200)]
                tasks.append(_huge(d, op, csrf, sock0, names[0], policy, fig))

            peak: dict[str, dict[str, int]] = {"rss": {}, "fds": {}}

            async def sample() -> None:
                while time.monotonic() < deadline:
                    rss, fds = _usage(d)
                    for k in rss:
                        peak["rss"][k] = max(peak["rss"].get(k, 0), rss[k])
                        peak["fds"][k] = max(peak["fds"].get(k, 0), fds[k])
                    await asyncio.sleep(0.25)

            async def stopper() -> None:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                stop.set()

            await asyncio.gather(*tasks, sample(), stopper())
            elapsed = time.monotonic() - t0
        finally:
            await op.close()
        # Let the daemons notice closed connections, then measure again.
        await asyncio.sleep(1.0)
        rss1, fds1 = _usage(d)
        d.stop_core()
        core_events = read_decisions(d.core_log)
        gw_events = read_decisions(d.gateway_log)
    ids = collections.Counter(e.get("request_id") for e in core_events + gw_events)
    dup = sum(1 for v in ids.values() if v != 1)
    core_logged, gw_logged = _tally_of(core_events), _tally_of(gw_events)
    mismatches = [
        f"core {k}: clients {fig.core_tally[k]} log {core_logged[k]}"
        for k in set(core_logged) | set(fig.core_tally)
        if core_logged[k] != fig.core_tally[k]
    ] + [
        f"gateway {k}: clients {fig.gateway_tally[k]} log {gw_logged[k]}"
        for k in set(gw_logged) | set(fig.gateway_tally)
        if gw_logged[k] != fig.gateway_tally[k]
    ]
    deny_bad = sum(
        1
        for rid in fig.deny_ids
        if sum(1 for e in core_events if e.get("request_id") == rid and e["decision"] == "deny")
        != 1
    )
    return LoadResult(
        agents=n_agents,
        seconds=round(elapsed, 2),
        requests=fig.requests,
        rps=round(fig.requests / elapsed, 1),
        status_5xx=sum(v for k, v in fig.statuses.items() if k >= 500),
        wrong_decisions=len(fig.wrong),
        client_errors=len(fig.errors),
        decisions_logged_core=len(core_events),
        decisions_logged_gateway=len(gw_events),
        duplicate_request_ids=dup,
        tally_mismatches=len(mismatches),
        deny_ids_not_logged_once=deny_bad,
        reloads=fig.reloads,
        failed_reloads=len(fig.failed_reloads),
        hostile=dict(fig.hostile),
        rss_kib={"before": rss0, "peak": peak["rss"], "after": rss1},
        fds={"before": fds0, "peak": peak["fds"], "after": fds1},
        samples={
            "wrong": fig.wrong[:5],
            "errors": fig.errors[:5],
            "mismatches": mismatches[:5],
            "failed_reloads": fig.failed_reloads[:5],
            "5xx": [str(k) for k in fig.statuses if k >= 500],
        },
    )


def _raise_fd_limit(want: int = 8192) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def run_load(agents: int, seconds: float, *, hostile: bool = True) -> LoadResult:
    """One bounded load run (the daemons are started and stopped inside)."""
    _raise_fd_limit()
    return asyncio.run(_run(agents, seconds, hostile))


def _table(r: LoadResult) -> Iterator[str]:
    yield f"{r.agents} agents + operator + anonymous + reloads, {r.seconds:.1f} s (2 cores)"
    yield f"{'figure':36}{'value':>14}{'target':>10}"
    rows = [
        ("requests answered", r.requests, ""),
        ("requests/s", r.rps, ""),
        ("5xx answers", r.status_5xx, "0"),
        ("wrong decisions", r.wrong_decisions, "0"),
        ("client errors (resets, timeouts)", r.client_errors, "0"),
        ("decisions logged (core)", r.decisions_logged_core, ""),
        ("decisions logged (gateway)", r.decisions_logged_gateway, ""),
        ("request ids not logged once", r.duplicate_request_ids, "0"),
        ("log tallies != client tallies", r.tally_mismatches, "0"),
        ("denials not in the log once", r.deny_ids_not_logged_once, "0"),
        ("policy reloads", r.reloads, ""),
        ("failed reloads", r.failed_reloads, "0"),
    ]
    for label, value, target in rows:
        yield f"{label:36}{value!s:>14}{target:>10}"
    yield f"{'':36}{'before':>10}{'peak':>10}{'after':>10}"
    for proc in ("core", "gateway"):
        yield (
            f"{proc + ' RSS MiB':36}{r.rss_kib['before'][proc] / 1024:>10.1f}"
            f"{r.rss_kib['peak'].get(proc, 0) / 1024:>10.1f}"
            f"{r.rss_kib['after'][proc] / 1024:>10.1f}"
        )
        yield (
            f"{proc + ' open fds':36}{r.fds['before'][proc]:>10}"
            f"{r.fds['peak'].get(proc, 0):>10}{r.fds['after'][proc]:>10}"
        )
    if r.hostile:
        yield "hostile clients: " + ", ".join(f"{k}={v}" for k, v in sorted(r.hostile.items()))
    for key, values in r.samples.items():
        for v in values:
            yield f"  {key}: {v}"


def main(argv: list[str] | None = None) -> int:
    """Run the load benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 1 minute)")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--no-hostile", action="store_true")
    args = parser.parse_args(argv)
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    r = run_load(args.agents, seconds, hostile=not args.no_hostile)
    for line in _table(r):
        print(line)
    print(json.dumps(r.as_json(), sort_keys=True))
    ok = r.status_5xx == r.wrong_decisions == r.tally_mismatches == r.failed_reloads == 0
    return 0 if ok else 1


if __name__ == "__main__":
    # Run as a script, this file's directory comes first on sys.path, where
    # bench/netns.py would shadow the netns package: use the repository root.
    sys.path[0] = str(REPO)
    sys.exit(main())
