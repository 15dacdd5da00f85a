"""How many examples each fuzz target ran (printed in pytest's terminal summary)."""

from __future__ import annotations

import collections

__all__ = ["EXAMPLES", "count"]

EXAMPLES: collections.Counter[str] = collections.Counter()


def count(target: str) -> None:
    """Record one example run against ``target``."""
    EXAMPLES[target] += 1
