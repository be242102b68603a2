"""The send side's invariants (triochat/server/outbox.py), each on real sockets.

1. Bytes reach the socket in the order they were accepted: held bytes (a frame
   the socket took in part) first, then control frames, then lines.
2. Nothing is written after a write was cut short.
3. No text frame follows a Close, sent or received.
4. A leaving client never gets its own ``left``: the outbox is sealed before the
   session leaves its rooms.
5. Nothing starts a writer in a session's nursery once its reading is over (the
   nursery may close before the session's task is back).
"""

from __future__ import annotations

import socket
from contextlib import AsyncExitStack
from functools import partial

import pytest
import trio
import trio.testing
import wsproto
import wsproto.connection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from harness.raw import RawClient, open_raw
from tests.server.helpers import settle_join, skip_until
from triochat.client import open_client
from triochat.errors import ConnectionLost
from triochat.protocol import encode
from triochat.protocol.events import Ack, Hello, Left, Quit
from triochat.server import Server
from triochat.server.outbox import Outbox, Writing
from triochat.transport.base import CloseCode
from triochat.transport.upgrade import Request as UpgradeRequest
from triochat.transport.upgrade import parse, switching_protocols
from triochat.transport.wsproto_ws import WsprotoConnection, text_frame

ACROSS_NODES = True

TIMEOUT = 10.0
STORM_ROUNDS = 10
BIG = b"".join(b"%06d:%s\n" % (n, b"a" * 93) for n in range(1000))  # 100 kB of lines


async def _accepted_pair() -> tuple[WsprotoConnection, socket.socket, wsproto.WSConnection]:
    """The server's end of a WebSocket (small send buffer), and the client's.

    The client's end is a blocking stdlib socket, read synchronously: a test can
    make room in the buffer and act before any trio task gets a turn.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    ours.settimeout(TIMEOUT)
    theirs.settimeout(TIMEOUT)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    theirs.sendall(ws.send(Request(host="pair", target="/")))
    head = b""
    while b"\r\n\r\n" not in head:  # the upgrade as the server answers it (app._upgrade)
        head += ours.recv(4096)
    request = parse(head.partition(b"\r\n\r\n")[0])
    assert isinstance(request, UpgradeRequest)
    ours.sendall(switching_protocols(request))
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    protocol = wsproto.connection.Connection(wsproto.ConnectionType.SERVER)
    conn = WsprotoConnection(stream, protocol, max_line=1 << 20, max_message=1 << 22)
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(theirs.recv(4096))
    return conn, theirs, ws


def _outbox(conn: WsprotoConnection) -> Outbox:
    """An outbox as a session makes it, without a flusher (tests flush by hand)."""
    return Outbox(10_000, 10 << 20, direct=conn.direct, frame=conn.frame)


def _messages(client: socket.socket, ws: wsproto.WSConnection, count: int) -> list[Event]:
    """The next ``count`` events, a text message's frames joined into one event."""
    seen: list[Event] = []
    text = ""
    while len(seen) < count:
        for event in ws.events():
            if not isinstance(event, TextMessage):
                seen.append(event)
                continue
            text += event.data
            if event.message_finished:
                seen.append(TextMessage(data=text))
                text = ""
        if len(seen) < count:
            ws.receive_data(client.recv(1 << 16))
    return seen


def _read_to_eof(peer: socket.socket) -> bytes:
    wire = b""
    while chunk := peer.recv(1 << 16):
        wire += chunk
    return wire


async def test_held_bytes_go_out_whole_before_a_pong_and_before_later_lines() -> None:
    """A frame the socket took only in part is finished before anything else is written."""
    conn, client, ws = await _accepted_pair()
    box = _outbox(conn)
    later = b"later\n"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            assert box.put(BIG)
            box.flush()
            assert box.writing is Writing.WRITER  # the socket took part of the frame
            nursery.start_soon(conn.receive_lines, box)  # the reader: it answers the Ping
            client.sendall(ws.send(Ping(payload=b"p")))
            await trio.testing.wait_all_tasks_blocked()  # the Pong waits behind the held bytes
            ws.receive_data(client.recv(1 << 16))  # room in the buffer, mid-frame...
            assert box.put(later)
            box.flush()  # ...but the writer owns the socket: this waits too
            nursery.start_soon(box.drain, conn.stream)
            seen = await trio.to_thread.run_sync(_messages, client, ws, 3)
            nursery.cancel_scope.cancel()
    expected = [TextMessage(data=BIG.decode()), Pong(payload=b"p"), TextMessage(data="later\n")]
    assert seen == expected
    await conn.abort()
    client.close()


