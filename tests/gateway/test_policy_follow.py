"""The gateway decides with the core's live policy: a reload through the gateway reaches both.

A real core (``core.sock``) and a real gateway (its own :class:`PolicyEngine`,
in its own cleanup context) share a copy of the shipped policy. The operator
edits the copy and reloads it through the gateway: the core takes it at once,
the gateway within its follow period. Files edited after the core's reload,
or a reload the core refuses, change nothing at the gateway.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from enforcer.config import GatewayConfig, HiveConfig
from enforcer.gateway import create_app, make_runner
from enforcer.policy.follow import FOLLOW_SECONDS
from enforcer.sessions import CSRF_COOKIE
from tests.core.conftest import make_config, start_core
from tests.policy.test_follow import copy_policy, deny_anonymous_health


class _Pair:
    def __init__(self, config: HiveConfig, client: aiohttp.ClientSession, csrf: str) -> None:
        self.config = config
        self.client = client
        self.csrf = csrf

    def url(self, path: str) -> str:
        assert self.config.gateway.host == "127.0.0.1"
        return f"{self.config.gateway.origin}{path}"

    async def reload(self) -> tuple[int, dict[str, object]]:
        async with self.client.post(
            self.url("/api/policy/reload"),
            headers={"Origin": self.config.gateway.origin, "X-CSRF-Token": self.csrf},
        ) as resp:
            return resp.status, await resp.json()

    async def health(self) -> int:
        """Anonymous ``GET /health``: 200 while allowed; refused, a 303 to the login page."""
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.get(self.url("/health"), allow_redirects=False) as r,
        ):
            return r.status

    async def health_becomes(self, status: int) -> float:
        """Seconds until anonymous ``GET /health`` answers ``status`` (fails after 3 periods)."""
        start = time.monotonic()
        while time.monotonic() - start < 3 * FOLLOW_SECONDS + 2:
            if await self.health() == status:
                return time.monotonic() - start
            await asyncio.sleep(0.05)
        raise AssertionError(f"/health never answered {status}")


@pytest.fixture
async def pair(hive_dirs: tuple[Path, Path]) -> AsyncIterator[_Pair]:
    run_dir, state_dir = hive_dirs
    policy_dir = copy_policy(run_dir.parent / "policies")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = replace(
        make_config(run_dir, state_dir),
        policy_dir=policy_dir,
        gateway=replace(GatewayConfig(), host="127.0.0.1", port=port),
    )
    core = await start_core(config)
    runner = make_runner(create_app(config), shutdown_timeout=0.2)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            token = config.operator_token_file.read_text().strip()
            async with client.post(
                f"{config.gateway.origin}/login",
                data={"token": token},
                headers={"Origin": config.gateway.origin},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
            csrf = next(c.value for c in jar if c.key == CSRF_COOKIE)
            yield _Pair(config, client, csrf)
    finally:
        await runner.cleanup()
        await core.runner.cleanup()


async def test_a_reload_through_the_gateway_reaches_the_gateways_own_decisions(
    pair: _Pair,
) -> None:
    assert await pair.health() == 200
    deny_anonymous_health(pair.config.policy_dir)
    await asyncio.sleep(FOLLOW_SECONDS + 0.5)
    assert await pair.health() == 200, "edited files alone change nothing until a reload"
    status, body = await pair.reload()
    assert (status, body["ok"]) == (200, True)
    assert await pair.health_becomes(303) < 2 * FOLLOW_SECONDS + 1


async def test_files_edited_after_the_reload_and_refused_reloads_change_nothing(
    pair: _Pair,
) -> None:
    policy_dir = pair.config.policy_dir
    deny_anonymous_health(policy_dir)
    assert (await pair.reload())[0] == 200
    await pair.health_becomes(303)
    # The grant comes back in the files, but the core has not reloaded them.
    csv = policy_dir / "policy.csv"
    csv.write_text(csv.read_text() + "p, anonymous, gateway, health, health.read\n")
    await asyncio.sleep(2 * FOLLOW_SECONDS + 0.5)
    assert await pair.health() == 303
    # A reload the core refuses (the cases still expect a deny): nothing moves.
    status, body = await pair.reload()
    assert (status, body["ok"]) == (409, False)
    await asyncio.sleep(2 * FOLLOW_SECONDS + 0.5)
    assert await pair.health() == 303
