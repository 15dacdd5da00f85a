"""The daemons' subcommands: ``hive-boundary priv`` (and, later, ``core``, ``gateway``).

A small dispatch table: subcommand -> the module implementing it. Each module
provides ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them into the CLI, so adding a daemon is one line here.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["DAEMONS", "register"]

# subcommand -> (module, one-line help)
DAEMONS: dict[str, tuple[str, str]] = {
    "priv": ("enforcer.priv", "run hive-priv, the socket-activated root helper"),
    "gateway": ("enforcer.gateway", "run the gateway, the operator's one origin"),
    "core": ("enforcer.core", "run the core daemon: core.sock and one socket per agent"),
}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add one subcommand per daemon in :data:`DAEMONS`."""
    for name, (module_name, help_text) in DAEMONS.items():
        module = importlib.import_module(module_name)
        parser = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)
