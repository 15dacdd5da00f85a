"""One agent's state/ has a quota in bytes and entries: it cannot fill the core's disk.

Found by an attack review: state files were limited one by one, not in number
or total, on the filesystem that also holds ``hive.db``; one agent wrote about
180 MB/s until every write of every agent (and the operator's) failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enforcer.agent_api import state_usage
from tests.core.conftest import Core, make_config, running_core


@pytest.fixture
async def quota_core(hive_dirs: tuple[Path, Path]) -> AsyncIterator[Core]:
    config = make_config(
        *hive_dirs, max_state_bytes_per_agent=10_000, max_state_entries_per_agent=5
    )
    async with running_core(config) as core:
        yield core


async def _put(core: Core, agent: str, path: str, size: int) -> int:
    async with (
        core.agent(agent) as client,
        client.put(f"/v1/state/{path}", data=b"x" * size) as resp,
    ):
        return resp.status


async def test_writes_past_the_byte_quota_are_refused_and_replacing_counts_once(
    quota_core: Core,
) -> None:
    core = quota_core
    assert await _put(core, "alpha", "a", 6000) == 200
    assert await _put(core, "alpha", "b", 3000) == 200
    assert await _put(core, "alpha", "c", 2000) == 413  # 11000 > 10000
    assert await _put(core, "alpha", "a", 7000) == 200  # replaces 6000: 10000 in all
    assert not (core.config.agent_dir("alpha") / "state" / "c").exists()
    assert await _put(core, "beta", "c", 9000) == 200  # another agent's quota is its own


async def test_entries_past_the_quota_are_refused(quota_core: Core) -> None:
    core = quota_core
    for i in range(5):
        assert await _put(core, "alpha", f"f{i}", 1) == 200
    assert await _put(core, "alpha", "f5", 1) == 413
    assert await _put(core, "alpha", "deep/new/file", 1) == 413
    assert await _put(core, "alpha", "f0", 2) == 200  # an existing file may change


async def test_the_atomic_writes_temporary_names_are_reserved(quota_core: Core) -> None:
    # Listings leave .<name>.tmp out (an atomic write in flight): an agent must
    # not keep files the operator never sees listed.
    assert await _put(quota_core, "alpha", ".hidden.tmp", 1) == 400
    assert await _put(quota_core, "alpha", "dir/.x.tmp", 1) == 400


async def test_concurrent_writes_cannot_pass_the_quota_together(quota_core: Core) -> None:
    # Found by an attack review: each of 40 concurrent writes passed the quota
    # check before any of them wrote, leaving 36 times the quota on disk.
    core = quota_core
    statuses = await asyncio.gather(*(_put(core, "alpha", f"c{i}", 4000) for i in range(12)))
    assert statuses.count(200) == 2  # 8000 of 10000 bytes; a third would pass it
    assert set(statuses) == {200, 413}
    _entries, total, _ = state_usage(core.config.agent_dir("alpha") / "state")
    assert total <= 10_000


def test_the_quota_walk_stops_once_past_the_entry_limit(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"x")
    entries, _total, _ = state_usage(tmp_path, max_entries=10)
    assert entries == 11  # counted one past the limit, then stopped
    entries, total, found = state_usage(tmp_path, "f7")
    assert (entries, total, found) == (50, 50, 1)
