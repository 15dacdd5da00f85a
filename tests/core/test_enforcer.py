"""The core's enforcer: a cached verdict never outlives its policy version, and
every request - cached or not - is decided and logged."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from enforcer import authz
from enforcer.config import default_policy_dir
from tests.core.conftest import make_config, start_core

WHOAMI_LINE = "p, role:agent, socket, agent:{self}, agent.whoami\n"
WHOAMI_ALLOW_CASE = (
    'principal = "agent:alpha"\nchannel = "socket"\nresource = "agent:alpha"\n'
    'action = "agent.whoami"\nexpect = "allow"\n'
)


def _policies(tmp: Path) -> Path:
    directory = tmp / "policies"
    shutil.copytree(default_policy_dir(), directory)
    return directory


def _revoke_whoami(directory: Path) -> None:
    csv = directory / "policy.csv"
    text = csv.read_text()
    assert WHOAMI_LINE in text
    csv.write_text(text.replace(WHOAMI_LINE, ""))
    cases = directory / "tests.toml"
    text = cases.read_text()
    assert WHOAMI_ALLOW_CASE in text
    cases.write_text(text.replace(WHOAMI_ALLOW_CASE, WHOAMI_ALLOW_CASE.replace("allow", "deny")))


async def test_a_reload_takes_effect_on_the_very_next_request(
    hive_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    policies = _policies(tmp_path)
    config = dataclasses.replace(make_config(*hive_dirs), policy_dir=policies)
    core = await start_core(config)
    try:
        await core.register("alpha")
        async with core.agent("alpha") as agent:
            for _ in range(3):  # the verdict is cached now
                assert (await agent.get("/v1/whoami")).status == 200
            _revoke_whoami(policies)
            result = core.state.engine.reload()
            assert result.ok, result
            assert result.changed
            resp = await agent.get("/v1/whoami")
            assert resp.status == 403
            assert (await resp.json())["error"] == "forbidden"
        ring = core.state.decisions
        assert [e["decision"] for e in ring if e["action"] == "agent.whoami"] == [
            "allow",
            "allow",
            "allow",
            "deny",
        ]
        assert ring[-1]["revision"] == result.revision
        assert ring[-1]["rule"] is None
        # One decision per request, each with its own request id.
        ids = [e["request_id"] for e in ring]
        assert len(ids) == len(set(ids))
    finally:
        await core.runner.cleanup()


async def test_removing_an_agent_refuses_its_open_connections(
    hive_dirs: tuple[Path, Path],
) -> None:
    core = await start_core(make_config(*hive_dirs))
    try:
        await core.register("alpha")
        binding = core.state.registry.agent("alpha")
        assert binding is not None
        async with core.agent("alpha") as agent:
            # Admitted once on this keep-alive connection...
            assert (await agent.get("/v1/whoami")).status == 200
            # ...and refused on the same connection once its registration is
            # gone (the per-request check of an admitted connection).
            key = next(k for k, b in core.state.registry.paths().items() if b is binding)
            core.state.registry.remove(key)
            resp = await agent.get("/v1/whoami")
            assert resp.status == 403
            assert "no registered agent" in (await resp.json())["reason"]
            # Removing the agent's site also cuts the connection itself.
            core.state.registry.add(key, "alpha", binding.uid)
            await core.state.agent_sites.remove("alpha")
            with pytest.raises(aiohttp.ClientError):
                await agent.get("/v1/whoami")
    finally:
        await core.runner.cleanup()


def test_forked_workers_hand_out_distinct_request_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        try:
            os.write(write, " ".join(authz.new_request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {authz.new_request_id() for _ in range(3)}
    assert len(child) == 3
    assert child.isdisjoint(parent)
    assert {i[:8] for i in child}.isdisjoint({i[:8] for i in parent})


def test_request_ids_are_16_hex_digits_and_never_repeat() -> None:
    # Only the last two digits are looked up per id; the rest changes every 256th.
    ids = [authz.new_request_id() for _ in range(5 * 256 + 3)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    counters = [int(i[8:], 16) for i in ids]
    assert counters == list(range(counters[0], counters[0] + len(ids)))


async def test_whoami_answers_for_the_binding_the_request_was_admitted_under(
    hive_dirs: tuple[Path, Path],
) -> None:
    core = await start_core(make_config(*hive_dirs))
    try:
        await core.register("alpha")
        me = {"agent": "alpha", "principal": "agent:alpha", "uid": os.getuid()}
        async with core.agent("alpha") as agent:
            assert await (await agent.get("/v1/whoami")).json() == me
        sites = core.state.agent_sites
        # Re-registered under another uid: its answer (cached per binding) is not served...
        await sites.remove("alpha")
        await sites.add("alpha", os.getuid() + 1)
        async with core.agent("alpha") as agent:
            assert (await agent.get("/v1/whoami")).status == 403
        # ...and back under ours, a new binding answers again.
        await sites.remove("alpha")
        await sites.add("alpha", os.getuid())
        async with core.agent("alpha") as agent:
            assert await (await agent.get("/v1/whoami")).json() == me
    finally:
        await core.runner.cleanup()
