"""The gateway when what is behind it fails.

- The real core killed (SIGKILL) and restarted: the gateway answers 503 (JSON
  for the API) while it is down and serves again as soon as it is back, with
  the same operator session.
- One agent's UI hanging (accepts, never answers) or down: 504 / 502 for that
  agent only; another agent's UI and the core are served meanwhile.
"""

from __future__ import annotations

import asyncio
import socket

from bench.load import Daemons
from tests.gateway.stack import Stack


def test_the_core_down_is_503_and_the_gateway_recovers_when_it_returns() -> None:
    with Daemons() as d:
        d.start_core()
        d.start_gateway()

        async def scenario() -> None:
            op, _ = await d.operator()
            try:
                async with op.get(d.url + "/api/agents") as r:
                    assert r.status == 200
                d.kill_core()
                for _ in range(5):
                    async with op.get(d.url + "/api/agents") as r:
                        assert r.status == 503
                        body = await r.json()
                        assert body["error"] == "unavailable", body
                    async with op.get(d.url + "/health") as r:
                        assert r.status == 200  # the gateway itself is up
                await asyncio.to_thread(d.start_core)
                async with op.get(d.url + "/api/agents") as r:
                    assert r.status == 200, await r.text()  # same session, no restart
            finally:
                await op.close()

        asyncio.run(scenario())


async def test_a_hanging_or_dead_agent_ui_affects_only_that_agent() -> None:
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # accepts (the kernel does), never answers
    try:
        async with Stack() as stack, stack.client() as client:
            stack.agents["hang"] = f"http://127.0.0.1:{hang.getsockname()[1]}"
            await stack.login(client)

            async def get(path: str) -> int:
                async with client.get(stack.url(path)) as r:
                    await r.read()
                    return r.status

            slow = [asyncio.create_task(get("/agent/hang/")) for _ in range(10)]
            slow += [asyncio.create_task(get("/agent/down/")) for _ in range(10)]
            await asyncio.sleep(0.1)
            # While ten requests hang on one agent, the others are served.
            healthy = await asyncio.gather(
                *(get("/agent/alpha/") for _ in range(20)), *(get("/api/agents") for _ in range(5))
            )
            assert set(healthy) == {200}
            assert not all(t.done() for t in slow[:10])  # still hanging meanwhile
            statuses = await asyncio.gather(*slow)
            assert statuses[:10] == [504] * 10
            assert statuses[10:] == [502] * 10
            assert await get("/agent/alpha/") == 200
    finally:
        hang.close()
