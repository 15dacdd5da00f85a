"""Helpers of the audit's tests: copies of the shipped policy, running the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

from enforcer.cli import main
from enforcer.config import default_policy_dir

__all__ = ["audit", "audit_json", "check_of", "policy_copy", "with_line"]


def policy_copy(dest: Path) -> Path:
    """A copy of the shipped policy directory to plant faults in."""
    shutil.copytree(default_policy_dir(), dest, ignore=shutil.ignore_patterns("__*"))
    return dest


def with_line(directory: Path, file: str, line: str) -> int:
    """Append ``line`` to ``file``; return its line number."""
    path = directory / file
    text = path.read_text()
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + line + "\n")
    return len((text + line).splitlines())


def audit(*args: str) -> tuple[int, str, str]:
    """Run ``hive-boundary audit ARGS``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["audit", *args])
    return code, out.getvalue(), err.getvalue()


def audit_json(*args: str) -> tuple[int, dict[str, Any]]:
    """Run the audit with ``--json``: (exit code, the parsed report)."""
    code, out, _ = audit(*args, "--json")
    data: dict[str, Any] = json.loads(out)
    return code, data


def check_of(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    """One check of a JSON report, by id."""
    for section in report["sections"]:
        for c in section["checks"]:
            if c["id"] == check_id:
                result: dict[str, Any] = c
                return result
    raise KeyError(check_id)
