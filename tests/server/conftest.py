"""Live servers on 127.0.0.1 port 0, one per test, for both transports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from triochat.server import Server, ServerConfig, serve

TEST_CONFIG = ServerConfig(host="127.0.0.1", port=0, tcp_port=0, rate_limit=0)


@pytest.fixture(params=["memory", "sqlite"])
async def server(
    nursery: trio.Nursery, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Server]:
    """A server with history in memory, or in SQLite (where every delivery waits for a commit)."""
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
