"""Fixtures: a running gateway stack (core double on core.sock, agent double, gateway)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.stack import Stack


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The gateway between a core double and an agent UI double, logged-out."""
    async with Stack() as running:
        yield running


@pytest.fixture
async def sock_dir() -> AsyncIterator[Path]:
    """A short private directory for unix sockets (paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="hbu-", dir="/tmp") as d:
        yield Path(d)
