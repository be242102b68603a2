"""A temporary data home for the whole run, and Trio mode for the Trio test directories only.

Data home: every XDG base directory points into one temporary folder before any
test runs (and so for every process a test starts), so no test reads or writes
the user's own triochat files; at the end of the run the real default history
path is compared with how it was at the start, and a difference fails the run.

Trio mode:
pytest-trio's ``enable_trio_mode`` conftest hooks are not path-specific, so
importing them in one directory's conftest turns trio mode on for the whole
session, including the TUI tests, which must run on asyncio (Textual). Here the
same two hooks apply pytest-trio's own ``automark`` and ``handle_fixture`` to
the directories listed, and leave every other test alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pytest_trio.plugin import automark, handle_fixture

from triochat.server.store import default_db_path

HERE = Path(__file__).parent
TRIO_DIRS = {"protocol", "server", "harness"}
XDG_DIRS = ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")


class DataHome:
    """The run's temporary XDG directories, and a fingerprint of the user's real history."""

    def __init__(self) -> None:
        self.real_db = default_db_path()
        self.before = fingerprint(self.real_db.parent)
        self.root = Path(tempfile.mkdtemp(prefix="triochat-tests-"))
        self._saved = {name: os.environ.get(name) for name in XDG_DIRS}
        for name in XDG_DIRS:
            folder = self.root / name.lower()
            folder.mkdir()
            os.environ[name] = str(folder)

    def touched(self) -> bool:
        return fingerprint(self.real_db.parent) != self.before

    def remove(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.root, ignore_errors=True)


def fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """Every file in ``folder`` with its size and modification time; [] when it is absent."""
    if not folder.is_dir():
        return []
    return sorted(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in folder.iterdir()
    )


_data_home: DataHome | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _data_home
    _data_home = DataHome()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _data_home is not None and _data_home.touched():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep(
                "=", f"FAILED: the run changed the user's data in {_data_home.real_db.parent}"
            )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _data_home is not None:
        _data_home.remove()


@pytest.fixture(scope="session")
def data_home() -> DataHome:
    """This run's temporary data home (see the module docstring)."""
    assert _data_home is not None
    return _data_home


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
