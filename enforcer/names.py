"""The one definition of an agent name, shared by every layer.

At most 25 characters so that every name derived from it still fits its
kernel or system limit: the agent's user ``hive-a-<name>`` (32 characters),
its namespace ``hive-<name>`` and its socket path.
"""

from __future__ import annotations

import re

__all__ = ["AGENT_NAME", "AGENT_NAME_RE", "is_agent_name"]

AGENT_NAME = r"[a-z][a-z0-9-]{0,24}"
AGENT_NAME_RE = re.compile(rf"^{AGENT_NAME}$")


def is_agent_name(name: str) -> bool:
    """True if ``name`` is a well-formed agent name."""
    return AGENT_NAME_RE.fullmatch(name) is not None
