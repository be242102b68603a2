"""Live servers on 127.0.0.1 port 0, one per test, for both transports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from triochat.server import Server, ServerConfig, serve
from triochat.server.config import WS_ENGINES, WsEngine

TEST_CONFIG = ServerConfig(host="127.0.0.1", port=0, tcp_port=0, rate_limit=0)


@pytest.fixture(params=["memory", "sqlite", "wsproto"])
async def server(
    nursery: trio.Nursery, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Server]:
    """A server with history in memory, or in SQLite (where every delivery waits for a commit).

    ``wsproto``: history in memory, WebSocket spoken by ``--ws-engine wsproto``;
    the other two use trio-websocket.
    """
    db = str(tmp_path / "history.sqlite3") if request.param == "sqlite" else None
    engine: WsEngine = "wsproto" if request.param == "wsproto" else "trio-websocket"
    running: Server = await nursery.start(serve, replace(TEST_CONFIG, db_path=db, ws_engine=engine))
    yield running
    running.stop()


@pytest.fixture(params=WS_ENGINES)
def ws_engine(request: pytest.FixtureRequest) -> WsEngine:
    """For tests that start their own server: each way of speaking WebSocket."""
    engine: WsEngine = request.param
    return engine


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The wsproto server is there for its WebSocket: over TCP it is the memory server again."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        redundant = params.get("server") == "wsproto" and params.get("scheme") == "tcp"
        (dropped if redundant else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["ws", "tcp"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(server: Server, scheme: str) -> str:
    """The server's URL for the transport under test."""
    return server.url(scheme)
