"""Trio mode for the Trio test directories only.

pytest-trio's ``enable_trio_mode`` conftest hooks are not path-specific, so
importing them in one directory's conftest turns trio mode on for the whole
session, including the TUI tests, which must run on asyncio (Textual). Here the
same two hooks apply pytest-trio's own ``automark`` and ``handle_fixture`` to
the directories listed, and leave every other test alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_trio.plugin import automark, handle_fixture

HERE = Path(__file__).parent
TRIO_DIRS = {"protocol", "server", "harness"}


def _in_trio_dir(path: Path) -> bool:
    try:
        return path.relative_to(HERE).parts[0] in TRIO_DIRS
    except (ValueError, IndexError):
        return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    automark([item for item in items if _in_trio_dir(item.path)])


def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    if _in_trio_dir(request.node.path):
        return handle_fixture(fixturedef, request, force_trio_mode=True)
    return None
