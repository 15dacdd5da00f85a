"""Property: whatever an agent sends on its own socket, no operator handler runs, no
other agent's data is read or changed, nothing answers 5xx, and only the agent
surface's own routes can succeed.

Requests are raw bytes over the unix socket (no HTTP client normalises the path),
against a real core running on its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from hypothesis import given
from hypothesis import strategies as st

from enforcer import agent_api
from enforcer.config import default_policy_dir
from enforcer.policy import AuthorityClass, PolicyEngine
from tests.core.conftest import Core, make_config, start_core
from tests.loop_thread import close_loop_thread

SECRET_Q = "BETA-SECRET-QUESTION"
SECRET_F = b"BETA-SECRET-FILE"

_catalogue = PolicyEngine(default_policy_dir()).current
assert _catalogue is not None
OPERATOR_ACTIONS = {
    name for name, spec in _catalogue.catalogue.items() if spec.authority == AuthorityClass.OPERATOR
}


@dataclass
class Harness:
    core: Core
    loop: asyncio.AbstractEventLoop
    calls: collections.Counter[str]

    @property
    def alpha_sock(self) -> str:
        return str(self.core.config.agent_socket("alpha"))


def _instrument(calls: collections.Counter[str]) -> Any:
    def wrap(action: str, handler: Handler) -> Handler:
        async def counted(request: web.Request) -> web.StreamResponse:
            calls[action] += 1
            return await handler(request)

        return counted

    return wrap


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hbp-", dir="/tmp"))
    (base / "run").mkdir()
    (base / "state").mkdir()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    calls: collections.Counter[str] = collections.Counter()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    config = make_config(base / "run", base / "state", long_poll_max_seconds=0.2)
    core = run(start_core(config, instrument=_instrument(calls)))

    async def seed() -> None:
        await core.register("alpha")
        await core.register("beta")
        async with core.agent("beta") as beta:
            assert (await beta.post("/v1/questions", json={"text": SECRET_Q})).status == 201
            assert (await beta.post("/v1/approvals", json={"action": SECRET_Q})).status == 201
            assert (await beta.put("/v1/state/secret.txt", data=SECRET_F)).status == 200

    try:
        run(seed())
        calls.clear()
        yield Harness(core, loop, calls)
    finally:
        run(core.runner.cleanup())
        close_loop_thread(loop, thread)
        shutil.rmtree(base, ignore_errors=True)


def _beta_view(h: Harness) -> tuple[Any, ...]:
    db = sqlite3.connect(f"file:{h.core.config.database}?mode=ro", uri=True)
    try:
        rows = tuple(
            tuple(db.execute(f"SELECT * FROM {t} WHERE {c}='beta' ORDER BY 1").fetchall())
            for t, c in (
                ("agents", "name"),
                ("questions", "agent"),
                ("approvals", "agent"),
                ("messages", "agent"),
                ("journal", "agent"),
            )
        )
    finally:
        db.close()
    state = h.core.config.agent_dir("beta") / "state"
    files = tuple(sorted((str(p), p.read_bytes()) for p in state.rglob("*") if p.is_file()))
    return rows, files


# --- strategies ------------------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]
PREFIXES = [
    "/v1",
    "/v1/whoami",
    "/v1/questions",
    "/v1/approvals",
    "/v1/messages",
    "/v1/status",
    "/v1/state",
    "/api",
    "/api/agents",
    "/api/agents/beta",
    "/api/agents/beta/state/secret.txt",
    "/api/questions/1/answer",
    "/api/approvals/2/approve",
    "/api/agents/beta/destroy",
    "/api/policy/reload",
    "/api/events",
    "",
]
SEGMENTS = [
    "..",
    ".",
    "",
    "%2e%2e",
    "%2E%2e%2f",
    "%2f",
    "%5c",
    "%00",
    "%252e%252e",
    "\\..\\",
    "beta",
    "agents",
    "..;",
    "secret.txt",
    "1",
    "2",
    "api",
    "v1",
    "%41",
    "state",
    "answer",
]
HEADERS = {
    "X-Hive-Principal": ["operator", "agent:beta", "beta"],
    "X-Hive-Agent": ["beta"],
    "X-Forwarded-For": ["127.0.0.1", "gateway"],
    "X-Forwarded-User": ["operator"],
    "Forwarded": ["for=gateway;by=core"],
    "X-Real-IP": ["127.0.0.1"],
    "X-Original-URL": ["/api/agents/beta/destroy"],
    "X-Rewrite-URL": ["/api/questions/1/answer"],
}

_token = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"),
    max_size=12,
)


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    """Raw request targets: known prefixes plus traversal, encodings, slashes, junk."""
    if draw(st.integers(0, 19)) == 0:
        return "/" + "a/" * draw(st.integers(2000, 5000))  # overlong
    path = draw(st.sampled_from(PREFIXES))
    for seg in draw(st.lists(st.one_of(st.sampled_from(SEGMENTS), _token), max_size=6)):
        path += draw(st.sampled_from(["/", "//", "\\"])) + seg
    if not path.startswith("/") and draw(st.booleans()):
        path = "/" + path
    if draw(st.booleans()):
        path += "?" + draw(st.sampled_from(["wait=0.1", "wait=x", "agent=beta", "a=%00", ""]))
    return path or "/"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """JSON that looks like the surfaces' bodies (with foreign fields), or raw bytes."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=200))
    fields = draw(
        st.dictionaries(
            st.sampled_from(
                ["text", "answer", "action", "name", "uid", "agent", "reason", "state", "options"]
            ),
            st.one_of(
                st.text(max_size=20),
                st.integers(),
                st.booleans(),
                st.none(),
                st.just("beta"),
                st.lists(st.text(max_size=5), max_size=3),
            ),
            max_size=4,
        )
    )
    import json

    return json.dumps(fields).encode()


