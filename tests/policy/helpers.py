"""Shared helpers for policy tests: policy texts from the shipped policy, temp dirs."""

from __future__ import annotations

from pathlib import Path

from enforcer.config import default_policy_dir
from enforcer.policy.loader import POLICY_FILES, Policy, build_policy

SHIPPED = default_policy_dir()
NO_EGRESS = '[addressing]\nipv4 = "10.203.0.0/16"\nipv6 = "fd00:4869:7665::/48"\n'
MINIMAL_CSV = "g, agent:*, role:agent\ng, operator, role:operator\n"


def shipped_texts() -> dict[str, str]:
    """The text of every shipped policy file."""
    return {name: (SHIPPED / name).read_text() for name in POLICY_FILES}


def texts_with(files: dict[str, str]) -> dict[str, str]:
    """Shipped texts with some files (by name) replaced."""
    return {**shipped_texts(), **files}


def bare_texts(csv: str, tests: str = "") -> dict[str, str]:
    """Shipped model and catalogue, the given policy.csv, no egress, the given cases."""
    texts = shipped_texts()
    texts["policy.csv"] = csv
    texts["network.toml"] = NO_EGRESS
    texts["tests.toml"] = tests
    return texts


def bare_policy(csv: str, tests: str = "", *, invariants: bool = True) -> Policy:
    """Build a policy from policy.csv text (see :func:`bare_texts`)."""
    return build_policy(bare_texts(csv, tests), invariants=invariants)


def write_policy(directory: Path, texts: dict[str, str]) -> Path:
    """Write every policy file into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (directory / name).write_text(text)
    return directory
