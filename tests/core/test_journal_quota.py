"""One agent cannot grow the core's store, nor the audit view, at the others' expense.

Found by an attack review: an agent's messages and status updates (journal
rows) were kept forever, so one agent could grow ``hive.db`` until its disk
was full; and the audit view kept the newest 1000 decisions of everyone
together, so one agent's flood of requests pushed every other principal's
decisions out of ``/api/audit/decisions``. Now each agent keeps its newest
``max_journal_rows_per_agent`` messages and journal lines (the oldest pruned in
the write's own transaction; the write is still accepted), and the decision
ring keeps each principal's newest decisions apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.core.conftest import Core, make_config, running_core, start_core

BOUND = 100


@pytest.fixture
async def bounded_core(hive_dirs: tuple[Path, Path]) -> AsyncIterator[Core]:
    config = make_config(*hive_dirs, max_journal_rows_per_agent=BOUND)
    async with running_core(config) as core:
        yield core


async def _send(core: Core, agent: str, texts: list[str]) -> list[int]:
    statuses = []
    async with core.agent(agent) as client:
        for text in texts:
            async with client.post("/v1/messages", json={"text": text}) as resp:
                statuses.append(resp.status)
    return statuses


async def _detail(core: Core, agent: str) -> dict[str, object]:
    async with core.operator() as op, op.get(f"/api/agents/{agent}") as resp:
        assert resp.status == 200
        detail: dict[str, object] = await resp.json()
        return detail


def _db_bytes(core: Core) -> int:
    db = core.config.database
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def test_an_agent_past_its_bound_keeps_its_newest_rows_and_the_others_keep_theirs(
    bounded_core: Core,
) -> None:
    core = bounded_core
    async with core.agent("beta") as beta:
        async with beta.post("/v1/questions", json={"text": "beta asks"}) as resp:
            assert resp.status == 201
            beta_question = (await resp.json())["id"]
        async with beta.post("/v1/status", json={"state": "working"}) as resp:
            assert resp.status == 200
    assert await _send(core, "beta", ["beta says"]) == [201]
    beta_before = core.state.db.journal("beta", limit=1000)

    texts = [f"alpha {i}" for i in range(3 * BOUND)]
    assert await _send(core, "alpha", texts) == [201] * len(texts)
    async with core.agent("alpha") as alpha:
        for i in range(2 * BOUND):
            async with alpha.post("/v1/status", json={"state": "busy", "detail": str(i)}) as resp:
                assert resp.status == 200

    kept = core.state.db.messages("alpha", limit=10 * BOUND)
    assert [m.text for m in reversed(kept)] == texts[-BOUND:]
    journal = core.state.db.journal("alpha", limit=10 * BOUND)
    assert len(journal) == BOUND
    assert [e.detail["detail"] for e in journal[:3]] == [str(2 * BOUND - 1 - i) for i in range(3)]
    # The status itself is one value, the last reported.
    assert core.state.db.agent("alpha").status_detail == str(2 * BOUND - 1)

    assert core.state.db.journal("beta", limit=1000) == beta_before
    assert [m.text for m in core.state.db.messages("beta")] == ["beta says"]
    assert core.state.db.question(beta_question).answer is None
    detail = await _detail(core, "beta")
    assert detail["status"] == "working"


async def test_the_byte_bound_prunes_by_size(hive_dirs: tuple[Path, Path]) -> None:
    config = make_config(*hive_dirs, max_journal_bytes_per_agent=20_000)
    async with running_core(config) as core:
        texts = [f"{i:04d}" + "x" * 996 for i in range(60)]  # 1000 bytes each
        assert await _send(core, "alpha", texts) == [201] * 60
        kept = [m.text for m in reversed(core.state.db.messages("alpha", limit=1000))]
        assert kept == texts[-20:]


async def test_hive_db_stops_growing_at_steady_state(bounded_core: Core) -> None:
    core = bounded_core
    # Rows big enough that keeping them all would show: 400 x 2 KB per round.
    texts = [f"{i:04d}" + "y" * 2000 for i in range(400)]
    for _ in range(2):  # past the bound, and the WAL to its working size
        assert await _send(core, "alpha", texts) == [201] * len(texts)
    settled = _db_bytes(core)
    for _ in range(2):
        assert await _send(core, "alpha", texts) == [201] * len(texts)
    # Unbounded, these two rounds would have added 1.6 MB; pruned rows' pages are reused.
    assert _db_bytes(core) <= settled + 64 * 1024, (settled, _db_bytes(core))
    assert len(core.state.db.messages("alpha", limit=1000)) == BOUND


async def test_a_lower_bound_at_the_next_start_prunes_at_the_next_write(
    hive_dirs: tuple[Path, Path],
) -> None:
    async with running_core(make_config(*hive_dirs)) as core:
        assert await _send(core, "alpha", [f"m{i}" for i in range(50)]) == [201] * 50
    core = await start_core(make_config(*hive_dirs, max_journal_rows_per_agent=10))
    try:
        assert await _send(core, "alpha", ["after"]) == [201]
        kept = [m.text for m in reversed(core.state.db.messages("alpha", limit=1000))]
        assert kept == [*(f"m{i}" for i in range(41, 50)), "after"]
        assert len(core.state.db.journal("alpha", limit=1000)) == 10
    finally:
        await core.runner.cleanup()


async def test_one_agents_flood_does_not_evict_another_principals_decisions(
    core: Core,
) -> None:
    async with core.agent("beta") as beta, beta.get("/v1/whoami") as resp:
        assert resp.status == 200
    beta_decisions = [d for d in core.state.decisions if d["principal"] == "agent:beta"]
    assert beta_decisions
    async with core.agent("alpha") as alpha:
        for _ in range(3000):  # three times what the ring kept of everyone together
            async with alpha.get("/v1/whoami") as resp:
                assert resp.status == 200
    async with core.operator() as op:
        async with op.get("/api/audit/decisions?principal=agent:beta") as resp:
            assert resp.status == 200
            beta_seen = (await resp.json())["decisions"]
        async with op.get("/api/audit/decisions?limit=1000&principal=agent:al*") as resp:
            alpha_seen = (await resp.json())["decisions"]
        async with op.get("/api/audit/decisions?limit=5") as resp:
            newest = (await resp.json())["decisions"]
    assert beta_seen == beta_decisions
    # alpha's flood pushed out only alpha's own older decisions: it keeps its newest 1000.
    alpha_ids = [d["request_id"] for d in core.state.decisions if d["principal"] == "agent:alpha"]
    assert len(alpha_ids) == 1000
    assert [d["request_id"] for d in alpha_seen] == alpha_ids
    # Unfiltered, the newest are still the newest of all (the operator's own last), in order.
    assert newest == core.state.decisions[-5:]
    assert [d["principal"] for d in newest] == ["agent:alpha"] * 2 + ["operator"] * 3
