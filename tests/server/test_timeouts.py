"""Every timeout is a cancel scope: handshake, WebSocket upgrade, keepalive.

Sessions over memory streams run on trio's MockClock (``autojump_clock``), so
tens of seconds of timeout pass instantly; the WebSocket cases need real
sockets and use short real timeouts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio
import trio.testing
from trio_websocket import wrap_client_stream

from tests.server.helpers import host_port, settle_join, skip_until
from triochat.client import Address, Client, open_client
from triochat.protocol import decode_server, encode
from triochat.protocol.events import Error, Hello, Left, LeftReason, Ping
from triochat.server import Server, ServerConfig, serve
from triochat.server.hub import Hub
from triochat.server.session import Session
from triochat.transport.tcp import StreamConnection

CONFIG = ServerConfig(port=0, tcp_port=0)


async def _read_to_eof(stream: trio.abc.ReceiveStream) -> list[bytes]:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return [line for line in data.split(b"\n") if line]


@asynccontextmanager
async def _session(hub: Hub) -> AsyncIterator[tuple[trio.abc.Stream, Session]]:
    """A real Session over an in-memory stream; yields the client's end."""
    client_end, server_end = trio.testing.memory_stream_pair()
    session = Session(StreamConnection(server_end, max_line=CONFIG.max_line), hub, CONFIG)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        yield client_end, session


async def test_no_hello_in_time_gets_hello_timeout_then_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _session(Hub(CONFIG)) as (client_end, session):
        lines = await _read_to_eof(client_end)
        assert trio.current_time() >= CONFIG.handshake_timeout
    errors = [decode_server(line) for line in lines]
    assert [e.code for e in errors if isinstance(e, Error)] == ["hello_timeout"]
    assert session.reason is LeftReason.DISCONNECTED


async def test_a_stranger_on_a_stream_that_is_not_a_socket_is_answered_before_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No direct write carries what a stranger is sent (a memory stream, later a
    TLS stream) and it has no writer task yet: its reader must write it."""
    async with _session(Hub(CONFIG)) as (client_end, session):
        await client_end.send_all(b'{"type":"say","room":"dev","text":"hi","id":"s1"}\n')
        data = await client_end.receive_some()
        assert trio.current_time() < CONFIG.handshake_timeout
        error = decode_server(bytes(data).rstrip(b"\n"))
        assert isinstance(error, Error)
        assert (error.code, error.ref) == ("hello_first", "s1")
        session.close(LeftReason.QUIT)


async def test_silent_tcp_peer_is_pinged_then_dropped_with_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub(CONFIG)
    async with _session(hub) as (client_end, session):
        await client_end.send_all(encode(Hello(nick="mute")))
        lines = await _read_to_eof(client_end)
    events = [decode_server(line) for line in lines]
    assert Ping(token="keepalive") in events
    last = events[-1]
    assert isinstance(last, Error)
    assert (last.code, last.message) == ("timeout", "no answer to the keepalive ping within 20 s")
    assert session.reason is LeftReason.TIMEOUT
    limit = CONFIG.keepalive_interval + CONFIG.keepalive_timeout
    assert limit <= trio.current_time() < limit + CONFIG.close_timeout + 1
    assert len(hub) == 0


async def test_a_peer_that_answers_pings_stays(autojump_clock: trio.testing.MockClock) -> None:
    hub = Hub(CONFIG)
    async with _session(hub) as (client_end, session):
        client = Client(StreamConnection(client_end, max_line=1 << 20), Address("tcp", "-", 0))
        await client.greet(Hello(nick="chatty"))
        with trio.move_on_after(10 * CONFIG.keepalive_interval):
            async for _ in client:  # iterating answers the server's pings
                pass
        assert session.reason is None
        assert len(hub) == 1
        await client.aclose()


async def test_websocket_upgrade_that_never_completes_is_closed(nursery: trio.Nursery) -> None:
    config = ServerConfig(port=0, tcp_port=None, handshake_timeout=0.3)
    server: Server = await nursery.start(serve, config)
    host, port = host_port(server.url("ws"))
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: slow\r\n")  # ...and never the rest
        assert await stream.receive_some() == b""
    assert server.connections == 0


async def test_websocket_peer_that_stops_answering_pings_is_dropped(nursery: trio.Nursery) -> None:
    config = ServerConfig(port=0, tcp_port=0, keepalive_interval=0.2, keepalive_timeout=0.3)
    server: Server = await nursery.start(serve, config)
    host, port = host_port(server.url("ws"))
    with trio.fail_after(10):
        async with open_client(server.url("tcp"), "watcher") as watcher, trio.open_nursery() as ws:
            await settle_join(watcher)
            stream = await trio.open_tcp_stream(host, port)
            # With no room in its queue, trio-websocket's reader blocks on the first
            # message we never take, so it stops answering Pings: a hung peer.
            mute = await wrap_client_stream(ws, stream, host, "/", message_queue_size=0)
            await mute.send_message(encode(Hello(nick="mute")).decode())
            left = await skip_until(watcher, Left, nick="mute")
            assert left.reason is LeftReason.TIMEOUT
            ws.cancel_scope.cancel()


async def test_keepalive_interval_zero_never_probes(autojump_clock: trio.testing.MockClock) -> None:
    config = replace(CONFIG, keepalive_interval=0)
    client_end, server_end = trio.testing.memory_stream_pair()
    session = Session(StreamConnection(server_end, max_line=config.max_line), Hub(config), config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await client_end.send_all(encode(Hello(nick="quiet")))
        received = b""
        with trio.move_on_after(1000 * CONFIG.keepalive_interval):
            while chunk := await client_end.receive_some():
                received += chunk
        assert b'"type":"ping"' not in received
        assert session.reason is None
        nursery.cancel_scope.cancel()
