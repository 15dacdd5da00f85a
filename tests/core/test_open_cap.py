"""One agent cannot bury the others' requests: open items are capped per agent.

Found by an attack review: the operator's lists showed the newest 500 open
questions and pending approvals of all agents together, so one agent making
500 of each (about a second over its socket) pushed every other agent's out
of the lists, the API and the counts. Now each agent may have at most
``OPEN_PER_AGENT`` open questions and pending approvals (429 past it), every
open item is listed, and the totals are counted, not taken from a window.
"""

from __future__ import annotations

from enforcer.store import OPEN_PER_AGENT
from tests.core.conftest import Core


async def _flood(core: Core, path: str, body: dict[str, object]) -> list[int]:
    statuses = []
    async with core.agent("alpha") as alpha:
        for _ in range(OPEN_PER_AGENT + 20):
            async with alpha.post(path, json=body) as resp:
                statuses.append(resp.status)
    return statuses


async def test_an_agent_past_its_cap_is_refused_and_the_others_stay_listed(core: Core) -> None:
    async with core.agent("beta") as beta:
        async with beta.post("/v1/questions", json={"text": "beta asks"}) as resp:
            assert resp.status == 201
            beta_question = (await resp.json())["id"]
        async with beta.post("/v1/approvals", json={"action": "net.egress"}) as resp:
            assert resp.status == 201
            beta_approval = (await resp.json())["id"]
    asked = await _flood(core, "/v1/questions", {"text": "flood"})
    requested = await _flood(core, "/v1/approvals", {"action": "flood"})
    for statuses in (asked, requested):
        assert statuses.count(201) == OPEN_PER_AGENT
        assert statuses.count(429) == 20
    async with core.operator() as op:
        async with op.get("/api/questions?status=open") as resp:
            questions = (await resp.json())["questions"]
        async with op.get("/api/approvals?status=pending") as resp:
            approvals = (await resp.json())["approvals"]
    assert beta_question in {q["id"] for q in questions}
    assert beta_approval in {a["id"] for a in approvals}
    assert len(questions) == len(approvals) == OPEN_PER_AGENT + 1
    assert core.state.db.open_totals() == (OPEN_PER_AGENT + 1, OPEN_PER_AGENT + 1)


async def test_answering_frees_room_under_the_cap(core: Core) -> None:
    await _flood(core, "/v1/questions", {"text": "flood"})
    async with core.operator() as op:
        async with op.get("/api/questions?status=open&agent=alpha") as resp:
            first = (await resp.json())["questions"][-1]["id"]
        async with op.post(f"/api/questions/{first}/answer", json={"answer": "ok"}) as resp:
            assert resp.status == 200
    async with (
        core.agent("alpha") as alpha,
        alpha.post("/v1/questions", json={"text": "again"}) as resp,
    ):
        assert resp.status == 201
