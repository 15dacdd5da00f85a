"""Pure view models of the operator's pages: plain data in, plain data out.

Nothing here touches a socket or a request: the page handlers
(:mod:`webui.pages`) fetch records from the store and the policy engine and
pass them through these functions, and the templates only lay the results out.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enforcer.store import AgentRecord, ApprovalRecord, QuestionRecord

__all__ = [
    "NOTICES",
    "AgentRow",
    "DecisionFilter",
    "ResourceUse",
    "agent_rows",
    "display_status",
    "filter_decisions",
    "format_bytes",
    "format_time",
    "resource_use",
    "safe_next",
]

NOTICES: Mapping[str, str] = {
    "answered": "Answer sent.",
    "approved": "Request approved.",
    "denied": "Request denied.",
    "start": "Agent started.",
    "stop": "Agent stopped.",
    "restart": "Agent restarted.",
    "destroy": "Agent destroyed.",
    "reloaded": "Policy reloaded.",
    "reload-refused": "The new policy was refused; the last good one stays live.",
}
"""The only messages a redirect can ask a page to show (a code, never free text:
a crafted link must not be able to put words on the operator's pages)."""

_FAILED = frozenset({"failed", "error", "crashed"})


def display_status(backend_status: str, reported: str) -> str:
    """``running``, ``stopped``, ``failed`` or ``unknown``: the lifecycle backend's word, refined.

    The backend knows whether the process runs; an agent that reported itself
    failed (or a backend that says so) shows as failed. A backend that cannot
    tell right now (hive-priv does not answer) shows as unknown.
    """
    if backend_status in _FAILED or reported.strip().lower() in _FAILED:
        return "failed"
    if backend_status in {"running", "unknown"}:
        return backend_status
    return "stopped"


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One line of the dashboard."""

    name: str
    status: str
    reported: str
    reported_detail: str
    last_activity: float | None
    open_questions: int
    pending_approvals: int


def agent_rows(
    agents: Sequence[AgentRecord],
    backend_status: Mapping[str, str],
    last_activity: Mapping[str, float | None],
    open_questions: Iterable[QuestionRecord],
    pending_approvals: Iterable[ApprovalRecord],
) -> list[AgentRow]:
    """The dashboard's rows, one per agent, in the store's order (by name)."""
    questions = Counter(q.agent for q in open_questions)
    approvals = Counter(a.agent for a in pending_approvals)
    rows = []
    for agent in agents:
        activity = [t for t in (last_activity.get(agent.name), agent.status_at) if t is not None]
        rows.append(
            AgentRow(
                name=agent.name,
                status=display_status(backend_status.get(agent.name, "stopped"), agent.status),
                reported=agent.status,
                reported_detail=agent.status_detail,
                last_activity=max(activity) if activity else None,
                open_questions=questions[agent.name],
                pending_approvals=approvals[agent.name],
            )
        )
    return rows


def format_bytes(n: float) -> str:
    """``n`` bytes as B, KiB, MiB or GiB (one decimal past bytes)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class ResourceUse:
    """What an agent uses of its limits, as the agent page shows it."""

    memory: str
    tasks: str
    cpu: str
    oom_kills: int


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resource_use(resources: Mapping[str, Any] | None) -> ResourceUse | None:
    """The agent's control group as words; None when its backend does not bound agents."""
    if not resources:
        return None
    used, most = _int(resources.get("memory_bytes")), _int(resources.get("memory_max_bytes"))
    memory = format_bytes(used) if used is not None else "unknown"
    memory += f" of {format_bytes(most)}" if most is not None else " (unbounded)"
    tasks_now, tasks_max = _int(resources.get("tasks")), _int(resources.get("tasks_max"))
    tasks = str(tasks_now) if tasks_now is not None else "unknown"
    tasks += f" of {tasks_max}" if tasks_max is not None else " (unbounded)"
    cpu_max = resources.get("cpu_max")
    cpu = (
        f"at most {cpu_max:g} CPU"
        if isinstance(cpu_max, int | float) and not isinstance(cpu_max, bool)
        else "unbounded"
    )
    return ResourceUse(memory, tasks, cpu, _int(resources.get("oom_kills")) or 0)


def format_time(at: float | None, now: float | None = None) -> str:
    """A short UTC timestamp with a relative hint ("12:03:04 UTC, 5 min ago")."""
    if at is None:
        return "never"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    ago = max(0.0, now - at)
    if ago < 60:
        rel = f"{int(ago)} s ago"
    elif ago < 3600:
        rel = f"{int(ago // 60)} min ago"
    elif ago < 86400:
        rel = f"{int(ago // 3600)} h ago"
    else:
        rel = f"{int(ago // 86400)} d ago"
    return f"{stamp} ({rel})"


def safe_next(value: object, default: str) -> str:
    """A same-origin operator page to go back to after a form (never elsewhere).

    Only absolute paths on this origin, outside the agent UI space, with no
    scheme-relative ``//``, backslash or control character; anything else
    gives ``default``.
    """
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if len(value) > 512 or any(c in value for c in "\\\r\n\t\x00") or " " in value:
        return default
    path = value.split("?", 1)[0].split("#", 1)[0]
    if path == "/agent" or path.startswith("/agent/") or path.startswith("/api"):
        return default
    return value


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """The audit view's filters (empty string: any)."""

    principal: str = ""
    action: str = ""
    decision: str = ""

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.principal or self.action or self.decision)


def filter_decisions(
    events: Iterable[Mapping[str, Any]], flt: DecisionFilter, *, limit: int = 200
) -> list[Mapping[str, Any]]:
    """The newest ``limit`` decision events matching ``flt``, newest first.

    ``principal`` and ``action`` match exactly or as a prefix ending in ``*``
    (``agent:*``, ``container.*``); ``decision`` is ``allow`` or ``deny``.
    """

    def matches(value: object, wanted: str) -> bool:
        if not wanted:
            return True
        text = str(value)
        if wanted.endswith("*"):
            return text.startswith(wanted[:-1])
        return text == wanted

    out: list[Mapping[str, Any]] = []
    for event in reversed(list(events)):
        if (
            matches(event.get("principal"), flt.principal)
            and matches(event.get("action"), flt.action)
            and matches(event.get("decision"), flt.decision)
        ):
            out.append(event)
            if len(out) >= limit:
                break
    return out
