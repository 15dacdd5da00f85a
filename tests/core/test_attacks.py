"""Attacks on the real core through an agent's own socket (raw bytes, real files, real fds).

Each test is one attack an agent could try; it passes when the boundary holds:
no operator handler runs, no other agent's rows or files are touched, nothing
blocks, and one agent cannot take the core away from the operator.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from enforcer.config import default_policy_dir
from enforcer.log import configure_logging
from enforcer.policy import AuthorityClass, PolicyEngine
from enforcer.transport import MAX_AGENT_CONNECTIONS
from tests.core.conftest import Core, make_config, start_core

_policy = PolicyEngine(default_policy_dir()).current
assert _policy is not None
OPERATOR_ACTIONS = frozenset(
    name for name, spec in _policy.catalogue.items() if spec.authority == AuthorityClass.OPERATOR
)


def _counting(calls: collections.Counter[str]) -> Any:
    def wrap(action: str, handler: Handler) -> Handler:
        async def counted(request: web.Request) -> web.StreamResponse:
            calls[action] += 1
            return await handler(request)

        return counted

    return wrap


@pytest.fixture
async def counted(
    hive_dirs: tuple[Path, Path],
) -> AsyncIterator[tuple[Core, collections.Counter[str]]]:
    """A core whose handlers count their calls; alpha and beta; beta has a question and a file."""
    calls: collections.Counter[str] = collections.Counter()
    core = await start_core(make_config(*hive_dirs), instrument=_counting(calls))
    try:
        await core.register("alpha")
        await core.register("beta")
        async with core.agent("beta") as beta:
            assert (await beta.post("/v1/questions", json={"text": "beta's"})).status == 201
            assert (await beta.post("/v1/approvals", json={"action": "x"})).status == 201
            assert (await beta.put("/v1/state/secret", data=b"BETA")).status == 200
        calls.clear()
        yield core, calls
    finally:
        await core.runner.cleanup()


def _raw(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is on the unix socket ``path``; everything until close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _statuses(raw: bytes) -> list[int]:
    return [
        int(line.split(b" ")[1])
        for line in raw.split(b"\r\n")
        if line.startswith(b"HTTP/1.") and len(line.split(b" ")) > 1
    ]


_H = b"Host: core\r\n"
# Each is one connection's worth of bytes; several requests ride in one write.
RAW_ATTACKS: dict[str, bytes] = {
    "pipelined operator routes behind a good request": (
        b"GET /v1/whoami HTTP/1.1\r\n" + _H + b"\r\n"
        b"GET /api/agents HTTP/1.1\r\n" + _H + b"X-Hive-Principal: operator\r\n\r\n"
        b"POST /api/questions/1/answer HTTP/1.1\r\n" + _H + b"Content-Type: application/json\r\n"
        b"Content-Length: 14\r\nConnection: close\r\n\r\n"
        b'{"answer":"x"}'
    ),
    "smuggling: Transfer-Encoding with Content-Length": (
        b"POST /v1/messages HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n"
        b"POST /api/questions/1/answer HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n"
    ),
    "smuggling: chunk body that is a request": (
        b"POST /v1/messages HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"30\r\nPOST /api/agents/beta/destroy HTTP/1.1\r\nHost: c\r\n\r\n\r\n0\r\n\r\n"
        b"GET /api/agents HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n"
    ),
    "marker in a chunked trailer": (
        b"POST /v1/messages HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b'e\r\n{"text":"hi!"}\r\n0\r\nX-Hive-Principal: operator\r\n\r\n'
    ),
    "absolute-form target naming the operator API": (
        b"GET http://core/api/agents HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n"
    ),
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n",
    "CONNECT": b"CONNECT core:80 HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n",
    "HTTP/1.0 without Host": b"GET /api/questions HTTP/1.0\r\n\r\n",
    "header folding": (
        b"GET /v1/whoami HTTP/1.1\r\n" + _H + b"X-Hive-Principal: agent\r\n operator\r\n"
        b"Connection: close\r\n\r\n"
    ),
    "duplicate Host": (
        b"GET /api/agents HTTP/1.1\r\nHost: core\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    ),
    "method override headers": (
        b"GET /v1/questions/1 HTTP/1.1\r\n" + _H + b"X-HTTP-Method-Override: POST\r\n"
        b"X-Method-Override: DELETE\r\nConnection: close\r\n\r\n"
    ),
    "_method override in the query": (
        b"GET /api/questions/1/answer?_method=POST HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n"
    ),
    "thousands of headers": (
        b"GET /v1/whoami HTTP/1.1\r\n"
        + _H
        + b"".join(b"X-Hive-Principal-%d: operator\r\n" % i for i in range(5000))
        + b"Connection: close\r\n\r\n"
    ),
    "bare LF line endings": b"GET /api/agents HTTP/1.1\nHost: core\nConnection: close\n\n",
}


@pytest.mark.parametrize(
    "request_line",
    [b"OPTIONS * HTTP/1.1", b"CONNECT core:80 HTTP/1.1", b"CONNECT 127.0.0.1:22 HTTP/1.1"],
    ids=["asterisk-form", "authority-form", "authority-form-ssh"],
)
async def test_a_target_that_is_not_a_path_gets_a_logged_refusal_on_an_agent_socket(
    counted: tuple[Core, collections.Counter[str]], request_line: bytes, tmp_path: Path
) -> None:
    # A known gap until now: no route matches such a target (not even the
    # enforcer's catch-all, whose pattern starts with "/"), so aiohttp
    # answered its plain 404 and no line recorded it.
    core, calls = counted
    log = tmp_path / "core.log"
    with log.open("w") as stream:
        configure_logging(stream)
        try:
            out = await asyncio.to_thread(
                _raw,
                str(core.config.agent_socket("alpha")),
                request_line + b"\r\n" + _H + b"Connection: close\r\n\r\n",
            )
        finally:
            configure_logging(io.StringIO())
    head, _, body = out.partition(b"\r\n\r\n")
    assert _statuses(head) == [400], out[:300]
    answer = json.loads(body)
    assert answer["reason"] == "the request target must be a path"
    request_id = answer["request_id"]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    refused = [e for e in events if e["event"] == "request.refused"]
    assert [(e["request_id"], e["status"], e["channel"]) for e in refused] == [
        (request_id, 400, "socket")
    ]
    assert not calls  # no handler ran


@pytest.mark.parametrize("attack", sorted(RAW_ATTACKS))
async def test_raw_bytes_on_an_agent_socket_never_reach_an_operator_handler(
    counted: tuple[Core, collections.Counter[str]], attack: str
) -> None:
    core, calls = counted
    before = core.state.db.snapshot()
    beta_state = core.config.agent_dir("beta") / "state" / "secret"
    out = await asyncio.to_thread(_raw, str(core.config.agent_socket("alpha")), RAW_ATTACKS[attack])
    assert not OPERATOR_ACTIONS & set(calls), (attack, calls)
    assert all(s < 500 for s in _statuses(out)), out[:400]
    assert b"BETA" not in out
    assert b"beta's" not in out
    after = core.state.db.snapshot()
    # Only alpha's own rows may have been added (a message from the trailer case).
    for table in ("questions", "approvals"):
        assert after[table] == before[table]
    assert [r for r in after["agents"] if r[0] == "beta"] == [
        r for r in before["agents"] if r[0] == "beta"
    ]
    assert beta_state.read_bytes() == b"BETA"


async def test_long_polls_on_another_agents_ids_end_at_once_with_404(
    counted: tuple[Core, collections.Counter[str]],
) -> None:
    core, _ = counted
    async with core.agent("alpha") as alpha:
        started = time.monotonic()
        for path in ("/v1/questions/1?wait=30", "/v1/approvals/1?wait=30"):
            resp = await alpha.get(path)
            assert resp.status == 404
            assert "beta" not in await resp.text()
        # Nothing waited: a foreign id is "not found", not "not answered yet".
        assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"text": "a", "options": [' + b"9" * 5000 + b"]}",
        b'{"text": "a", "text": {"x": 1}}',
        b'{"text": NaN}',
        b'{"text": "\\ud800"}',
    ],
    ids=["deep-array", "deep-field", "huge-int", "duplicate-key", "nan", "lone-surrogate"],
)
async def test_json_bombs_are_a_clean_400(
    counted: tuple[Core, collections.Counter[str]], body: bytes
) -> None:
    core, _ = counted
    async with core.agent("alpha") as alpha:
        resp = await alpha.post(
            "/v1/questions", data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status in {400, 413}, await resp.text()
        assert (await resp.json())["reason"]


async def test_a_fifo_planted_in_own_state_does_not_hang_the_core(
    counted: tuple[Core, collections.Counter[str]],
) -> None:
    core, _ = counted
    state = core.config.agent_dir("alpha") / "state"
    os.mkfifo(state / "pipe")
    async with core.agent("alpha") as alpha:
        resp = await asyncio.wait_for(alpha.get("/v1/state/pipe"), 5)
        assert resp.status == 403
        resp = await asyncio.wait_for(alpha.put("/v1/state/pipe", data=b"x"), 5)
        assert resp.status == 403
        listing = await (await asyncio.wait_for(alpha.get("/v1/state"), 5)).json()
        assert all(f["path"] != "pipe" for f in listing["files"])
    # Still serving everyone.
    async with core.agent("beta") as beta:
        assert (await beta.get("/v1/whoami")).status == 200


async def test_a_hardlink_in_own_state_to_a_file_outside_is_not_read(
    counted: tuple[Core, collections.Counter[str]], tmp_path: Path
) -> None:
    """A hard link is a regular file beneath state/, but its bytes live outside.

    (With ``fs.protected_hardlinks=1`` an agent can only link files it owns or
    may read and write; on a host without it, or for a file planted by anyone
    else, the confined read must still not hand out the outside file.)
    """
    core, _ = counted
    secret = core.config.state_dir / "outside-secret"
    secret.write_bytes(b"CORE-ONLY SECRET")
    os.link(secret, core.config.agent_dir("alpha") / "state" / "looks-local")
    async with core.agent("alpha") as alpha:
        resp = await alpha.get("/v1/state/looks-local")
        assert resp.status == 403, await resp.text()
        assert b"CORE-ONLY" not in await resp.read()
        # Writing through it replaces the link (rename), never the outside file.
        assert (await alpha.put("/v1/state/looks-local", data=b"mine")).status == 200
    assert secret.read_bytes() == b"CORE-ONLY SECRET"
    async with core.operator() as op:
        resp = await op.get("/api/agents/alpha/state/looks-local")
        assert resp.status == 200
        assert await resp.read() == b"mine"


async def test_state_names_with_newlines_and_odd_bytes_stay_in_own_state(
    counted: tuple[Core, collections.Counter[str]],
) -> None:
    core, _ = counted
    state = core.config.agent_dir("alpha") / "state"
    before = sorted(p.name for p in core.config.agent_dir("alpha").iterdir())
    async with core.agent("alpha") as alpha:
        for raw in (
            "a%0Ab",
            "a%0D%0AX-Hive-Principal:%20operator",
            "%E2%80%AE",
            "x%3B..",
            "%C0%AE%C0%AE",
        ):
            path = f"/v1/state/{raw}"
            resp = await alpha.put(path, data=b"v")
            assert resp.status in {200, 400, 404}, (raw, await resp.text())
    assert sorted(p.name for p in core.config.agent_dir("alpha").iterdir()) == before
    for p in state.rglob("*"):
        assert p.resolve().is_relative_to(state.resolve())


# --- one agent must not take the core away from everyone else ----------------------


@pytest.fixture
def small_core() -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    """``hive-boundary core`` as a subprocess with only 256 file descriptors."""
    base = Path(tempfile.mkdtemp(prefix="hba-", dir="/tmp"))
    config = make_config(base / "run", base / "state")
    config_file = base / "hive.toml"
    config_file.write_text(
        f'run_dir = "{config.run_dir}"\nstate_dir = "{config.state_dir}"\n'
        f"[core]\ngateway_uid = {os.getuid()}\n"
    )

    def few_fds() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.Popen(
        [sys.executable, "-m", "enforcer.core", "--config", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=few_fds,
    )
    try:
        deadline = time.monotonic() + 20
        while not config.core_socket.exists():
            assert proc.poll() is None, "the core exited at start-up"
            assert time.monotonic() < deadline, "the core did not start"
            time.sleep(0.05)
        body = json.dumps({"name": "alpha", "uid": os.getuid()}).encode()
        reply = _raw(
            str(config.core_socket),
            b"POST /api/agents HTTP/1.1\r\nHost: c\r\nX-Hive-Principal: operator\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body,
        )
        assert _statuses(reply) == [201], reply
        yield config.core_socket, config.agent_socket("alpha"), proc
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_one_agent_holding_idle_connections_cannot_lock_the_operator_out(
    small_core: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    core_sock, agent_sock, proc = small_core
    held: list[socket.socket] = []
    try:
        # Slowloris: connect and never finish a request, far more times than the
        # core has file descriptors.
        for _ in range(400):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            try:
                sock.connect(str(agent_sock))
                sock.sendall(b"GET /v1/whoami HTTP/1.1\r\nHo")
            except OSError:
                sock.close()
                time.sleep(0.01)
                continue
            held.append(sock)
        time.sleep(0.5)
        # The operator (through core.sock) is still served.
        reply = _raw(
            str(core_sock), b"GET /api/health HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
        )
        assert _statuses(reply) == [200], reply
        # And the core holds at most the agent's cap of its connections open
        # (the rest were closed on accept); a few fds are the core's own.
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{proc.pid}/fd")) > MAX_AGENT_CONNECTIONS + 32:
            assert time.monotonic() < deadline, "the core keeps every connection open"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
    # The agent itself is served again once it lets go (its backlog drains first).
    whoami = b"GET /v1/whoami HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    deadline = time.monotonic() + 5
    while True:
        try:
            reply = _raw(str(agent_sock), whoami)
        except BlockingIOError:
            assert time.monotonic() < deadline, "the agent's socket never drained"
            time.sleep(0.1)
            continue
        if _statuses(reply) == [200]:
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)


AIOHTTP_REFUSES = {
    "a target its parser refuses": b"GET /v1/questions/\xd9\xa3 HTTP/1.1\r\nHost: a\r\n\r\n",
    "an impossible length": (
        b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"
    ),
    "an HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "an unknown expectation": b"GET /v1/whoami HTTP/1.1\r\nHost: a\r\nExpect: weird\r\n\r\n",
}


@pytest.mark.parametrize("attack", sorted(AIOHTTP_REFUSES))
async def test_what_aiohttp_refuses_on_an_agent_socket_is_a_logged_json_refusal(
    counted: tuple[Core, collections.Counter[str]],
    attack: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Found by an attack review: aiohttp answered these itself before any
    # route - plain text naming aiohttp, the request echoed - and logged a
    # traceback per request (an agent could fill the core's log with them).
    core, calls = counted
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_unix_connection(str(core.config.agent_socket("alpha")))
    try:
        writer.write(AIOHTTP_REFUSES[attack])
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] in {b"400", b"413", b"417"}, head
    assert b"application/json" in head
    assert json.loads(body)["request_id"]
    assert AIOHTTP_REFUSES[attack].split(b"\r\n")[0] not in body  # nothing echoed
    assert not [r for r in caplog.records if r.exc_info], caplog.text[-1500:]
    assert not calls  # no handler ran
