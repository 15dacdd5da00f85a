"""A follower decides with the revision the core published, and only with that one.

Real policy directories on disk, a real :class:`PolicyEngine`, the follower
loop running with a short period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enforcer.config import default_policy_dir
from enforcer.policy import AccessRequest, PolicyEngine, load_policy
from enforcer.policy.follow import (
    REVISION_FILE,
    Follower,
    follow,
    publish_revision,
    published_revision,
)
from tests.policy.test_hostile_files import deep_chain

_HEALTH = AccessRequest("anonymous", "gateway", "health", "health.read")
_GRANT = "p, anonymous, gateway, health, health.read\n"


def deny_anonymous_health(policy_dir: Path) -> None:
    """Edit a policy copy so that anonymous may no longer read /health (and say so in its cases)."""
    csv = policy_dir / "policy.csv"
    csv.write_text(csv.read_text().replace(_GRANT, ""))
    cases = policy_dir / "tests.toml"
    text = cases.read_text()
    allowed = 'resource = "health"\naction = "health.read"\nexpect = "allow"'
    assert allowed in text
    cases.write_text(text.replace(allowed, allowed.replace('"allow"', '"deny"'), 1))


def copy_policy(dest: Path) -> Path:
    shutil.copytree(default_policy_dir(), dest)
    return dest


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    run.mkdir()
    return copy_policy(tmp_path / "policies"), run


@contextlib.asynccontextmanager
async def following(engine: PolicyEngine, run: Path) -> AsyncIterator[None]:
    task = asyncio.create_task(follow(engine, run, every=0.02))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle() -> None:
    await asyncio.sleep(0.3)  # many follower periods, and a load


def test_a_published_revision_reads_back_whole_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    publish_revision(tmp_path, "ab12cd34ef56")
    assert published_revision(tmp_path) == "ab12cd34ef56"
    publish_revision(tmp_path, "none")
    assert published_revision(tmp_path) == "none"
    assert [p.name for p in tmp_path.iterdir()] == [REVISION_FILE]


@pytest.mark.parametrize("text", ["", "not a revision\n", "ab12\n", "AB12CD34EF56", "../x"])
def test_a_missing_or_malformed_revision_file_names_no_revision(tmp_path: Path, text: str) -> None:
    assert published_revision(tmp_path) is None
    (tmp_path / REVISION_FILE).write_text(text)
    assert published_revision(tmp_path) is None


async def test_the_follower_takes_the_published_revision(dirs: tuple[Path, Path]) -> None:
    policy_dir, run = dirs
    engine = PolicyEngine(policy_dir)
    assert engine.decide(_HEALTH).allowed
    publish_revision(run, engine.revision)
    async with following(engine, run):
        deny_anonymous_health(policy_dir)
        await settle()
        assert engine.decide(_HEALTH).allowed, (
            "nothing was published: the files alone change nothing"
        )
        publish_revision(run, load_policy(policy_dir).revision)  # the core reloaded
        await settle()
        assert not engine.decide(_HEALTH).allowed
        assert engine.revision == published_revision(run)


async def test_files_changed_after_the_core_loaded_them_are_not_taken(
    dirs: tuple[Path, Path],
) -> None:
    policy_dir, run = dirs
    engine = PolicyEngine(policy_dir)
    first = engine.revision
    async with following(engine, run):
        deny_anonymous_health(policy_dir)
        publish_revision(run, load_policy(policy_dir).revision)  # the core took v2 ...
        shutil.rmtree(policy_dir)
        copy_policy(policy_dir)  # ... and then the files went back to v1 (v3 == v1 text)
        (policy_dir / "policy.csv").write_text(
            (policy_dir / "policy.csv").read_text() + "# edited after the reload\n"
        )
        await settle()
        # The follower refused v3 (not what the core runs) and kept its own version.
        assert engine.revision == first
        assert engine.decide(_HEALTH).allowed
        assert engine.last_refusal is not None
        assert "followed revision" in engine.last_refusal[1]
        refused_at = engine.last_refusal[0]
        await settle()
        assert engine.last_refusal[0] == refused_at, "a refused revision is not retried per tick"
        # The core reloads the files as they are now: the follower comes along.
        publish_revision(run, load_policy(policy_dir).revision)
        await settle()
        assert engine.revision == published_revision(run)
        assert engine.decide(_HEALTH).allowed


async def test_an_unreadable_or_absent_publication_changes_nothing(
    dirs: tuple[Path, Path],
) -> None:
    policy_dir, run = dirs
    engine = PolicyEngine(policy_dir)
    live = engine.revision
    async with following(engine, run):
        deny_anonymous_health(policy_dir)
        await settle()  # no file at all
        (run / REVISION_FILE).write_text("garbage\n")
        await settle()
        if os.geteuid() != 0:  # root reads a 0000 file anyway
            (run / REVISION_FILE).chmod(0)
            await settle()
    assert engine.revision == live
    assert engine.decide(_HEALTH).allowed


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "device"])
def test_a_revision_file_that_is_not_a_regular_file_is_never_read(
    tmp_path: Path, kind: str
) -> None:
    # The run directory is the core's to write in; hive-priv (root) reads this
    # file: a FIFO would block its accept loop, /dev/zero would never end.
    path = tmp_path / REVISION_FILE
    if kind == "symlink":
        target = tmp_path / "elsewhere"
        target.write_text("ab12cd34ef56\n")
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    assert published_revision(tmp_path) is None


async def test_the_follower_keeps_following_after_a_version_it_could_not_load(
    dirs: tuple[Path, Path],
) -> None:
    policy_dir, run = dirs
    core, follower_engine = PolicyEngine(policy_dir), PolicyEngine(policy_dir)
    good = (policy_dir / "policy.csv").read_text()
    async with following(follower_engine, run):
        deep_chain(policy_dir)  # mid-edit: the files are bad when the core publishes
        publish_revision(run, "deadbeefdeadbeef")
        await settle()
        (policy_dir / "policy.csv").write_text(good)
        deny_anonymous_health(policy_dir)
        assert core.reload().ok
        publish_revision(run, core.revision)
        await settle()
    assert follower_engine.revision == core.revision


def _add_action(policy_dir: Path) -> None:
    cat = policy_dir / "catalogue.toml"
    cat.write_text(
        cat.read_text() + '\n[action."extra.view"]\nclass = "operator"\nresource = "ui"\n'
        'description = "x"\n'
    )


def _remove_action(policy_dir: Path) -> None:
    cat = policy_dir / "catalogue.toml"
    cat.write_text(
        cat.read_text().replace(
            '\n[action."extra.view"]\nclass = "operator"\nresource = "ui"\ndescription = "x"\n', ""
        )
    )


def test_a_follower_takes_a_restarted_cores_version_that_drops_an_action_it_does_not_bind(
    dirs: tuple[Path, Path],
) -> None:
    # Removing an action takes a restart of the core. A follower that compared
    # every action with its own live version stayed behind for good after it;
    # it only cares for the actions its own routes bind.
    policy_dir, run = dirs
    core = PolicyEngine(policy_dir)
    follower_engine = PolicyEngine(policy_dir)
    follower = Follower(follower_engine, run, keep={"health.read", "dashboard.view"})
    _add_action(policy_dir)
    assert core.reload().ok
    publish_revision(run, core.revision)
    follower.poll()
    assert follower_engine.revision == core.revision
    _remove_action(policy_dir)
    deny_anonymous_health(policy_dir)
    core = PolicyEngine(policy_dir)  # the core restarted on the new files
    publish_revision(run, core.revision)
    follower.poll()
    assert follower_engine.revision == core.revision
    assert not follower_engine.decide(_HEALTH).allowed


def test_a_follower_still_refuses_to_lose_an_action_its_routes_bind(
    dirs: tuple[Path, Path],
) -> None:
    policy_dir, run = dirs
    follower_engine = PolicyEngine(policy_dir)
    live = follower_engine.revision
    follower = Follower(follower_engine, run, keep={"health.read"})
    cat = policy_dir / "catalogue.toml"
    text = cat.read_text()
    start = text.index('[action."health.read"]')
    end = text.index("[action.", start + 1)
    cat.write_text(text[:start] + text[end:])  # the action its /health route binds
    csv = policy_dir / "policy.csv"
    csv.write_text("".join(x for x in csv.read_text().splitlines(True) if "health.read" not in x))
    cases = policy_dir / "tests.toml"
    blocks = cases.read_text().split("[[case]]")
    cases.write_text("[[case]]".join(b for b in blocks if "health.read" not in b))
    publish_revision(run, load_policy(policy_dir).revision)
    result = follower.poll()
    assert result is not None
    assert not result.ok
    assert follower_engine.revision == live
    assert "health.read" in (result.error or "")
