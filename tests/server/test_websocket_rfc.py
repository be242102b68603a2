"""RFC 6455 duties the server's WebSocket engine does itself (triochat/transport/wsproto_ws.py).

wsproto parses and answers; the framing and writes are ours, so each duty is
checked at the byte level, with a client made of wsproto and a bare socket.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import RawWebSocket, host_port, settle_join, skip_until, still_serving
from triochat.client import open_client
from triochat.protocol import encode
from triochat.protocol.events import Hello, Left, LeftReason, Message
from triochat.protocol.events import Pong as LinePong
from triochat.server import Server, serve
from triochat.transport.wsproto_ws import WsprotoConnection, accept

TIMEOUT = 10
MAX_LINE = 1000


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    config = replace(TEST_CONFIG, max_line=MAX_LINE)
    running: Server = await nursery.start(serve, config)
    yield running
    running.stop()


async def test_a_request_that_is_not_an_upgrade_gets_an_http_error(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with await trio.open_tcp_stream(*host_port(server.url("ws"))) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: plain\r\n\r\n")
            response = b""
            while chunk := await stream.receive_some():
                response += chunk
        assert response.startswith(b"HTTP/1.1 4"), response
        await still_serving(server)


async def test_a_fragmented_message_is_one_message(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawWebSocket.connect(server.url("ws"))
        hello = encode(Hello(nick="frag")).decode()
        thirds = [hello[:5], hello[5:12], hello[12:]]
        for n, part in enumerate(thirds):
            frame = raw.ws.send(TextMessage(data=part, message_finished=n == len(thirds) - 1))
            await raw.stream.send_all(frame)
        welcome = await raw.next_event(TextMessage)
        assert isinstance(welcome, TextMessage)
        assert '"type":"welcome"' in welcome.data
        await raw.stream.aclose()


async def test_a_ping_gets_a_pong_with_its_payload(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await RawWebSocket.connect(server.url("ws"))
        await raw.stream.send_all(raw.ws.send(Ping(payload=b"are you there")))
        pong = await raw.next_event(Pong)
        assert isinstance(pong, Pong)
        assert pong.payload == b"are you there"
        await raw.stream.aclose()


async def test_a_close_from_the_client_is_answered_and_it_leaves(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(server.url("tcp"), "watcher") as watcher:
            await settle_join(watcher)
            raw = await RawWebSocket.connect(server.url("ws"))
            await raw.send_text(encode(Hello(nick="polite")).decode())
            await raw.next_event(TextMessage)  # the welcome: it is in
            await raw.stream.send_all(raw.ws.send(CloseConnection(code=1000, reason="bye")))
            closes = [e for e in await raw.events_until_closed() if isinstance(e, CloseConnection)]
            assert [c.code for c in closes] == [1000]
            await skip_until(watcher, Left, nick="polite", reason=LeftReason.DISCONNECTED)
            await raw.stream.aclose()


async def test_a_message_over_the_limit_is_closed_with_1009_and_none_of_it_is_said(
    server: Server,
) -> None:
    say = encode_say("x" * (MAX_LINE - 100))
    assert len(say) <= MAX_LINE  # each line is fine; five of them in one message are not
    with trio.fail_after(TIMEOUT):
        async with open_client(server.url("tcp"), "watcher") as watcher:
            await settle_join(watcher)
            raw = await RawWebSocket.connect(server.url("ws"))
            await raw.send_text(encode(Hello(nick="big")).decode())
            await raw.next_event(TextMessage)  # the welcome: it is in
            await raw.send_text("\n".join([say] * 5))
            closes = [e for e in await raw.events_until_closed() if isinstance(e, CloseConnection)]
            assert [c.code for c in closes] == [1009]
            await skip_until(watcher, Left, nick="big")
            await watcher.ping("sync")
            while (event := await watcher.receive()) != LinePong(token="sync"):
                assert not isinstance(event, Message), event
            await raw.stream.aclose()


def encode_say(text: str) -> str:
    return f'{{"type":"say","room":"lobby","text":"{text}"}}'


# --- the wsproto engine's own writes --------------------------------------------------


async def _accepted_pair() -> tuple[WsprotoConnection, socket.socket, wsproto.WSConnection]:
    """A server-side connection with a small send buffer, and the client's end and parser.

    The client's end is a blocking stdlib socket, read synchronously: a test can
    make room in the buffer and act before any trio task gets a turn.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    theirs.settimeout(TIMEOUT)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    theirs.sendall(ws.send(Request(host="pair", target="/")))
    conn = await accept(stream, max_line=1 << 20, max_message=1 << 22)
    assert conn is not None
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(theirs.recv(4096))
    return conn, theirs, ws


async def test_held_bytes_go_out_whole_before_a_pong_and_before_later_lines() -> None:
    """A frame the socket took only part of is finished before anything else is written."""
    conn, client, ws = await _accepted_pair()
    first = b"".join(b"%06d:%s\n" % (n, b"a" * 93) for n in range(1000))  # 100 kB
    later = b"later\n"
    assert conn.write_now is not None
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            assert conn.write_now(first) is False  # the socket took part of the frame
            nursery.start_soon(conn.receive_lines)  # the reader: it answers the Ping below
            client.sendall(ws.send(Ping(payload=b"p")))
            await trio.testing.wait_all_tasks_blocked()  # the reader writes: held, then Pong
            ws.receive_data(client.recv(1 << 16))  # room in the buffer, mid-frame...
            assert conn.write_now(later) is False  # ...but a write is under way: this waits
            nursery.start_soon(conn.send, b"")  # the writer, as the outbox wakes it
            seen = await trio.to_thread.run_sync(_messages, client, ws, 3)
            nursery.cancel_scope.cancel()
    expected = [TextMessage(data=first.decode()), Pong(payload=b"p"), TextMessage(data="later\n")]
    assert seen == expected
    await conn.abort()
    client.close()


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
