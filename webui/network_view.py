"""The audit page's network section: the last connectivity probe as a heat-map.

The core runs unprivileged and cannot probe namespaces itself; whoever runs
the probe as root (``hive-boundary netns probe --json`` / ``hive-boundary
audit``) leaves its result in :data:`PROBE_FILE` under the state directory::

    {"at": <unix time>,
     "probe": <netns.probe.ProbeResult.to_json()>,
     "drift": {"table": "hive", "in_sync": true, "lines": ["..."]} | null}

A bare ``ProbeResult.to_json()`` object is accepted too. :func:`parse_probe`
is pure and never raises on bad data: it says what is wrong instead, so the
page can state clearly that no (usable) probe data is available.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PROBE_FILE", "Heat", "NetworkView", "load_probe", "parse_probe"]

PROBE_FILE = "network-probe.json"
"""File name, under ``HiveConfig.state_dir``, of the last probe's result."""

_MAX_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Heat:
    """One cell: what the policy expects, what the probe saw, and whether they agree."""

    expected: bool
    outcome: str
    ok: bool

    @property
    def css(self) -> str:
        """The heat-map colour class."""
        if not self.ok:
            return "mismatch"
        return "reach" if self.expected else "block"

    @property
    def label(self) -> str:
        """Words for the cell (colour is never the only signal)."""
        seen = "reached" if self.outcome == "open" else f"blocked ({self.outcome})"
        want = "allow" if self.expected else "deny"
        return f"{seen}; policy says {want}" + ("" if self.ok else " - MISMATCH")


@dataclass(frozen=True, slots=True)
class NetworkView:
    """What the audit page shows about the network (``available`` False: say why)."""

    available: bool
    problem: str = ""
    at: float | None = None
    sources: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    cells: tuple[tuple[Heat | None, ...], ...] = ()
    mismatches: int = 0
    drift_known: bool = False
    in_sync: bool = False
    drift_lines: tuple[str, ...] = ()


def _cell(raw: Any) -> tuple[str, str, Heat] | None:
    if not isinstance(raw, dict):
        return None
    source, target = raw.get("source"), raw.get("target")
    expected, outcome = raw.get("expected"), raw.get("outcome")
    if not (
        isinstance(source, str)
        and isinstance(target, str)
        and isinstance(expected, bool)
        and isinstance(outcome, str)
    ):
        return None
    reached = outcome == "open"
    return source, target, Heat(expected, outcome, reached == expected)


def parse_probe(data: Any) -> NetworkView:
    """The view of a probe document (see the module docstring)."""
    if not isinstance(data, dict):
        return NetworkView(False, "the probe file is not a JSON object")
    probe = data.get("probe", data)
    raw_cells = probe.get("cells") if isinstance(probe, dict) else None
    if not isinstance(raw_cells, list):
        return NetworkView(False, "the probe file has no list of cells")
    parsed = [_cell(c) for c in raw_cells]
    good = [c for c in parsed if c is not None]
    if not good:
        return NetworkView(False, "the probe file has no valid cells")
    sources = tuple(sorted({s for s, _, _ in good}, key=lambda s: (s != "host", s)))
    targets = tuple(sorted({t for _, t, _ in good}))
    by_pair = {(s, t): h for s, t, h in good}
    cells = tuple(tuple(by_pair.get((s, t)) for t in targets) for s in sources)
    at = data.get("at")
    drift = data.get("drift")
    drift_known = isinstance(drift, dict) and isinstance(drift.get("in_sync"), bool)
    lines: tuple[str, ...] = ()
    if drift_known and isinstance(drift, dict) and isinstance(drift.get("lines"), list):
        lines = tuple(str(x) for x in drift["lines"][:100])
    return NetworkView(
        available=True,
        at=float(at) if isinstance(at, int | float) and math.isfinite(at) else None,
        sources=sources,
        targets=targets,
        cells=cells,
        mismatches=sum(1 for _, _, h in good if not h.ok),
        drift_known=drift_known,
        in_sync=bool(drift_known and isinstance(drift, dict) and drift["in_sync"]),
        drift_lines=lines,
    )


def load_probe(state_dir: Path) -> NetworkView:
    """Read :data:`PROBE_FILE` from ``state_dir`` (absent or unreadable: say so)."""
    path = state_dir / PROBE_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return NetworkView(
            False,
            "no probe has been run yet (run `hive-boundary netns probe` as root; "
            f"its result goes to {path})",
        )
    except OSError as e:
        return NetworkView(False, f"cannot read {path}: {e.strerror}")
    if len(raw) > _MAX_BYTES:
        return NetworkView(False, f"{path} is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return NetworkView(False, f"{path} is not valid JSON")
    return parse_probe(data)
