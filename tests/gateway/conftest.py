"""Fixtures: a running gateway stack (core double on core.sock, agent double, gateway)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.gateway.stack import Stack


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """The gateway between a core double and an agent UI double, logged-out."""
    async with Stack() as running:
        yield running
