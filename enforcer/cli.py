"""The ``hive-boundary`` command.

Each layer contributes its subcommands through a ``register(subparsers)``
function in its own module (``enforcer.policy.cli``, ``netns.cli``,
``enforcer.audit``, the daemons), so this file only wires them together.
Exit codes everywhere: 0 ok, 1 findings, 2 usage or unreadable input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from enforcer import __version__

__all__ = ["EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

# Modules that provide `register(subparsers) -> None`. A module that does not
# exist yet is skipped, so layers can land independently.
_COMMAND_MODULES = (
    "enforcer.policy.cli",
    "enforcer.daemons",
    "enforcer.audit",
    "netns.cli",
    "enforcer.demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits 2 on usage errors already; keep the message short.
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every available layer's subcommands."""
    parser = _Parser(
        prog="hive-boundary",
        description="A policy-engine-driven security boundary for hosts running AI agents.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        register: Callable[[argparse._SubParsersAction[_Parser]], None] = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
