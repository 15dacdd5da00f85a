"""Regenerate ``agent.json`` and ``operator.json`` from the route tables.

``python -m enforcer.openapi`` (``--check`` exits 1 if a checked-in document is stale).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from enforcer import agent_api, operator_api
from enforcer.openapi import build_document, document_path


def documents() -> dict[str, dict[str, Any]]:
    """Both documents, freshly built."""
    return {
        "agent": build_document(
            agent_api.TITLE,
            "JSON over the agent's own unix socket (RUN/agents/<name>.sock). The principal is "
            "the agent the socket belongs to, confirmed by SO_PEERCRED; only agent-self actions "
            "exist here.",
            agent_api.ROUTES,
        ),
        "operator": build_document(
            operator_api.TITLE,
            "JSON over RUN/core.sock, reached only through the gateway, which marks "
            "authenticated requests `X-Hive-Principal: operator`.",
            operator_api.ROUTES,
        ),
    }


def main(argv: list[str]) -> int:
    """Write (or with ``--check`` compare) the documents."""
    stale = []
    for surface, doc in documents().items():
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        path = document_path(surface)
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"stale: {name} (run python -m enforcer.openapi)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
