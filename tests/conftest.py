"""Suite-wide set-up: Hypothesis profiles, CI skip policy, shared fixtures.

- ``HYPOTHESIS_PROFILE=ci`` (the default under ``make test``) keeps the suite
  well under 20 minutes on 2 cores; ``deep`` is for long local runs; ``dev``
  is quick.
- With ``CI=true`` a skipped test fails the run: tests that need root, netns,
  nftables or Chromium must really run in CI.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.netns.helpers import Names, fresh_names, sweep

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a skip hides a boundary that was never checked: fail the run.
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"} and _SKIPPED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"} and _SKIPPED:
        terminalreporter.write_line(
            f"CI=true: {len(_SKIPPED)} skipped test(s) count as failures:", red=True
        )
        for nodeid in _SKIPPED:
            terminalreporter.write_line(f"  {nodeid}", red=True)


def require_root() -> None:
    """Skip (a failure in CI) unless running as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


@contextlib.contextmanager
def tmpfs(size: str, prefix: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"2m"``) of the caller's own (root), unmounted and removed after."""
    require_root()
    mount = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "hbtest", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


def fill(disk: Path) -> Path:
    """Take every free block of ``disk``; returns the filler (remove it to give space back)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def wait_until(what: str, ready: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll ``ready`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def unique() -> str:
    """A short unique token for names of namespaces, links, tables, users."""
    return secrets.token_hex(3)


@pytest.fixture
def hive_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A fresh (run_dir, state_dir) pair. Unix socket paths must stay short (108 bytes)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))
    run_dir, state_dir = base / "run", base / "state"
    run_dir.mkdir()
    state_dir.mkdir()
    yield run_dir, state_dir
    import shutil

    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def names() -> Iterator[Names]:
    """Unique namespace/table/subnet names for one netns test, swept afterwards."""
    require_root()
    n = fresh_names()
    try:
        yield n
    finally:
        sweep(n)