async def test_nothing_is_written_after_a_write_cut_short() -> None:
    """A writer cancelled mid-frame: no Pong, no later line and no goodbye follow it."""
    conn, client, ws = await _accepted_pair()
    box = _outbox(conn)
    with trio.fail_after(TIMEOUT):
        assert box.put(BIG)
        box.flush()
        with trio.CancelScope() as writer:
            writer.deadline = -float("inf")  # cut the writer's first write short...
            await box.drain(conn.stream)
        assert box.writing is Writing.BROKEN  # ...the frame on the wire is unfinished
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive_lines, box)
            client.sendall(ws.send(Ping(payload=b"p")))  # the reader's Pong goes nowhere
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert box.put(b"later\n")
        box.flush()
        with pytest.raises(ConnectionLost, match="cut short"):
            await box.finish(conn.stream, partial(conn.goodbye, CloseCode.NORMAL))
        await conn.abort()
    wire = await trio.to_thread.run_sync(_read_to_eof, client)
    frame = text_frame(BIG)
    assert len(wire) < len(frame)
    assert frame.startswith(wire)  # a part of the one frame, and nothing after it
    client.close()


async def test_a_direct_write_after_a_cut_is_refused() -> None:
    """After the writer's write was cut, a flush never writes at once either."""
    conn, client, _ = await _accepted_pair()
    box = _outbox(conn)
    assert box.put(BIG)
    box.flush()
    with trio.CancelScope() as writer:
        writer.deadline = -float("inf")
        await box.drain(conn.stream)
    client.setblocking(False)
    on_wire = _drain_socket(client)  # plenty of room now
    box.control(b"\x8a\x00")  # an empty Pong
    assert box.put(b"later\n")
    box.flush()
    assert _drain_socket(client) == b""
    assert frame_prefix(on_wire)
    await conn.abort()
    client.close()


def frame_prefix(wire: bytes) -> bool:
    return text_frame(BIG).startswith(wire) and len(wire) < len(text_frame(BIG))


def _drain_socket(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    return data


async def test_no_text_frame_follows_a_close() -> None:
    """At the byte level: after the peer's Close, lines offered either way are not framed."""
    conn, client, ws = await _accepted_pair()
    box = _outbox(conn)
    with trio.fail_after(TIMEOUT):
        client.sendall(ws.send(CloseConnection(code=1000)))
        with pytest.raises(ConnectionLost, match="closed by peer"):
            await conn.receive_lines(box)  # answers the Close
        assert box.put(b'{"type":"notice"}\n')
        box.flush()
        assert box.put(b'{"type":"notice"}\n')
        await box.finish(conn.stream, partial(conn.goodbye, CloseCode.NORMAL))
        await conn.abort()
    wire = await trio.to_thread.run_sync(_read_to_eof, client)
    ws.receive_data(wire)
    assert [type(e) for e in ws.events()] == [CloseConnection]
    assert wire == b"\x88\x02\x03\xe8"  # the Close (1000) and nothing after it
    client.close()


async def test_a_quitting_client_never_gets_its_own_left(server: Server, url: str) -> None:
    """Its close confirms the quit; a ``left`` for itself would mean the outbox was
    still open while the session left its rooms."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_client(url, "stays", rooms=["lobby"]) as stays,
            open_client(url, "quits", rooms=["lobby"]) as quits,
        ):
            await settle_join(stays)
            await settle_join(quits)
            await quits.quit()
            seen = [event async for event in quits]
            assert not [e for e in seen if isinstance(e, Left) and e.nick == "quits"]
            await skip_until(stays, Left, nick="quits")  # the room did hear of it


async def _welcomed(stack: AsyncExitStack, url: str, nick: str) -> RawClient:
    """A connection in the storm room that reads up to its ``welcome``, then never again."""
    raw = await stack.enter_async_context(open_raw(url))
    await raw.send_line(encode(Hello(nick=nick, rooms=["storm"])))
    while not any(b'"welcome"' in line for line in await raw.receive_lines()):
        pass
    return raw


async def test_a_crowd_that_quits_and_hangs_up_at_once_leaves_the_server_serving(
    server: Server, url: str
) -> None:
    """5. Nothing starts a writer in a session's nursery once that nursery may close.

    A crowd joins one room (each hears the others' joins, unread), then each says
    ``quit`` and all hang up together, as the harness's connection flood does: the
    flusher then meets sessions whose reading is over, and a writer started for one
    of those used to crash the server."""
    async with open_client(url, "host") as host:
        await settle_join(host)
        for round_ in range(STORM_ROUNDS):
            with trio.fail_after(TIMEOUT):
                async with AsyncExitStack() as stack:
                    crowd = [await _welcomed(stack, url, f"q{round_}x{i}") for i in range(32)]
                    for raw in crowd:
                        await raw.send_line(encode(Quit(reason="storm")))
                await host.say("lobby", "still here", round_)
                await skip_until(host, Ack, id=round_)
