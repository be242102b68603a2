"""TUI tests run on asyncio (pytest-asyncio); Trio mode is *not* enabled here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tui.helpers import ServerThread


@pytest.fixture
def server() -> Iterator[ServerThread]:
    running = ServerThread()
    running.start()
    yield running
    running.stop()
