"""ReadAgentStateFile and the confined writer: examples of what is read and what is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enforcer.confined import (
    ConfinementError,
    open_root_dir,
    read_agent_state_file,
    read_confined,
    split_rel_path,
    write_confined,
)
from enforcer.errors import BadRequest, NotFound, PayloadTooLarge


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"A")
    (root / "sub" / "b.txt").write_bytes(b"B")
    (tmp_path / "outside.txt").write_bytes(b"SECRET")
    return root


def test_reads_regular_files_beneath_state(state: Path) -> None:
    assert read_agent_state_file(state, "a.txt") == b"A"
    assert read_agent_state_file(state, "sub/b.txt") == b"B"


@pytest.mark.parametrize(
    "rel",
    ["", "/etc/passwd", "../outside.txt", "sub/../a.txt", "./a.txt", "a.txt/", "sub//b.txt",
     "a\x00.txt", "x" * 256, "/".join(["d"] * 33), "\udc80"],
)  # fmt: skip
def test_refuses_bad_paths_before_any_system_call(rel: str) -> None:
    with pytest.raises(BadRequest):
        split_rel_path(rel)


def test_symlinks_are_refused_anywhere_in_the_path(state: Path) -> None:
    (state / "link").symlink_to(state.parent / "outside.txt")
    (state / "dirlink").symlink_to(state.parent)
    (state / "inner").symlink_to("a.txt")  # even one pointing inside
    for rel in ("link", "dirlink/outside.txt", "inner"):
        with pytest.raises(ConfinementError):
            read_agent_state_file(state, rel)


def test_state_dir_itself_must_not_be_a_symlink(state: Path) -> None:
    alias = state.parent / "alias"
    alias.symlink_to(state)
    with pytest.raises(ConfinementError):
        read_agent_state_file(alias, "a.txt")


def test_special_files_and_dirs_are_not_read(state: Path) -> None:
    os.mkfifo(state / "fifo")  # would block a naive open()
    with pytest.raises(ConfinementError):
        read_agent_state_file(state, "fifo")
    with pytest.raises(ConfinementError):
        read_agent_state_file(state, "sub")
    with pytest.raises(NotFound):
        read_agent_state_file(state, "missing")
    with pytest.raises(NotFound):
        read_agent_state_file(state, "a.txt/x")


def test_size_limit(state: Path) -> None:
    (state / "big").write_bytes(b"x" * 101)
    with pytest.raises(PayloadTooLarge):
        read_agent_state_file(state, "big", max_bytes=100)
    assert read_agent_state_file(state, "big", max_bytes=101) == b"x" * 101


def test_write_is_atomic_confined_and_replaces_a_symlink_not_its_target(state: Path) -> None:
    outside = state.parent / "outside.txt"
    (state / "victim").symlink_to(outside)
    fd = open_root_dir(state)
    try:
        write_confined(fd, "victim", b"new")
        write_confined(fd, "deep/er/file", b"x", make_parents=True)
        with pytest.raises(NotFound):
            write_confined(fd, "nodir/file", b"x")
        (state / "esc").symlink_to(state.parent)
        with pytest.raises(ConfinementError):
            write_confined(fd, "esc/outside.txt", b"pwned")
        with pytest.raises(ConfinementError):
            write_confined(fd, "sub", b"x")
        assert read_confined(fd, "victim") == b"new"
        assert read_confined(fd, "deep/er/file") == b"x"
    finally:
        os.close(fd)
    assert outside.read_bytes() == b"SECRET"
    assert not (state / "victim").is_symlink()
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
