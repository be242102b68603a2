"""Stopping: every client is told and closed politely, and nothing is left behind."""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.server.helpers import host_port
from triochat.protocol import decode_server, encode
from triochat.protocol.events import Hello, Notice
from triochat.server import Server, ServerConfig, serve

CONFIG = ServerConfig(port=0, tcp_port=0, drain_timeout=2.0)


def _all_tasks() -> set[trio.lowlevel.Task]:
    found: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is not None:
            found.add(task)
            stack.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return found


async def _tcp_client_until_eof(
    url: str, nick: str, lines: list[bytes], *, task_status: trio.TaskStatus[None]
) -> None:
    host, port = host_port(url)
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(encode(Hello(nick=nick)))
    data = await stream.receive_some()  # the welcome: we are in
    task_status.started()
    while chunk := await stream.receive_some():
        data += chunk
    lines.extend(line for line in data.split(b"\n") if line)
    await stream.aclose()


async def _ws_client_until_closed(
    url: str, nick: str, lines: list[bytes], codes: list[int], *, task_status: trio.TaskStatus[None]
) -> None:
    async with open_websocket_url(url) as ws:
        await ws.send_message(encode(Hello(nick=nick)).decode())
        welcome = await ws.get_message()
        assert isinstance(welcome, str)
        lines.extend(line.encode() for line in welcome.splitlines())
        task_status.started()
        try:
            while True:
                message = await ws.get_message()
                assert isinstance(message, str)
                lines.extend(line.encode() for line in message.splitlines())
        except ConnectionClosed as closed:
            codes.append(closed.reason.code if closed.reason else -1)


async def test_stop_tells_every_client_and_leaves_no_task_or_connection() -> None:
    before = _all_tasks()
    ws_lines: list[bytes] = []
    tcp_lines: list[bytes] = []
    codes: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, CONFIG)
            async with trio.open_nursery() as clients:
                await clients.start(_ws_client_until_closed, server.url("ws"), "w", ws_lines, codes)
                await clients.start(_tcp_client_until_eof, server.url("tcp"), "t", tcp_lines)
                started = trio.current_time()
                server.stop()
        assert trio.current_time() - started < CONFIG.drain_timeout
    assert _all_tasks() == before
    assert server.connections == 0
    for lines in (ws_lines, tcp_lines):
        assert decode_server(lines[-1]) == Notice(
            code="shutting_down", text="the server is shutting down"
        )
    assert codes == [1001]


async def test_a_client_that_ignores_goodbye_cannot_hold_the_server_past_the_drain() -> None:
    config = ServerConfig(port=0, tcp_port=0, drain_timeout=0.5, close_timeout=30)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            host, port = host_port(server.url("tcp"))
            stubborn = await trio.open_tcp_stream(host, port)
            await stubborn.send_all(encode(Hello(nick="stubborn")))
            assert b'"type":"welcome"' in await stubborn.receive_some()
            started = trio.current_time()
            server.stop()
        elapsed = trio.current_time() - started
    assert config.drain_timeout <= elapsed < config.drain_timeout + 1
    await stubborn.aclose()
