"""Hostile input over real sockets: deep JSON, lines and messages that never end, oversized
fragments, and the wire after a Close.

Each case ends only the offending connection (or not even that), and a brand-new
client still chats afterwards. The peer's pacing (a byte or a fragment every
``DRIP_EVERY`` seconds) is what is under test, not a way to wait for the server:
every wait on the server is on what it sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    TextMessage,
)

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import RawWebSocket, settle_join, still_serving
from tests.server.test_bad_input import Reader, open_raw
from triochat.client import Client, open_client
from triochat.protocol import decode_server, encode
from triochat.protocol.codec import MAX_DEPTH
from triochat.protocol.events import Ack, Error, Hello, Ping, Pong
from triochat.server import Server, serve

ACROSS_NODES = True

TIMEOUT = 10
MESSAGE_TIMEOUT = 0.3
DRIP_EVERY = 0.05
"""Well inside MESSAGE_TIMEOUT: a deadline counted per read would never pass."""
MAX_LINE = 1000
"""So a WebSocket message may be 4,000 bytes (app._max_message)."""


def nested_say(depth: int, ref: int) -> bytes:
    """A valid ``say`` whose unknown field ``z`` nests arrays ``depth`` deep (the object is 1)."""
    z = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"type":"say","room":"lobby","text":"deep","id":%d,"z":%s}' % (ref, z)


@pytest.fixture
async def strict(nursery: trio.Nursery) -> AsyncIterator[Server]:
    """A server with a short message deadline and a small line limit."""
    config = replace(TEST_CONFIG, message_timeout=MESSAGE_TIMEOUT, max_line=MAX_LINE)
    running: Server = await nursery.start(serve, config)
    yield running
    running.stop()


# --- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 30_000])
async def test_json_nested_too_deep_is_bad_json_and_the_session_goes_on(
    server: Server, url: str, depth: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.hello(f"deep{depth}")
            await peer.send(nested_say(depth, 1) + b"\n")
            error = await peer.expect_error("bad_json")
            assert str(MAX_DEPTH) in error.message
            await peer.send(b'{"type":"say","room":"lobby","text":"flat","id":2}\n')
            await _expect_ack(peer, 2)
        await still_serving(server)


async def test_json_nested_to_the_limit_is_accepted(server: Server, url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer:
            await peer.hello("limit")
            await peer.send(nested_say(MAX_DEPTH, 1) + b"\n")
            await _expect_ack(peer, 1)


async def _expect_ack(peer: Reader, ref: int) -> None:
    while not isinstance(event := await peer.receive(), Ack):
        assert not isinstance(event, Error), event
    assert event.id == ref, event


# --- a TCP line that never ends -------------------------------------------------------------


async def test_a_dripped_tcp_line_gets_message_timeout_then_the_close(strict: Server) -> None:
    url = strict.url("tcp")
    with trio.fail_after(TIMEOUT):
        async with open_raw(url) as peer, trio.open_nursery() as nursery:
            await peer.hello("dripper")
            began = trio.current_time()
            nursery.start_soon(_drip_bytes, peer, b'{"type":"say","room":"lobby","text":"' * 50)
            await peer.expect_error("message_timeout")
            assert trio.current_time() - began >= MESSAGE_TIMEOUT
            assert await peer.closed() is None  # TCP: the server's FIN
            nursery.cancel_scope.cancel()
        await still_serving(strict)


async def _drip_bytes(peer: Reader, data: bytes) -> None:
    """One byte every DRIP_EVERY seconds, until the server stops taking them."""
    try:
        for byte in data:
            await peer.send(bytes([byte]))
            await trio.sleep(DRIP_EVERY)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_idle_connections_are_not_timed(strict: Server) -> None:
    """Only an unfinished line or message has a deadline; silence is the keepalive's business."""
    with trio.fail_after(TIMEOUT):
        async with open_raw(strict.url("tcp")) as tcp, open_raw(strict.url("ws")) as ws:
            for n, peer in enumerate((tcp, ws)):
                await peer.hello(f"idle{n}")
            await trio.sleep(2 * MESSAGE_TIMEOUT)  # the condition under test: idle that long
            for peer in (tcp, ws):
                await peer.send_event(Ping(token="alive?"))
                while (event := await peer.receive()) != Pong(token="alive?"):
                    assert not isinstance(event, Error), event


# --- a WebSocket message that never ends ------------------------------------------------------


