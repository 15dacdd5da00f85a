"""The live policy: load, hot reload, decide, log decisions.

:class:`PolicyEngine` holds one :class:`~enforcer.policy.loader.Policy`
reference. A reload builds and fully validates a new version (including its
expected cases) off to the side and then swaps it in with one reference
assignment, so a decision always sees one whole version. An invalid version is
refused and logged, and the last good one stays live; with no valid version
ever loaded, every request is denied (revision ``"none"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enforcer.log import get_logger
from enforcer.policy.errors import PolicyError
from enforcer.policy.loader import Policy, load_policy
from enforcer.policy.types import AccessRequest, Decision

__all__ = [
    "NO_POLICY",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "ReloadResult",
    "decision_event",
    "load_policy",
]

#: The revision reported when no valid policy is loaded.
NO_POLICY = "none"
_DENY_ALL = Decision(False, None, "no valid policy is loaded: everything is denied", NO_POLICY)


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of :meth:`PolicyEngine.reload`: ``revision`` is the live one afterwards."""

    ok: bool
    revision: str
    error: str | None = None
    changed: bool = False


def _check_catalogue_stays(live: Policy, new: Policy, keep: Iterable[str] | None = None) -> None:
    """Refuse a hot reload that removes or reclassifies a live action.

    Every daemon checked its routes against the catalogue at start-up (an
    agent socket serves only agent-self actions). Reclassifying an action, say
    ``question.answer`` to agent-self, would bypass that check if it went live
    without a restart, so such a change is refused here and takes a restart,
    which checks the routes again. Adding actions is fine.
    """
    problems = []
    kept = set(live.catalogue) if keep is None else set(keep)
    for name, spec in live.catalogue.items():
        if name not in kept:
            continue
        now = new.catalogue.get(name)
        if now is None:
            problems.append(
                f"catalogue.toml: action {name!r} was removed; removing an action "
                "needs a restart of the daemons (their routes are checked at start-up)"
            )
        elif now.authority != spec.authority:
            problems.append(
                f"catalogue.toml: action {name!r} changed class from {spec.authority} to "
                f"{now.authority}; reclassifying needs a restart (routes are re-checked)"
            )
    if problems:
        raise PolicyError(problems[0], problems)


class PolicyEngine:
    """The live policy the daemons decide with. Loads at construction (fails closed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._reload_lock = threading.Lock()
        self._log = get_logger("policy")
        self.current: Policy | None = None
        self.loaded_at: float | None = None
        self.last_refusal: tuple[float, str] | None = None
        self.reload()

    def reload(
        self,
        *,
        expect: str | None = None,
        check: Callable[[Policy], None] | None = None,
        keep: Iterable[str] | None = None,
    ) -> ReloadResult:
        """Load the directory again; keep the last good policy if the new one is invalid.

        With ``expect`` (a revision), the new version goes live only if it is
        exactly that revision: a process following another's live policy
        (:mod:`enforcer.policy.follow`) never takes files that changed since.
        ``check`` may refuse a valid version for the caller's own reasons (a
        :class:`PolicyError`), before it goes live. ``keep`` names the actions
        that may not be removed or reclassified (the ones this daemon's routes
        bind); by default every live action. Anything but a clean
        :class:`PolicyError` raised while loading (a bug, say) is a refusal too:
        the live version stays, and the daemon keeps serving.
        """
        with self._reload_lock:  # one reload at a time; decisions never wait on it
            try:
                policy = load_policy(self.directory)
                if self.current is not None:
                    _check_catalogue_stays(self.current, policy, keep)
                if expect is not None and policy.revision != expect:
                    raise PolicyError(
                        f"{self.directory}: the files are at revision {policy.revision}, "
                        f"not the followed revision {expect}: they changed after it was "
                        "loaded; the next reload of the core brings them together"
                    )
                if check is not None:
                    check(policy)
            except PolicyError as e:
                return self._refused(e)
            except Exception as e:
                self._log.exception("policy.load_failed", directory=str(self.directory))
                return self._refused(PolicyError(f"{self.directory}: cannot be loaded: {e!r}"))
            previous = self.revision
            # The swap: one reference assignment, atomic for readers.
            self.current = policy
            self.loaded_at = time.time()
            self._log.info(
                "policy.loaded",
                directory=str(self.directory),
                revision=policy.revision,
                previous=previous,
                lines=len(policy.lines),
                roles=len(policy.roles),
            )
            return ReloadResult(True, policy.revision, None, previous != policy.revision)

    def _refused(self, e: PolicyError) -> ReloadResult:
        self.last_refusal = (time.time(), e.reason)
        self._log.error(
            "policy.refused",
            directory=str(self.directory),
            reason=e.reason,
            problems=list(e.problems),
            live_revision=self.revision,
        )
        return ReloadResult(False, self.revision, e.reason)

    @property
    def revision(self) -> str:
        """The live policy's revision, or ``"none"``."""
        policy = self.current
        return policy.revision if policy is not None else NO_POLICY

    def decide(self, req: AccessRequest) -> Decision:
        """Decide with the live policy; deny everything when there is none."""
        policy = self.current
        if policy is None:
            return _DENY_ALL
        return policy.index.decide(req)

    def explain(self, req: AccessRequest) -> Decision:
        """Like :meth:`decide`, with the reason in words."""
        policy = self.current
        if policy is None:
            return _DENY_ALL
        return policy.index.explain(req)


def decision_event(
    req: AccessRequest, decision: Decision, request_id: str | None = None
) -> dict[str, Any]:
    """The fields of one decision log event (log it with ``logger.info("decision", **ev)``).

    ``rule`` is ``file:line`` of the allowing line, or None when denied.
    """
    rule = decision.rule
    return {
        "principal": req.principal,
        "channel": req.channel,
        "resource": req.resource,
        "action": req.action,
        "decision": "allow" if decision.allowed else "deny",
        "rule": f"{rule.file}:{rule.line}" if rule is not None else None,
        "revision": decision.revision,
        "request_id": request_id,
    }
