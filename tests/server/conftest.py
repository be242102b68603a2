"""Live servers on 127.0.0.1 port 0, one per test, for both transports.

A test module that sets ``ACROSS_NODES = True`` runs its ``server`` tests a third
time on three ``--redis`` nodes behind balancers (:mod:`tests.server.nodes`): what
one server promises, several sharing rooms must promise too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from tests.redisd import needs_redis
from tests.server.nodes import run_nodes
from triochat.server import Server, ServerConfig, serve

TEST_CONFIG = ServerConfig(host="127.0.0.1", port=0, tcp_port=0, rate_limit=0)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        kinds: list[Any] = ["memory", "sqlite"]
        if getattr(metafunc.module, "ACROSS_NODES", False):
            kinds.append(pytest.param("nodes", marks=needs_redis))
        metafunc.parametrize("server", kinds, indirect=True)


@pytest.fixture
async def server(
    nursery: trio.Nursery, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Server]:
    """A server with history in memory, or in SQLite (where every delivery waits for a
    commit), or three nodes sharing one Redis (typed as a server: tests use its URLs)."""
    if request.param == "nodes":
        async with run_nodes(TEST_CONFIG) as nodes:
            yield cast(Server, nodes)
        return
    db = str(tmp_path / "history.sqlite3") if request.param == "sqlite" else None
    running: Server = await nursery.start(serve, replace(TEST_CONFIG, db_path=db))
    yield running
    running.stop()


@pytest.fixture(params=["ws", "tcp"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(server: Server, scheme: str) -> str:
    """The server's URL for the transport under test."""
    return server.url(scheme)
