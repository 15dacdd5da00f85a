"""Bad input gets a 4xx with a JSON reason, never a 500, and changes nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import Core

AGENT_CASES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/questions", b"{not json"),
    ("POST", "/v1/questions", b"[1, 2]"),
    ("POST", "/v1/questions", b'{"text": 5}'),
    ("POST", "/v1/questions", b'{"text": "x", "extra": 1}'),
    ("POST", "/v1/questions", b'{"text": ""}'),
    ("POST", "/v1/questions", b'{"text": "x", "options": [1]}'),
    ("POST", "/v1/questions", b'{"text": NaN}'),
    ("POST", "/v1/questions", b"\xff\xfe"),
    ("POST", "/v1/questions", b"[" * 100000),
    ("POST", "/v1/questions", b'{"text": "' + b"a" * (2 << 20) + b'"}'),
    ("POST", "/v1/approvals", b"{}"),
    ("POST", "/v1/messages", b'{"text": "a\\u0000b"}'),
    ("POST", "/v1/status", b'{"state": "NOT A WORD"}'),
    ("GET", "/v1/questions/abc", None),
    ("GET", "/v1/questions/99999999999999999999", None),
    ("GET", "/v1/questions/1?wait=banana", None),
    ("GET", "/v1/questions/1?wait=-1", None),
    ("GET", "/v1/questions/1?wait=1&wait=2", None),
    ("GET", "/v1/questions/424242", None),
    ("GET", "/v1/state/..", None),
    ("GET", "/v1/state/%2e%2e/%2e%2e/hive.db", None),
    ("PUT", "/v1/state/a/../../x", b"x"),
    ("PUT", "/v1/state/a%00b", b"x"),
    ("PUT", "/v1/state//etc/passwd", b"x"),
    ("PUT", "/v1/state/big", b"x" * ((4 << 20) + 1)),
    ("GET", "/v1/state/escape/shadow", None),
    ("PUT", "/v1/state/escape/planted", b"x"),
    ("GET", "/v1/state/link", None),
    ("DELETE", "/v1/whoami", None),
]

OPERATOR_CASES: list[tuple[str, str, Any]] = [
    ("POST", "/api/agents", b'{"name": "Bad Name", "uid": 1}'),
    ("POST", "/api/agents", b'{"name": "ok", "uid": "1"}'),
    ("POST", "/api/agents", b'{"name": "ok", "uid": true}'),
    ("POST", "/api/agents", b'{"name": "ok", "uid": 1, "root": true}'),
    ("POST", "/api/agents", b'{"name": "alpha", "uid": 0}'),
    ("POST", "/api/questions/1/answer", b'{"answer": 1}'),
    ("POST", "/api/questions/x/answer", b'{"answer": "y"}'),
    ("POST", "/api/questions/77/answer", b'{"answer": "y"}'),
    ("POST", "/api/approvals/1/approve", b'{"reason": 3}'),
    ("POST", "/api/approvals/1/deny", b'{"why": "x"}'),
    ("GET", "/api/agents/NOPE", None),
    ("GET", "/api/agents/ghost", None),
    ("GET", "/api/agents/alpha/state/../../hive.db", None),
    ("GET", "/api/agents/alpha/journal?limit=0", None),
    ("GET", "/api/questions?status=weird", None),
    ("POST", "/api/agents/ghost/start", None),
    ("POST", "/api/agents/alpha/start", None),  # no command registered: 409
]


@pytest.fixture
async def seeded(core: Core, tmp_path: Path) -> Core:
    """alpha has a question, an approval, a state file and two escape attempts planted."""
    async with core.agent("alpha") as agent:
        assert (await agent.post("/v1/questions", json={"text": "q?"})).status == 201
        assert (await agent.post("/v1/approvals", json={"action": "a"})).status == 201
        assert (await agent.put("/v1/state/notes.md", data=b"mine")).status == 200
    state = core.config.agent_dir("alpha") / "state"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("secret")
    os.symlink(outside, state / "escape")
    os.symlink(outside / "shadow", state / "link")
    return core


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p)] = p.read_bytes()
    return out


@pytest.mark.parametrize(("method", "path", "body"), AGENT_CASES)
async def test_bad_agent_input_is_refused_and_changes_nothing(
    seeded: Core, tmp_path: Path, method: str, path: str, body: Any
) -> None:
    before_db = seeded.state.db.snapshot()
    before_files = _files(seeded.config.state_dir.parent)
    async with seeded.agent("alpha") as agent:
        resp = await agent.request(method, path, data=body, skip_auto_headers=["Content-Type"])
        assert 400 <= resp.status < 500, await resp.text()
        reply = await resp.json()
        assert reply["reason"]
        assert "Traceback" not in reply["reason"]
    assert seeded.state.db.snapshot() == before_db
    assert _files(seeded.config.state_dir.parent) == before_files
    assert (tmp_path / "outside" / "shadow").read_text() == "secret"
    assert not (tmp_path / "outside" / "planted").exists()


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_CASES)
async def test_bad_operator_input_is_refused_and_changes_nothing(
    seeded: Core, method: str, path: str, body: Any
) -> None:
    before_db = seeded.state.db.snapshot()
    async with seeded.operator() as op:
        resp = await op.request(method, path, data=body)
        assert 400 <= resp.status < 500, await resp.text()
        assert (await resp.json())["reason"]
    assert seeded.state.db.snapshot() == before_db


async def test_answering_twice_is_a_conflict(seeded: Core) -> None:
    async with seeded.operator() as op:
        assert (await op.post("/api/questions/1/answer", json={"answer": "a"})).status == 200
        resp = await op.post("/api/questions/1/answer", json={"answer": "b"})
        assert resp.status == 409
    assert seeded.state.db.question(1).answer == "a"


async def test_an_agent_never_sees_another_agents_question(seeded: Core) -> None:
    async with seeded.agent("beta") as beta:
        resp = await beta.get("/v1/questions/1")
        assert resp.status == 404
        resp = await beta.get("/v1/state/notes.md")
        assert resp.status == 404
