"""One connection's failure never reaches another connection or the listener.

Each case makes one peer misbehave at the byte level while a watcher sits in
the room; afterwards the watcher saw exactly that peer leave, and a brand-new
client can still connect and chat.
"""

from __future__ import annotations

import socket
import struct

import trio
from wsproto.events import CloseConnection

from tests.server.helpers import RawWebSocket, host_port, settle_join, skip_until, still_serving
from triochat.client import open_client
from triochat.protocol import encode
from triochat.protocol.events import Hello, Joined, Left, LeftReason, Quit
from triochat.server import Server

ACROSS_NODES = True


async def test_ping_after_server_close_does_not_crash_the_server(
    server: Server,
) -> None:
    """A Ping that arrives after the server's Close (what trips trio-websocket #184)."""
    with trio.fail_after(10):
        async with open_client(server.url("tcp"), "watcher") as watcher:
            await settle_join(watcher)
            rude = await RawWebSocket.connect(server.url("ws"))
            await rude.send_text(encode(Hello(nick="rude")).decode())
            await rude.send_text(encode(Quit()).decode())
            await rude.next_event(CloseConnection)
            # Answer the server's Close with a masked, empty Ping instead of a Close.
            await rude.stream.send_all(b"\x89\x80\x00\x00\x00\x00")
            await skip_until(watcher, Left, nick="rude", reason=LeftReason.QUIT)
            await _drain_until_closed(rude.stream)
            await still_serving(server)


async def _drain_until_closed(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def test_reset_mid_line_is_a_disconnect_for_that_client_only(server: Server) -> None:
    with trio.fail_after(10):
        async with open_client(server.url("ws"), "watcher") as watcher:
            await settle_join(watcher)
            stream = await trio.open_tcp_stream(*host_port(server.url("tcp")))
            await stream.send_all(encode(Hello(nick="vanisher")))
            await skip_until(watcher, Joined, nick="vanisher")
            await stream.send_all(b'{"type":"say","room":"lobby","te')
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()  # with SO_LINGER 0: an RST, not a FIN
            left = await skip_until(watcher, Left, nick="vanisher")
            assert left.reason is LeftReason.DISCONNECTED
            await still_serving(server)


async def test_invalid_websocket_frames_end_only_that_connection(server: Server) -> None:
    with trio.fail_after(10):
        async with open_client(server.url("tcp"), "watcher") as watcher:
            await settle_join(watcher)
            garbler = await RawWebSocket.connect(server.url("ws"))
            await garbler.send_text(encode(Hello(nick="garbler")).decode())
            await skip_until(watcher, Joined, nick="garbler")
            # Reserved opcode 0x3, unmasked: two protocol violations in one frame.
            await garbler.stream.send_all(b"\x83\x05hello" * 4)
            left = await skip_until(watcher, Left, nick="garbler")
            assert left.reason is LeftReason.DISCONNECTED
            await _drain_until_closed(garbler.stream)
            await still_serving(server)
