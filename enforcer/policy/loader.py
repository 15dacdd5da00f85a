"""Read a policy directory into an immutable, validated :class:`Policy`.

Order: read every file (unreadable -> :class:`PolicyUnreadable`), check the
model, parse the catalogue, ``policy.csv``, the network section and the
expected cases, check the role graph and the invariants, compile the index,
then run the expected cases. Any problem refuses the whole version; every
problem is reported (``PolicyError.problems``), each naming file:line.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from enforcer.policy.cases import Case, CaseResult, parse_cases, run_cases
from enforcer.policy.catalogue import parse_catalogue
from enforcer.policy.errors import PolicyError, PolicyUnreadable
from enforcer.policy.index import CompiledIndex
from enforcer.policy.invariants import invariant_problems
from enforcer.policy.lines import RoleGraph, parse_policy_csv
from enforcer.policy.model import model_problems
from enforcer.policy.syntax import CONTROL_CHARACTER, is_role
from enforcer.policy.types import AccessRequest, ActionSpec, Decision, Grant, RoleLink
from netns.policy import NetworkPolicy, NetworkPolicyError, parse_network_policy

__all__ = ["POLICY_FILES", "Policy", "build_policy", "load_policy", "read_files"]

#: The files of a policy directory, all required.
POLICY_FILES = ("model.conf", "catalogue.toml", "policy.csv", "network.toml", "tests.toml")


@dataclass(frozen=True, eq=False)
class Policy:
    """An immutable, validated policy version."""

    directory: Path
    revision: str
    catalogue: dict[str, ActionSpec]
    lines: tuple[Grant, ...]
    roles: tuple[RoleLink, ...]
    network: NetworkPolicy
    tests: tuple[Case, ...] = ()
    index: CompiledIndex = field(repr=False, default=None)  # type: ignore[assignment]

    def decide(self, req: AccessRequest) -> Decision:
        """Decide one request through the compiled index (the hot path)."""
        return self.index.decide(req)

    def explain(self, req: AccessRequest) -> Decision:
        """The same answer as :meth:`decide`, with the line or why nothing matched."""
        return self.index.explain(req)

    def run_tests(self) -> list[CaseResult]:
        """Decide every expected case of ``tests.toml``."""
        return run_cases(self.decide, self.tests)


def read_files(directory: Path) -> dict[str, str]:
    """The text of every policy file; :class:`PolicyUnreadable` if any cannot be read."""
    if not directory.is_dir():
        raise PolicyUnreadable(f"{directory}: not a policy directory")
    texts: dict[str, str] = {}
    for name in POLICY_FILES:
        try:
            texts[name] = _read_policy_file(directory / name).decode("utf-8")
        except FileNotFoundError as e:
            raise PolicyUnreadable(f"{name}: missing from {directory}") from e
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyUnreadable(f"{name}: unreadable: {e}") from e
    return texts


MAX_POLICY_FILE_BYTES = 16 << 20
"""A policy file larger than this is refused (a policy for 5000 agents is a few MiB)."""


def _read_policy_file(path: Path) -> bytes:
    # Only a regular file of bounded size: a FIFO would block the daemon (or
    # the CLI) forever, a device such as /dev/zero would never end.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({stat.filemode(st.st_mode)})")
        if st.st_size > MAX_POLICY_FILE_BYTES:
            raise OSError(f"larger than {MAX_POLICY_FILE_BYTES} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_POLICY_FILE_BYTES:
                raise OSError(f"larger than {MAX_POLICY_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def revision_of(texts: dict[str, str]) -> str:
    """Content hash of every policy file: the policy's revision."""
    h = hashlib.sha256()
    for name in POLICY_FILES:
        data = texts[name].encode()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _control_problem(name: str, text: str) -> str | None:
    found = CONTROL_CHARACTER.search(text)
    if found is None:
        return None
    line = text.count("\n", 0, found.start()) + 1
    return (
        f"{name}:{line}: control character U+{ord(found.group()):04X} "
        "(policy files are plain text: only tab and line breaks)"
    )


def build_policy(
    texts: dict[str, str],
    directory: Path = Path("."),
    *,
    invariants: bool = True,
    run_expected: bool = True,
) -> Policy:
    """Validate and compile policy file texts; raise :class:`PolicyError` listing every
    problem. ``invariants=False`` exists only so tests can show the proof
    (``enforcer.policy.proof``) catching what the invariants would have refused."""
    problems = [
        problem for name in POLICY_FILES if (problem := _control_problem(name, texts[name]))
    ]
    if problems:
        # Nothing is parsed past a hidden line break or a terminal escape.
        raise PolicyError(problems[0], problems)
    problems = model_problems(texts["model.conf"])
    catalogue, _, cat_problems = parse_catalogue(texts["catalogue.toml"])
    problems += cat_problems
    grants, links, csv_problems = parse_policy_csv(texts["policy.csv"], catalogue)
    problems += csv_problems
    graph = RoleGraph(links)
    problems += graph.problems()
    network: NetworkPolicy | None = None
    try:
        network = parse_network_policy(texts["network.toml"], "network.toml")
    except NetworkPolicyError as e:
        problems.append(e.reason)
    if network is not None:
        known_roles = {lk.role for lk in links} | {g.sub for g in grants if is_role(g.sub)}
        for rule in network.egress:
            if is_role(rule.principal) and rule.principal not in known_roles:
                problems.append(
                    f"network.toml: [[egress]] #{rule.index + 1}: {rule.principal} is not a "
                    "role in policy.csv"
                )
    cases, case_problems = parse_cases(texts["tests.toml"], catalogue)
    problems += case_problems
    if invariants:
        problems += invariant_problems(grants, graph, catalogue)
    if problems:
        raise PolicyError.from_problems(_ordered(problems))
    assert network is not None
    revision = revision_of(texts)
    index = CompiledIndex(grants, links, catalogue, revision)
    policy = Policy(
        directory, revision, catalogue, tuple(grants), tuple(links), network, tuple(cases), index
    )
    if run_expected:
        failed = [r.failure() for r in policy.run_tests() if not r.passed]
        if failed:
            raise PolicyError.from_problems(failed)
    return policy


def _ordered(problems: list[str]) -> list[str]:
    order = {name: i for i, name in enumerate(POLICY_FILES)}

    def key(p: str) -> tuple[int, int]:
        file, _, rest = p.partition(":")
        line = rest.partition(":")[0]
        return order.get(file, 99), int(line) if line.isdigit() else 0

    return sorted(problems, key=key)


def load_policy(directory: Path, *, run_expected: bool = True) -> Policy:
    """Load, validate, compile and test a policy directory.

    Raises :class:`PolicyError` (``reason`` = ``file:line: what``) when anything
    is wrong, including a failing expected case of ``tests.toml``.
    """
    return build_policy(read_files(directory), directory, run_expected=run_expected)
