"""A policy file holds plain text: hidden line breaks and terminal escapes are refused.

Found by an attack review: ``str.splitlines()`` breaks a line at characters an
editor, git and a reviewer do not show as line breaks (``\\x1e``, ``\\u2028``,
...), so a grant could hide in what reads as a comment; an escape sequence in a
case's ``why`` repainted ``policy test``'s summary on the terminal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enforcer.config import default_policy_dir
from enforcer.policy import PolicyError, load_policy

HIDDEN = ["\x1e", "\x1c", "\x1d", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(default_policy_dir(), tmp_path / "policies"))


@pytest.mark.parametrize("sep", HIDDEN, ids=[f"U+{ord(c):04X}" for c in HIDDEN])
def test_a_grant_hidden_behind_a_line_break_nobody_sees_is_refused(
    policy_dir: Path, sep: str
) -> None:
    csv = policy_dir / "policy.csv"
    hidden = (
        f"# was: p, role:x, gateway, ui, dashboard.view{sep}"
        "p, anonymous, gateway, audit, audit.read\n"
    )
    csv.write_text(csv.read_text() + hidden)
    with pytest.raises(PolicyError, match=rf"policy.csv:\d+: control character U\+{ord(sep):04X}"):
        load_policy(policy_dir)


@pytest.mark.parametrize("written", ["raw", "toml escape"])
def test_a_terminal_escape_in_a_case_is_refused(policy_dir: Path, written: str) -> None:
    escape = "\x1b" if written == "raw" else "\\u001b"
    cases = policy_dir / "tests.toml"
    text = cases.read_text()
    assert 'why = "' in text
    cases.write_text(text.replace('why = "', f'why = "\\r{escape}[2K78 passed, 0 failed ', 1))
    with pytest.raises(PolicyError, match=r"tests.toml:.*control character U\+00(1B|0D)"):
        load_policy(policy_dir)


def test_the_shipped_policy_has_no_control_character() -> None:
    load_policy(default_policy_dir())
