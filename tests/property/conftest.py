"""Property tests: report how many examples each fuzz target ran (``test_fuzz_*``)."""

from __future__ import annotations

import pytest

from tests.reliability.fuzzstats import EXAMPLES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not EXAMPLES:
        return
    terminalreporter.section("fuzz examples run per target")
    for target, n in sorted(EXAMPLES.items()):
        terminalreporter.write_line(f"{target}: {n} examples")
