"""A temporary data home for the whole run, and Trio mode for the Trio test directories only.

Data home: every XDG base directory points into one temporary folder before any
test runs (and so for every process a test starts), so no test reads or writes
the user's own triochat files; at the end of the run the real default history
path is compared with how it was at the start, and a difference fails the run.

Under pytest-xdist each worker makes its own data home the same way; the
controller, which computed the real path before any worker started, is the one
that compares it at the end (a worker inherits the controller's temporary
variables, so its "real" path would not be the user's).

Running alone: a test marked ``alone`` runs while no other test of the run does.
Under pytest-xdist every test holds a shared lock on a file of the controller's
data home, an ``alone`` test an exclusive one, and a gate taken first gives the
exclusive lock precedence (workers wait for it rather than starve it). Without
workers the locks are never contended. ``ALONE`` marks tests of files this
conftest does not own.

Trio mode:
pytest-trio's ``enable_trio_mode`` conftest hooks are not path-specific, so
importing them in one directory's conftest turns trio mode on for the whole
session, including the TUI tests, which must run on asyncio (Textual). Here the
same two hooks apply pytest-trio's own ``automark`` and ``handle_fixture`` to
the directories listed, and leave every other test alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pytest_trio.plugin import automark, handle_fixture

from triochat.server.store import default_db_path

HERE = Path(__file__).parent
TRIO_DIRS = {"protocol", "server", "harness"}
XDG_DIRS = ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
LOCKS = "TRIOCHAT_TEST_LOCKS"
"""The folder of the run's ``alone`` locks, set by the controller for its workers."""
ALONE = {
    # Closes 96 connections and connects at once: the subprocess server may not have
    # seen them go yet, and answers 503 (11 of 15 runs failed with 4 busy loops on 2 CPUs).
    (
        "server/test_connection_limits.py",
        "test_serve_raises_its_files_limit_and_refuses_politely_beyond_it",
    ),
}
"""(path under tests/, function) of tests to run alone, in files not owned here."""


class DataHome:
    """The run's temporary XDG directories, and a fingerprint of the user's real history.

    ``guard``: whether this process checks the real history (the controller, not a worker).
    """

    def __init__(self, *, guard: bool = True) -> None:
        self.guard = guard
        self.real_db = default_db_path()
        self.before = fingerprint(self.real_db.parent) if guard else []
        self.root = Path(tempfile.mkdtemp(prefix="triochat-tests-"))
        self._saved = {name: os.environ.get(name) for name in XDG_DIRS}
        for name in XDG_DIRS:
            folder = self.root / name.lower()
            folder.mkdir()
            os.environ[name] = str(folder)

    def touched(self) -> bool:
        return self.guard and fingerprint(self.real_db.parent) != self.before

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
    worker = hasattr(config, "workerinput")
    _data_home = DataHome(guard=not worker)
    if not worker:
        os.environ[LOCKS] = str(_data_home.root)


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
    if not hasattr(config, "workerinput"):
        os.environ.pop(LOCKS, None)


@contextmanager
def _turn(alone: bool) -> Iterator[None]:
    """Hold the run's lock: exclusive when ``alone``, else shared (see the module docstring)."""
    folder = Path(os.environ[LOCKS])
    with open(folder / "gate.lock", "a") as gate, open(folder / "run.lock", "a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)  # an alone test waiting here holds the others back
        try:
            fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # closing the files lets go of both locks


def _listed_alone(item: pytest.Item) -> bool:
    try:
        path = item.path.relative_to(HERE).as_posix()
    except ValueError:
        return False
    return (path, getattr(item, "originalname", item.name)) in ALONE


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Set-up, call and tear-down of each test within its turn (see the module docstring)."""
    with _turn(item.get_closest_marker("alone") is not None):
        return (yield)


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
    for item in items:
        if _listed_alone(item):
            item.add_marker(pytest.mark.alone)


def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    if _in_trio_dir(request.node.path):
        return handle_fixture(fixturedef, request, force_trio_mode=True)
    return None
