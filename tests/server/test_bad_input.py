"""Bad input over real sockets, on both transports: each gets its error code, nothing else breaks.

The misbehaving peer is a raw connection (a bare trio socket for TCP, trio-websocket
for WebSocket) so it can send what the client library never would. Every reply is
decoded with ``decode_server``, so a malformed answer from the server fails the test
too. After each case a fresh pair of clients still chats: one bad connection must
not harm anyone else.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest
import trio
import wsproto
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto.events import AcceptConnection, CloseConnection, Request

from tests.server.helpers import host_port, settle_join, skip_until
from triochat.client import open_client
from triochat.protocol import decode_server, encode
from triochat.protocol.events import (
    Ack,
    Error,
    Hello,
    HistoryPage,
    Joined,
    Left,
    LeftReason,
    Members,
    Message,
    Ping,
    Pong,
    ServerEvent,
    Welcome,
)
from triochat.server import Server, ServerConfig, serve

ACROSS_NODES = True

TIMEOUT = 10
_nicks = itertools.count()


class Closed(Exception):
    """The server closed the raw connection; ``code`` is the WebSocket close code (TCP: None)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed ({code})")
        self.code = code


class RawPeer(Protocol):
    async def send(self, data: bytes) -> None:
        """TCP: these bytes as they are. WebSocket: one text message."""
        ...

    async def receive_lines(self) -> list[bytes]:
        """The next lines from the server; :class:`Closed` once it has closed."""
        ...


class RawTcp:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._partial = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_lines(self) -> list[bytes]:
        while True:
            try:
                data = await self.stream.receive_some()
            except trio.BrokenResourceError:
                data = b""
            if not data:
                raise Closed(None)
            *lines, self._partial = (self._partial + data).split(b"\n")
            if lines:
                return lines


