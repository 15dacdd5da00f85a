"""``model.conf``: the engine accepts exactly one Casbin model.

The compiled index implements these semantics (and the differential property
test proves it equal to Casbin's ``enforce``), so any other model - a deny
effect, another matcher, an extra section pycasbin would silently accept - is
refused naming the line, instead of being enforced with the wrong meaning.
"""

from __future__ import annotations

import re

__all__ = ["CANONICAL", "MODEL_TEXT", "model_problems"]

#: section -> (key, value) of the one model the engine implements.
CANONICAL: dict[str, tuple[str, str]] = {
    "request_definition": ("r", "sub, chan, obj, act"),
    "policy_definition": ("p", "sub, chan, obj, act"),
    "role_definition": ("g", "_, _"),
    "policy_effect": ("e", "some(where (p.eft == allow))"),
    "matchers": (
        "m",
        "g(r.sub, p.sub) && r.chan == p.chan && r.act == p.act && resMatch(r.sub, r.obj, p.obj)",
    ),
}

#: The canonical model as Casbin text (the reference enforcer is built from it).
MODEL_TEXT = "".join(f"[{sec}]\n{key} = {value}\n\n" for sec, (key, value) in CANONICAL.items())

_SECTION = re.compile(r"\[([^\]]*)\]")


def _norm(value: str) -> str:
    return "".join(value.split())


def model_problems(text: str, source: str = "model.conf") -> list[str]:
    """Every way ``text`` differs from the canonical model, each naming file:line."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    section: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = _SECTION.fullmatch(line)
        if m:
            section = m.group(1).strip()
            if section not in CANONICAL:
                problems.append(
                    f"{source}:{n}: unknown section [{section}] "
                    f"(the model has exactly {', '.join(CANONICAL)})"
                )
            continue
        if section is None:
            problems.append(f"{source}:{n}: text outside any section: {line!r}")
            continue
        if section not in CANONICAL:
            continue  # already reported at the header
        key, sep, value = line.partition("=")
        key = key.strip()
        want_key, want_value = CANONICAL[section]
        if not sep:
            problems.append(f"{source}:{n}: expected 'key = value' in [{section}], got {line!r}")
        elif key != want_key:
            problems.append(
                f"{source}:{n}: unknown key {key!r} in [{section}] (only {want_key!r} is defined)"
            )
        elif section in seen:
            problems.append(f"{source}:{n}: duplicate {key!r} (first at line {seen[section]})")
        else:
            seen[section] = n
            if _norm(value) != _norm(want_value):
                problems.append(
                    f"{source}:{n}: [{section}] {key} = {value.strip()!r} is not supported; "
                    f"the engine implements exactly {want_value!r}"
                )
    for sec, (key, _) in CANONICAL.items():
        if sec not in seen and not any(f"[{sec}]" in p for p in problems):
            problems.append(f"{source}: missing [{sec}] {key} = ...")
    return problems
