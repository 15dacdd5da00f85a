"""Identity = socket: the principal comes from the accepting socket and SO_PEERCRED only."""

from __future__ import annotations

import os
import socket
import stat

import aiohttp
import pytest

from tests.conftest import require_root
from tests.core.conftest import Core, User, let_others_traverse, run_as

SPOOFED = {
    "X-Hive-Principal": "operator",
    "X-Hive-Agent": "beta",
    "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-User": "operator",
    "Forwarded": "for=127.0.0.1;by=gateway",
    "X-Real-IP": "127.0.0.1",
}


async def test_each_socket_speaks_for_its_own_agent(core: Core) -> None:
    for name in ("alpha", "beta"):
        async with core.agent(name) as agent:
            resp = await agent.get("/v1/whoami")
            assert resp.status == 200
            assert (await resp.json())["principal"] == f"agent:{name}"


async def test_spoofed_identity_headers_change_nothing(core: Core) -> None:
    async with core.agent("alpha") as agent:
        resp = await agent.get("/v1/whoami", headers=SPOOFED)
        assert (await resp.json())["agent"] == "alpha"
        # The operator marker on an agent socket does not open operator routes.
        resp = await agent.get("/api/agents", headers=SPOOFED)
        assert resp.status == 404
        resp = await agent.post("/api/questions/1/answer", json={"answer": "x"}, headers=SPOOFED)
        assert resp.status == 404


async def test_core_sock_operator_needs_the_marker_and_nothing_else_counts(core: Core) -> None:
    async with core.operator(headers={}) as anon:
        resp = await anon.get("/api/agents")
        assert resp.status == 403
        body = await resp.json()
        assert body["error"] == "forbidden"
        spoofed = {k: v for k, v in SPOOFED.items() if k != "X-Hive-Principal"}
        resp = await anon.get("/api/agents", headers=spoofed)
        assert resp.status == 403
        resp = await anon.get("/api/health")
        assert resp.status == 200
    async with core.operator() as op:
        resp = await op.get("/api/agents")
        assert resp.status == 200
        names = [a["name"] for a in (await resp.json())["agents"]]
        assert names == ["alpha", "beta"]
    # A doubled marker is not "the" marker.
    async with core.operator(headers={}) as anon:
        resp = await anon.get(
            "/api/agents",
            headers=[("X-Hive-Principal", "operator"), ("X-Hive-Principal", "operator")],
        )
        assert resp.status == 403


async def test_agents_are_added_and_removed_without_restart(core: Core) -> None:
    await core.register("gamma")
    path = core.config.agent_socket("gamma")
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    async with core.agent("gamma") as agent:
        assert (await (await agent.get("/v1/whoami")).json())["agent"] == "gamma"
        async with core.operator() as op:
            resp = await op.post("/api/agents/gamma/destroy")
            assert resp.status == 200
        assert not path.exists()
        # A connection that was already open is cut: it speaks for nobody any more.
        with pytest.raises(aiohttp.ClientError):
            await agent.get("/v1/whoami")
    s = socket.socket(socket.AF_UNIX)
    with pytest.raises(FileNotFoundError):
        s.connect(str(path))
    s.close()


async def test_core_sock_refuses_a_peer_that_is_not_the_gateway(
    core: Core, make_user: type[User]
) -> None:
    require_root()
    user = make_user()  # type: ignore[call-arg]
    let_others_traverse(core.config)
    os.chmod(core.config.core_socket, 0o666)  # loosened on purpose: the core must refuse
    path = str(core.config.core_socket)

    def probe() -> int:
        return 0 if _raw_status(path, "/api/health", {"X-Hive-Principal": "operator"}) == 403 else 1

    assert await run_as(user.uid, user.gid, probe) == 0


def _raw_status(path: str, target: str, headers: dict[str, str]) -> int:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    lines = [f"GET {target} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


async def test_peer_uid_must_be_the_agents_configured_uid(
    core: Core, make_user: type[User]
) -> None:
    require_root()
    user = make_user()  # type: ignore[call-arg]
    let_others_traverse(core.config)
    await core.register("delta", uid=user.uid)
    path = core.config.agent_socket("delta")
    assert path.lstat().st_uid == user.uid
    # Root can connect (the kernel lets it) but root is not delta's uid: refused by the core.
    async with core.agent("delta") as agent:
        resp = await agent.get("/v1/whoami")
        assert resp.status == 403
        assert "uid" in (await resp.json())["reason"]

    def as_delta() -> int:
        return 0 if _raw_status(str(path), "/v1/whoami", {}) == 200 else 1

    assert await run_as(user.uid, user.gid, as_delta) == 0


async def test_agent_a_cannot_use_agent_bs_socket(core: Core, make_user: type[User]) -> None:
    require_root()
    a, b = make_user(), make_user()  # type: ignore[call-arg]
    let_others_traverse(core.config)
    await core.register("aa", uid=a.uid)
    await core.register("bb", uid=b.uid)
    b_path = str(core.config.agent_socket("bb"))

    def connect_as_a() -> int:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(b_path)
        except PermissionError:
            return 0  # the kernel refused: mode 0600, owned by b
        finally:
            s.close()
        return 1

    assert await run_as(a.uid, a.gid, connect_as_a) == 0

    os.chmod(b_path, 0o666)  # loosened on purpose: the core must still refuse

    def request_as_a() -> int:
        return 0 if _raw_status(b_path, "/v1/whoami", {}) == 403 else 1

    assert await run_as(a.uid, a.gid, request_as_a) == 0
    snapshot = core.state.db.snapshot()

    def write_as_a() -> int:
        s = socket.socket(socket.AF_UNIX)
        s.connect(b_path)
        body = b'{"text": "from a"}'
        s.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        data = s.recv(65536)
        s.close()
        return 0 if data.split(b" ", 2)[1] == b"403" else 1

    assert await run_as(a.uid, a.gid, write_as_a) == 0
    assert core.state.db.snapshot() == snapshot