@st.composite
def agent_requests(draw: st.DrawFn) -> bytes:
    """One complete raw HTTP/1.1 request as an agent might send it."""
    method = draw(
        st.one_of(st.sampled_from(METHODS), st.from_regex(r"[A-Z]{1,10}", fullmatch=True))
    )
    path = draw(raw_paths())
    headers = draw(
        st.dictionaries(
            st.sampled_from(sorted(HEADERS)),
            st.sampled_from([v for vs in HEADERS.values() for v in vs]),
            max_size=4,
        )
    )
    body = draw(bodies()) if draw(st.booleans()) else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: agent", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _send(path: str, request: bytes) -> tuple[int, bytes]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    assert match is not None, data[:200]
    return int(match.group(1)), data


_AGENT_ROUTE = re.compile(
    "|".join(
        "^" + re.sub(r"\{\w+:\.\+\}", ".+", re.sub(r"\{\w+\}", "[^/]+", r.path)) + r"(\?.*)?$"
        for r in agent_api.ROUTES
    )
)


@given(request=agent_requests())
def test_whatever_an_agent_sends_no_operator_handler_runs_and_beta_is_untouched(
    harness: Harness, request: bytes
) -> None:
    before = _beta_view(harness)
    status, response = _send(harness.alpha_sock, request)
    assert status < 500, response[:300]
    assert not (set(harness.calls) & OPERATOR_ACTIONS), harness.calls
    assert _beta_view(harness) == before
    assert SECRET_Q.encode() not in response
    assert SECRET_F not in response
    target = request.split(b" ", 2)[1].decode("latin-1")
    if status < 400:
        # Only the agent surface's own routes can succeed, as themselves.
        assert _AGENT_ROUTE.match(target), target


def test_the_harness_would_see_an_operator_call(harness: Harness) -> None:
    """Negative control: the counter really counts operator handlers."""

    async def call() -> None:
        async with harness.core.operator() as op:
            assert (await op.get("/api/agents")).status == 200

    asyncio.run_coroutine_threadsafe(call(), harness.loop).result(10)
    assert harness.calls["agent.list"] == 1
    harness.calls.clear()