async def test_an_unfinished_fragmented_message_gets_message_timeout_and_1008(
    strict: Server,
) -> None:
    with trio.fail_after(TIMEOUT):
        raw = await _hello_ws(strict, "fragments")
        async with trio.open_nursery() as nursery:
            began = trio.current_time()
            nursery.start_soon(_drip_fragments, raw, "[", 10_000)
            events = await raw.events_until_closed(answer=False)
            nursery.cancel_scope.cancel()
        assert trio.current_time() - began >= MESSAGE_TIMEOUT
        assert _errors(events) == ["message_timeout"]
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1008]
        await raw.stream.aclose()
        await still_serving(strict)


async def test_a_dripped_single_frame_gets_message_timeout_and_1008(strict: Server) -> None:
    """One text frame whose payload comes a byte at a time: unfinished too."""
    with trio.fail_after(TIMEOUT):
        raw = await _hello_ws(strict, "frame")
        frame = raw.ws.send(TextMessage(data="x" * 500))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drip_raw, raw, frame)
            events = await raw.events_until_closed(answer=False)
            nursery.cancel_scope.cancel()
        assert _errors(events) == ["message_timeout"]
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1008]
        await raw.stream.aclose()
        await still_serving(strict)


@pytest.mark.parametrize("kind", [TextMessage, BytesMessage])
async def test_fragments_adding_up_past_the_limit_get_1009(
    strict: Server, kind: type[TextMessage] | type[BytesMessage]
) -> None:
    """Each fragment is small; together they pass 4 x max_line, and nothing more is held."""
    piece = "x" * (MAX_LINE // 2)
    with trio.fail_after(TIMEOUT):
        raw = await _hello_ws(strict, "pieces")
        for _ in range(9):  # 4,500 bytes, never finished
            data = piece if kind is TextMessage else piece.encode()
            await raw.stream.send_all(raw.ws.send(kind(data=data, message_finished=False)))  # type: ignore[arg-type]
        events = await raw.events_until_closed()
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
        assert _errors(events) == ["too_large"]
        await raw.stream.aclose()
        await still_serving(strict)


async def _hello_ws(server: Server, nick: str) -> RawWebSocket:
    raw = await RawWebSocket.connect(server.url("ws"))
    await raw.send_text(encode(Hello(nick=nick)).decode())
    while '"type":"members"' not in getattr(await raw.next_event(TextMessage), "data", ""):
        pass
    return raw


async def _drip_fragments(raw: RawWebSocket, piece: str, count: int) -> None:
    """A text message begun and continued a fragment every DRIP_EVERY seconds, never finished.

    This task is the peer's only sender, so it is the one that answers the server's
    Close (between two fragments, where a control frame may go).
    """
    try:
        for _ in range(count):
            if raw.ws.state is ConnectionState.REMOTE_CLOSING:
                await raw.stream.send_all(raw.ws.send(CloseConnection(code=1000)))
                return
            await raw.stream.send_all(raw.ws.send(TextMessage(data=piece, message_finished=False)))
            await trio.sleep(DRIP_EVERY)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _drip_raw(raw: RawWebSocket, wire: bytes) -> None:
    try:
        for byte in wire:
            await raw.stream.send_all(bytes([byte]))
            await trio.sleep(DRIP_EVERY)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _errors(events: list[Event]) -> list[str]:
    """The codes of the error lines among ``events`` (every text line must decode)."""
    codes = []
    for event in events:
        if isinstance(event, TextMessage):
            for line in event.data.splitlines():
                decoded = decode_server(line)
                if isinstance(decoded, Error):
                    codes.append(decoded.code)
    return codes


# --- nothing after a Close --------------------------------------------------------------------


async def test_nothing_follows_the_close_on_the_wire_while_the_room_chats(strict: Server) -> None:
    """A closing peer's room keeps talking; after the server's Close no text frame comes."""
    with trio.fail_after(TIMEOUT):
        async with open_client(strict.url("tcp"), "chatter") as chatter:
            await settle_join(chatter)
            raw = await _hello_ws(strict, "leaving")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_chat, chatter)
                nursery.start_soon(_drip_fragments, raw, "[", 10_000)
                events = await raw.events_until_closed(answer=False, to_the_end=True)
                nursery.cancel_scope.cancel()
            closes = [n for n, e in enumerate(events) if isinstance(e, CloseConnection)]
            assert closes == [len(events) - 1], events[-3:]
            await raw.stream.aclose()


async def _chat(chatter: Client) -> None:
    for n in range(10_000):
        await chatter.say("lobby", f"chat {n}")
        await trio.sleep(0.005)
