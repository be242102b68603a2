"""RFC 6455 duties the server's WebSocket engine does itself (triochat/transport/wsproto_ws.py).

wsproto parses and answers; the framing and writes are ours, so each duty is
checked at the byte level, with a client made of wsproto and a bare socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio
import trio.testing
from wsproto.events import (
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import RawWebSocket, host_port, settle_join, skip_until, still_serving
from triochat.client import open_client
from triochat.protocol import encode
from triochat.protocol.events import Hello, Left, LeftReason, Message
from triochat.protocol.events import Pong as LinePong
from triochat.server import Server, serve

ACROSS_NODES = True

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
