"""Property: no rel_path ever reads a file outside that agent's state/.

Each example builds a fresh agent directory with a secret beside state/
(in harness/, in another agent's state/, at the filesystem level via
symlinks planted inside state/ pointing out), then asks for a generated
rel_path: dot segments, absolute paths, symlink names, encodings, NULs,
long names. Whatever is returned must be the content of a regular file
that really lies beneath state/ - never a secret.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from enforcer.confined import read_agent_state_file
from enforcer.errors import HiveError

SECRET = b"SECRET-OUTSIDE-STATE"
INSIDE = {"a.txt": b"inside-a", "sub/b.txt": b"inside-b", "sub/deeper/c.txt": b"inside-c"}
LINKS = {
    "up": "..",
    "harness-link": "../harness",
    "abs": "/etc",
    "secret-link": "../harness/secret.txt",
    "sub/other": "../../other/state",
    "sub/loop": "loop",
}
SEGMENTS = [
    "..", ".", "", "a.txt", "sub", "b.txt", "deeper", "c.txt", "up", "harness-link", "abs",
    "secret-link", "other", "loop", "secret.txt", "harness", "%2e%2e", "..%2f", "\\..\\",
    "\x00", "a.txt\x00", "…", "x" * 300, "state", "etc", "shadow", "passwd",
]  # fmt: skip


@st.composite
def rel_paths(draw: st.DrawFn) -> str:
    """Paths built from hostile segments, sometimes absolute, sometimes random text."""
    if draw(st.booleans()):
        parts = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8))
        path = "/".join(parts)
        if draw(st.booleans()):
            path = "/" + path
        return path
    return draw(st.text(min_size=0, max_size=300))


def _build(base: Path) -> Path:
    agent = base / "agents" / "a"
    state = agent / "state"
    (state / "sub" / "deeper").mkdir(parents=True)
    (agent / "harness").mkdir()
    (agent / "harness" / "secret.txt").write_bytes(SECRET)
    (base / "agents" / "other" / "state").mkdir(parents=True)
    (base / "agents" / "other" / "state" / "a.txt").write_bytes(SECRET)
    (base / "secret.txt").write_bytes(SECRET)
    for rel, data in INSIDE.items():
        (state / rel).write_bytes(data)
    for rel, target in LINKS.items():
        os.symlink(target, state / rel)
    return state


@given(rel_paths())
def test_no_rel_path_reads_outside_state(rel: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="hbq-", dir="/tmp"))
    try:
        state = _build(base)
        try:
            data = read_agent_state_file(state, rel)
        except HiveError:
            return  # refused: fine
        assert data != SECRET
        assert data in INSIDE.values()
        # and the path really names that file beneath state/, with no symlink
        resolved = (state / rel).resolve()
        assert resolved.is_relative_to(state.resolve())
        assert rel in INSIDE
    finally:
        shutil.rmtree(base)
