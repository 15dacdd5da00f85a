"""``catalogue.toml``: every action, its authority class, resource pattern and description."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from enforcer.policy.syntax import action_name_problem, decoded_control_problem
from enforcer.policy.types import ActionSpec, AuthorityClass

__all__ = ["CLASS_CHANNEL", "parse_catalogue"]

#: The one channel each authority class may ever be granted on.
CLASS_CHANNEL: dict[AuthorityClass, str] = {
    AuthorityClass.OPERATOR: "gateway",
    AuthorityClass.PUBLIC: "gateway",
    AuthorityClass.AGENT_SELF: "socket",
    AuthorityClass.SYSTEM: "priv",
}

_HEADER = re.compile(r'^\s*\[\s*action\s*\.\s*(?:"([^"]*)"|([A-Za-z0-9_-]+))\s*\]')
_KEYS = {"class", "resource", "description"}


def _header_lines(text: str) -> dict[str, int]:
    """Line number of each ``[action."name"]`` header (tomllib keeps none)."""
    found: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        m = _HEADER.match(raw)
        if m:
            found.setdefault(m.group(1) if m.group(1) is not None else m.group(2), n)
    return found


def parse_catalogue(
    text: str, source: str = "catalogue.toml"
) -> tuple[dict[str, ActionSpec], dict[str, int], list[str]]:
    """Parse the catalogue: (actions by name, header line by name, problems)."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return {}, {}, [f"{source}: invalid TOML: {e}"]
    except RecursionError:  # tomllib recurses per nesting level
        return {}, {}, [f"{source}: invalid TOML: nested too deeply"]
    if (problem := decoded_control_problem(data, source)) is not None:
        return {}, {}, [problem]
    lines = _header_lines(text)
    problems: list[str] = []
    extra = sorted(set(data) - {"action"})
    if extra:
        problems.append(f"{source}: unknown top-level key(s) {', '.join(extra)} (only [action.*])")
    actions = data.get("action", {})
    if not isinstance(actions, dict):
        return {}, lines, [*problems, f"{source}: 'action' must be a table of [action.\"name\"]"]
    catalogue: dict[str, ActionSpec] = {}
    for name, entry in actions.items():
        where = f"{source}:{lines.get(name, 0)}: action {name!r}"
        bad_name = action_name_problem(name)
        if bad_name:
            problems.append(f"{where}: {bad_name}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table")
            continue
        unknown = sorted(set(entry) - _KEYS)
        missing = sorted(_KEYS - set(entry))
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
        if unknown or missing:
            continue
        if not all(isinstance(entry[k], str) for k in _KEYS):
            problems.append(f"{where}: class, resource and description must be strings")
            continue
        try:
            authority = AuthorityClass(entry["class"])
        except ValueError:
            problems.append(
                f"{where}: unknown class {entry['class']!r} "
                f"(one of {', '.join(c.value for c in AuthorityClass)})"
            )
            continue
        if not entry["resource"] or not entry["description"].strip():
            problems.append(f"{where}: resource and description must not be empty")
            continue
        catalogue[name] = ActionSpec(name, authority, entry["resource"], entry["description"])
    return catalogue, lines, problems