class RawWs:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_message(data.decode())

    async def send_binary(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def receive_lines(self) -> list[bytes]:
        try:
            message = await self.ws.get_message()
        except ConnectionClosed as exc:
            raise Closed(exc.reason.code if exc.reason else None) from None
        assert isinstance(message, str), "the server sent a binary message"
        return [line for line in message.encode().split(b"\n") if line]


class Reader:
    """Server events from a raw peer, one at a time; every line must decode."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer
        self._pending: list[ServerEvent] = []

    async def send(self, data: bytes) -> None:
        await self.peer.send(data)

    async def send_event(self, event: Any) -> None:
        await self.peer.send(encode(event))

    async def receive(self) -> ServerEvent:
        while not self._pending:
            self._pending = [decode_server(line) for line in await self.peer.receive_lines()]
        return self._pending.pop(0)

    async def expect_error(self, code: str, ref: Any = None) -> Error:
        event = await self.receive()
        assert isinstance(event, Error), f"expected error {code}, got {event!r}"
        assert (event.code, event.ref) == (code, ref), event
        return event

    async def closed(self) -> int | None:
        """Read to the end; the close code (TCP: None)."""
        try:
            while True:
                await self.receive()
        except Closed as closed:
            return closed.code

    async def hello(self, nick: str) -> None:
        """Say hello and read welcome, joined, history and members of the lobby."""
        await self.send_event(Hello(nick=nick))
        welcome = await self.receive()
        assert isinstance(welcome, Welcome), welcome
        for kind in (Joined, HistoryPage, Members):
            event = await self.receive()
            assert isinstance(event, kind), event

    async def still_answers(self) -> None:
        """The connection survived: a ping still gets its pong."""
        await self.send_event(Ping(token="alive?"))
        event = await self.receive()
        assert event == Pong(token="alive?"), event


@asynccontextmanager
async def open_raw(url: str) -> AsyncIterator[Reader]:
    if url.startswith("tcp://"):
        stream = await trio.open_tcp_stream(*host_port(url))
        async with stream:
            yield Reader(RawTcp(stream))
    else:
        async with open_websocket_url(url + "/", disconnect_timeout=2) as ws:
            yield Reader(RawWs(ws))


async def chat_still_works(url: str) -> None:
    """Two brand-new clients can talk: the bad peer harmed nobody else."""
    first, second = f"w{next(_nicks)}", f"w{next(_nicks)}"
    async with open_client(url, first) as one, open_client(url, second) as two:
        await settle_join(two)
        await one.say("lobby", "still fine?", id="ok")
        await skip_until(one, Ack, id="ok")
        message = await skip_until(two, Message, text="still fine?")
        assert message.from_ == first


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Server]:
    """A server of its own, for cases that need a config other than the conftest's."""
    config = ServerConfig(host="127.0.0.1", port=0, tcp_port=0, **overrides)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        try:
            yield server
        finally:
            server.stop()


# --- malformed lines: the connection stays usable -------------------------------------

BAD_LINES = [
    pytest.param(b"this is not json", "bad_json", id="not-json"),
    pytest.param(b'{"type":"say",', "bad_json", id="truncated-json"),
    pytest.param(b'{"type":"teleport","to":"mars"}', "bad_event", id="unknown-type"),
    pytest.param(b'{"room":"lobby","text":"x"}', "bad_event", id="no-type"),
    pytest.param(b"[1,2,3]", "bad_event", id="not-an-object"),
    pytest.param(b'{"type":"say","room":"lobby"}', "bad_event", id="missing-text"),
    pytest.param(b'{"type":"say","room":"lobby","text":42}', "bad_event", id="text-not-str"),
    pytest.param(b'{"type":"join","room":["lobby"]}', "bad_event", id="room-not-str"),
    pytest.param(b'{"type":"history","room":"lobby","limit":"5"}', "bad_event", id="limit-str"),
    pytest.param(b'{"type":"say","room":"lobby","text":"x","id":1.5}', "bad_event", id="float-id"),
]


@pytest.mark.parametrize(("line", "code"), BAD_LINES)
async def test_malformed_line_gets_its_code_and_the_connection_stays(
    url: str, line: bytes, code: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.hello(f"p{next(_nicks)}")
            await peer.send(line + b"\n")
            await peer.expect_error(code)
            await peer.still_answers()
        await chat_still_works(url)


SEMANTIC_ERRORS = [
    pytest.param(b'{"type":"say","room":"lobby","text":"","id":1}', "bad_event", id="empty-text"),
    pytest.param(
        b'{"type":"say","room":"lobby","text":"' + b"x" * 8001 + b'","id":2}',
        "bad_event",
        id="text-too-long",
    ),
    pytest.param(b'{"type":"say","room":"dev","text":"x","id":3}', "not_in_room", id="say-out"),
    pytest.param(b'{"type":"dm","to":"nobody","text":"x","id":4}', "no_such_user", id="dm-nobody"),
    pytest.param(b'{"type":"join","room":"#bad room"}', "room_invalid", id="join-bad-room"),
    pytest.param(b'{"type":"part","room":"dev"}', "not_in_room", id="part-not-in"),
    pytest.param(b'{"type":"history","room":"dev"}', "not_in_room", id="history-not-in"),
    pytest.param(b'{"type":"nick","nick":"no spaces"}', "nick_invalid", id="bad-nick"),
]


@pytest.mark.parametrize(("line", "code"), SEMANTIC_ERRORS)
async def test_refused_event_gets_its_code_and_echoes_the_id(
    url: str, line: bytes, code: str
) -> None:
    ref = decode_line_id(line)
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.hello(f"p{next(_nicks)}")
            await peer.send(line + b"\n")
            await peer.expect_error(code, ref)
            await peer.still_answers()


def decode_line_id(line: bytes) -> Any:
    return json.loads(line).get("id")


# --- the handshake ----------------------------------------------------------------------


async def test_events_before_hello_are_hello_first(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.send(b'{"type":"say","room":"lobby","text":"early","id":"e1"}\n')
            await peer.expect_error("hello_first", "e1")
            await peer.send(b'{"type":"ping","token":1}\n')
            await peer.expect_error("hello_first")
            await peer.send(b"not json\n")
            await peer.expect_error("bad_json")
            await peer.hello(f"p{next(_nicks)}")  # the session is still waiting for hello
            await peer.still_answers()
        await chat_still_works(url)


async def test_refused_hello_can_be_retried(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.send(b'{"type":"hello","nick":"has space"}\n')
            await peer.expect_error("nick_invalid")
            await peer.hello(f"p{next(_nicks)}")


async def test_second_hello_is_bad_event(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            nick = f"p{next(_nicks)}"
            await peer.hello(nick)
            await peer.send_event(Hello(nick=f"{nick}x", rooms=["dev"]))
            await peer.expect_error("bad_event")
            await peer.send(b'{"type":"who"}\n')
            members = await peer.receive()
            assert members == Members(room=None, nicks=[nick]), "the first hello still holds"
        await chat_still_works(url)


async def test_hello_with_invalid_rooms_reports_them_and_joins_the_rest(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.send(b'{"type":"hello","nick":"roomy","rooms":["ok","not ok"]}\n')
            await peer.expect_error("room_invalid")  # rooms are checked before welcome
            welcome = await peer.receive()
            assert isinstance(welcome, Welcome)
            assert welcome.rooms == ["ok"]


# --- framing errors close the connection ----------------------------------------------


async def test_line_over_the_limit_is_too_large_then_closed(server: Server, scheme: str) -> None:
    url = server.url(scheme)
    with trio.fail_after(TIMEOUT):
        async with open_client(url, "watcher") as watcher:
            await settle_join(watcher)
            async with open_raw(url) as peer:
                await peer.hello("big")
                line = b'{"type":"say","room":"lobby","text":"' + b"x" * server.config.max_line
                await peer.send(line + b'"}\n')
                await peer.expect_error("too_large")
                code = await peer.closed()
                assert code == (1009 if scheme == "ws" else None)
            left = await skip_until(watcher, Left, nick="big")
            assert left.reason is LeftReason.DISCONNECTED
            # Nothing of the long line reached the room.
            await watcher.ping("sync")
            while (event := await watcher.receive()) != Pong(token="sync"):
                assert not isinstance(event, Message), event
        await chat_still_works(url)


async def test_tcp_line_without_newline_is_too_large_once_past_the_limit(server: Server) -> None:
    url = server.url("tcp")
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.hello("endless")
            chunk = b"y" * 4096
            for _ in range(server.config.max_line // len(chunk) + 1):
                await peer.send(chunk)
            await peer.expect_error("too_large")
            assert await peer.closed() is None
        await chat_still_works(url)


async def test_invalid_utf8_on_tcp_is_bad_json(server: Server) -> None:
    url = server.url("tcp")
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.hello("latin1")
            await peer.send(b'{"type":"say","room":"lobby","text":"caf\xe9","id":1}\n')
            await peer.expect_error("bad_json")
            await peer.send(b"\xff\xfe\xfd\n")
            await peer.expect_error("bad_json")
            await peer.still_answers()
        await chat_still_works(url)


async def test_binary_websocket_message_is_bad_event(server: Server) -> None:
    url = server.url("ws")
    with trio.fail_after(TIMEOUT):
        async with open_websocket_url(url + "/") as ws:
            peer = Reader(RawWs(ws))
            await peer.hello("binary")
            await ws.send_message(encode(Ping(token=1)))  # bytes: a binary frame
            await peer.expect_error("bad_event")
            await peer.still_answers()
        await chat_still_works(url)


async def _send_invalid_utf8_text_frame(url: str) -> Any:
    """Upgrade by hand, send a text frame that is not UTF-8; the event that follows."""
    host, port = host_port(url)
    async with await trio.open_tcp_stream(host, port) as stream:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=host, target="/")))
        assert isinstance(await _next_ws_event(stream, ws), AcceptConnection)
        await stream.send_all(ws.send(wsproto.events.TextMessage(data=encode_hello("utf8"))))
        while True:  # welcome, joined, history, members: in one message or several
            event = await _next_ws_event(stream, ws)
            assert event is not None, "closed before the welcome"
            if '"type":"members"' in getattr(event, "data", ""):
                break
        # FIN + text opcode; masked (zero mask), 1-byte payload 0xff: not UTF-8.
        await stream.send_all(b"\x81\x81\x00\x00\x00\x00\xff")
        return await _next_ws_event(stream, ws)


def encode_hello(nick: str) -> str:
    return encode(Hello(nick=nick)).decode()


async def test_invalid_utf8_in_a_websocket_text_frame_gets_1007_and_ends_only_that_connection(
    server: Server,
) -> None:
    """wsproto fails the frame; the server sends the 1007 close RFC 6455 §8.1 asks for."""
    url = server.url("ws")
    with trio.fail_after(TIMEOUT):
        async with open_client(server.url("tcp"), "watcher") as watcher:
            await settle_join(watcher)
            ending = await _send_invalid_utf8_text_frame(url)
            assert isinstance(ending, CloseConnection), ending
            assert ending.code == 1007
            left = await skip_until(watcher, Left, nick="utf8")
            assert left.reason is LeftReason.DISCONNECTED
        await chat_still_works(url)


async def _next_ws_event(stream: trio.SocketStream, ws: wsproto.WSConnection) -> Any:
    """The next WebSocket event from the server; None if it closed the socket instead."""
    while True:
        for event in ws.events():
            return event
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:
            data = b""
        if not data:
            return None
        ws.receive_data(data)


# --- flood control ------------------------------------------------------------------------


async def test_over_the_rate_limit_is_rate_limited_and_not_delivered(scheme: str) -> None:
    burst = 6
    # A refill of one token per ~17 minutes: the test sees the burst and nothing more.
    async with running(rate_limit=0.001, burst=burst) as server:
        url = server.url(scheme)
        with trio.fail_after(TIMEOUT):
            async with open_client(url, "listener") as listener:
                await settle_join(listener)
                async with open_raw(url) as peer:
                    await peer.hello("flooder")  # hello spends one token
                    flood = b"".join(
                        encode_say(f"n{n}", n) for n in range(burst + 4)
                    )  # burst - 1 allowed, then 5 refused
                    if scheme == "ws":
                        for line in flood.splitlines():
                            await peer.send(line)
                    else:
                        await peer.send(flood)
                    acked, refused = await _acks_and_refusals(peer, burst + 4)
                assert acked == list(range(burst - 1))
                assert refused == list(range(burst - 1, burst + 4))
                heard = await _messages_until_pong(listener)
                assert heard == [f"n{n}" for n in acked]
            await chat_still_works(url)


def encode_say(text: str, ref: int) -> bytes:
    return b'{"type":"say","room":"lobby","text":"%s","id":%d}\n' % (text.encode(), ref)


async def _acks_and_refusals(peer: Reader, count: int) -> tuple[list[Any], list[Any]]:
    """Read until every one of ``count`` says has its ack or its rate_limited error."""
    acked: list[Any] = []
    refused: list[Any] = []
    while len(acked) + len(refused) < count:
        event = await peer.receive()
        if isinstance(event, Ack):
            acked.append(event.id)
        elif isinstance(event, Error):
            assert event.code == "rate_limited", event
            refused.append(event.ref)
        else:
            assert isinstance(event, Message), event
    return acked, refused


async def _messages_until_pong(client: Any) -> list[str]:
    """Texts of the messages that reached ``client`` before the answer to a fresh ping.

    The flooder's says were all handled before this ping was, so anything it got
    through is queued ahead of the pong.
    """
    await client.ping("sync")
    texts = []
    while (event := await client.receive()) != Pong(token="sync"):
        if isinstance(event, Message):
            texts.append(event.text)
    return texts


# --- close codes the architecture promises (docs/architecture.md, "close codes") -------


async def test_keepalive_timeout_closes_websocket_with_1001() -> None:
    async with running(keepalive_interval=0.2, keepalive_timeout=0.3) as server:
        url = server.url("ws")
        host, port = host_port(url)
        with trio.fail_after(TIMEOUT):
            async with await trio.open_tcp_stream(host, port) as stream:
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(ws.send(Request(host=host, target="/")))
                assert isinstance(await _next_ws_event(stream, ws), AcceptConnection)
                await stream.send_all(
                    ws.send(wsproto.events.TextMessage(data=encode_hello("mute")))
                )
                # Read, but never answer the server's Pings.
                while isinstance(event := await _next_ws_event(stream, ws), wsproto.events.Event):
                    if isinstance(event, CloseConnection):
                        break
                assert isinstance(event, CloseConnection), "dropped without a close frame"
                assert event.code == 1001
