"""PLACEHOLDER engine (skeleton): the public API is final, the internals are not.

The policy-engine work (issue 2) replaces this module's internals with the
validated loader, invariants, compiled index and explain; callers depend only
on the names exported by ``enforcer.policy``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from enforcer.errors import BadRequest
from enforcer.policy.types import AccessRequest, ActionSpec, AuthorityClass, Decision, SourceLine

__all__ = ["Policy", "PolicyEngine", "PolicyError", "ReloadResult", "load_policy"]


class PolicyError(BadRequest):
    """A policy directory is invalid; ``reason`` names file:line and what is wrong."""

    code = "bad_policy"


@dataclass(frozen=True)
class Policy:
    """An immutable, validated policy."""

    directory: Path
    revision: str
    catalogue: dict[str, ActionSpec]
    lines: tuple[tuple[str, str, str, str, SourceLine], ...]
    roles: tuple[tuple[str, str, SourceLine], ...]
    network: dict[str, object] = field(default_factory=dict)

    def _subjects(self, principal: str) -> set[str]:
        subs = {principal}
        changed = True
        while changed:
            changed = False
            for member, role, _ in self.roles:
                hit = member in subs or (
                    member.endswith("*") and any(s.startswith(member[:-1]) for s in subs)
                )
                if hit and role not in subs:
                    subs.add(role)
                    changed = True
        return subs

    def decide(self, req: AccessRequest) -> Decision:
        """Decide one request."""
        subs = self._subjects(req.principal)
        me = req.principal[6:] if req.principal.startswith("agent:") else None
        for sub, chan, obj, act, src in self.lines:
            if sub not in subs or chan != req.channel or act != req.action:
                continue
            if "{self}" in obj:
                if me is None:
                    continue
                obj = obj.replace("{self}", me)
            ok = req.resource.startswith(obj[:-1]) if obj.endswith("*") else req.resource == obj
            if ok:
                return Decision(True, src, f"allowed by {src}", self.revision)
        return Decision(False, None, "no policy line allows this request", self.revision)


def load_policy(directory: Path) -> Policy:
    """Load a policy directory (placeholder: minimal validation)."""
    try:
        cat_raw = tomllib.loads((directory / "catalogue.toml").read_text())
        csv_text = (directory / "policy.csv").read_text()
        net = tomllib.loads((directory / "network.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{directory}: {e}") from e
    catalogue = {
        name: ActionSpec(name, AuthorityClass(v["class"]), v["resource"], v["description"])
        for name, v in cat_raw["action"].items()
    }
    lines = []
    roles = []
    for n, raw in enumerate(csv_text.splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        cols = [c.strip() for c in text.split(",")]
        src = SourceLine("policy.csv", n, text)
        if cols[0] == "p":
            lines.append((cols[1], cols[2], cols[3], cols[4], src))
        elif cols[0] == "g":
            roles.append((cols[1], cols[2], src))
        else:
            raise PolicyError(f"policy.csv:{n}: unknown line type {cols[0]!r}")
    revision = hashlib.sha256(csv_text.encode()).hexdigest()[:12]
    return Policy(directory, revision, catalogue, tuple(lines), tuple(roles), net)


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of :meth:`PolicyEngine.reload`."""

    ok: bool
    revision: str
    error: str | None = None


class PolicyEngine:
    """The live policy the daemons decide with."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self.current: Policy | None = None
        self.loaded_at: float | None = None
        self.last_refusal: tuple[float, str] | None = None
        self.reload()

    def reload(self) -> ReloadResult:
        """Load the directory again; keep the last good policy if it is invalid."""
        try:
            policy = load_policy(self.directory)
        except PolicyError as e:
            self.last_refusal = (time.time(), e.reason)
            return ReloadResult(False, self.revision, e.reason)
        with self._lock:
            self.current, self.loaded_at = policy, time.time()
        return ReloadResult(True, policy.revision)

    @property
    def revision(self) -> str:
        """The live policy's revision, or "none"."""
        return self.current.revision if self.current else "none"

    def decide(self, req: AccessRequest) -> Decision:
        """Decide with the live policy; deny everything when there is none."""
        policy = self.current
        if policy is None:
            return Decision(False, None, "no valid policy is loaded", "none")
        return policy.decide(req)
