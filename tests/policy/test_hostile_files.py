"""Hostile policy files are refused with a reason: never a crash, never a hang.

Found by an attack review: a role chain of 1200 g lines or TOML arrays nested
3000 deep made loading raise RecursionError (the core's reload a 500, a
follower's task dead, hive-priv's accept loop gone); a FIFO or /dev/zero in
place of a policy file blocked or never ended.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from enforcer.config import default_policy_dir
from enforcer.policy import PolicyEngine


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(default_policy_dir(), tmp_path / "policies"))


def deep_chain(policy_dir: Path, n: int = 1200) -> None:
    """Append a role chain of ``n`` g lines (far past the depth limit)."""
    csv = policy_dir / "policy.csv"
    csv.write_text(csv.read_text() + "".join(f"g, role:r{i}, role:r{i + 1}\n" for i in range(n)))


@pytest.mark.parametrize("how", ["role chain", "catalogue.toml", "tests.toml", "network.toml"])
def test_a_deeply_nested_policy_is_refused_with_a_reason_not_a_crash(
    policy_dir: Path, how: str
) -> None:
    engine = PolicyEngine(policy_dir)
    live = engine.revision
    if how == "role chain":
        deep_chain(policy_dir)
    else:
        f = policy_dir / how
        f.write_text(f.read_text() + "\nx = " + "[" * 3000 + "]" * 3000 + "\n")
    result = engine.reload()
    assert not result.ok
    assert engine.revision == live
    assert result.error is not None
    assert ("nested too deeply" in result.error) or ("deep (at most" in result.error)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_policy_file_that_is_not_a_regular_file_is_unreadable_not_a_hang(
    policy_dir: Path, kind: str
) -> None:
    engine = PolicyEngine(policy_dir)
    live = engine.revision
    target = policy_dir / "tests.toml"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    result = engine.reload()
    assert not result.ok
    assert engine.revision == live
    assert "tests.toml: unreadable: not a regular file" in (result.error or "")
