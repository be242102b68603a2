"""Several ``triochat serve --redis`` nodes on one real ``redis-server``, behind a
round-robin TCP balancer per transport, as an operator would run them.

:func:`run_nodes` yields a :class:`Nodes` that tests use where they would use one
:class:`Server`: ``url(scheme)`` is the balancer's, so the clients a test opens
one after another land on node 1, 2, 3, 1, ... Every byte goes through the
balancer unchanged (WebSocket upgrades included); when either side of a
connection ends, the balancer ends the other, as a layer-4 balancer does.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path

import trio

from tests.redisd import RedisServer, start_redis
from triochat.server import Server, ServerConfig, serve

SCHEMES = ("ws", "tcp")
COPY_BYTES = 65536


@dataclass
class Nodes:
    """Nodes sharing one Redis, seen through their balancers."""

    servers: list[Server]
    redis: RedisServer
    balanced: dict[str, str] = field(default_factory=dict)
    """Per scheme, the balancer's URL."""

    @property
    def config(self) -> ServerConfig:
        return self.servers[0].config

    def url(self, scheme: str) -> str:
        return self.balanced[scheme]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@asynccontextmanager
async def run_nodes(
    config: ServerConfig, count_: int = 3, *, appendfsync: str | None = None
) -> AsyncIterator[Nodes]:
    """``count_`` nodes with ``config`` on a fresh ``redis-server``, and their balancers.

    The Redis directory is short-lived and short-named: a Unix socket path has at
    most 107 bytes, which a test's ``tmp_path`` can exceed."""
    with (
        tempfile.TemporaryDirectory(prefix="tc-redis-") as folder,
        start_redis(Path(folder), appendfsync=appendfsync) as redis,
    ):
        async with trio.open_nursery() as nursery:
            servers: list[Server] = []
            for n in range(count_):
                node = replace(config, redis_url=redis.url, node_id=f"node{n + 1}")
                servers.append(await nursery.start(serve, node))
            nodes = Nodes(servers, redis)
            try:
                async with trio.open_nursery() as balancers:
                    turn = count()  # one rotation for both: clients spread whatever they speak
                    for scheme in SCHEMES:
                        targets = [server.url(scheme) for server in servers]
                        nodes.balanced[scheme] = await balancers.start(
                            _balance, scheme, targets, turn
                        )
                    try:
                        yield nodes
                    finally:
                        balancers.cancel_scope.cancel()
            finally:
                nodes.stop()


async def _balance(
    scheme: str, targets: list[str], turn: Iterator[int], *, task_status: trio.TaskStatus[str]
) -> None:
    """Accept on 127.0.0.1, hand each connection to the next target in turn."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(f"{scheme}://127.0.0.1:{port}")
        while True:
            stream = await listeners[0].accept()
            target = targets[next(turn) % len(targets)]
            nursery.start_soon(_carry, stream, target)


async def _carry(client: trio.SocketStream, target: str) -> None:
    host, _, port = target.partition("://")[2].rpartition(":")
    try:
        server = await trio.open_tcp_stream(host, int(port))
    except OSError:
        await client.aclose()
        return
    async with client, server, trio.open_nursery() as nursery:
        nursery.start_soon(_copy, client, server, nursery.cancel_scope)
        nursery.start_soon(_copy, server, client, nursery.cancel_scope)


async def _copy(source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope) -> None:
    """Copy until ``source`` ends, then end the whole connection."""
    try:
        while data := await source.receive_some(COPY_BYTES):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        both.cancel()
