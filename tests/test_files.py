"""replace_file: the file holds the old content or the new, and nothing planted steers it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from enforcer.files import replace_file


def test_the_file_is_replaced_whole_with_its_mode_and_no_temporary_file_stays(
    tmp_path: Path,
) -> None:
    target = tmp_path / "records.json"
    target.write_text("old")
    replace_file(target, b"new" * 10000, mode=0o600)
    assert target.read_bytes() == b"new" * 10000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["records.json"]


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "inventory.json"
    target.symlink_to(victim)
    replace_file(target, b"{}", mode=0o644)
    assert victim.read_text() == "precious"
    assert not target.is_symlink()
    assert target.read_bytes() == b"{}"


def test_a_failed_replacement_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f"
    target.parent.mkdir()
    target.write_text("old")
    (tmp_path / "d" / "f2").mkdir()  # replacing a directory by a file fails
    with pytest.raises(IsADirectoryError):
        replace_file(tmp_path / "d" / "f2", b"x", mode=0o644)
    assert sorted(p.name for p in target.parent.iterdir()) == ["f", "f2"]
    assert target.read_text() == "old"
    assert os.path.isdir(tmp_path / "d" / "f2")
