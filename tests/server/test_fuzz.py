"""Fuzzing live sessions: random bytes, random JSON and event-shaped junk.

Whatever a client writes, the server must answer only with valid server events
(every line it sends decodes with ``decode_server``; every error carries a known
code) and must go on serving a fresh client. Two harnesses:

* a real :class:`Session` over ``trio.testing.memory_stream_pair`` on a fresh
  hub per example (fast, many examples; also checks the hub forgets everyone);
* a real server on 127.0.0.1, fuzzed over TCP and WebSocket at once (fewer examples).

Each example runs in its own ``trio.run`` from a plain (sync) hypothesis test, so
hypothesis and pytest-trio never have to share a loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.protocol.strategies import writes
from tests.server.helpers import RawWebSocket, host_port, skip_until
from triochat.client import open_client
from triochat.protocol import ErrorCode, LineSplitter, decode_server, encode
from triochat.protocol.events import (
    Ack,
    Error,
    Hello,
    Joined,
    Left,
    Members,
    Message,
    Say,
    ServerEvent,
    Welcome,
)
from triochat.server import Server, ServerConfig, serve
from triochat.server.hub import Hub
from triochat.server.session import Session
from triochat.transport.tcp import StreamConnection

# A small max_line so random writes regularly cross it (too_large) as well as not.
CONFIG = ServerConfig(host="127.0.0.1", port=0, tcp_port=0, rate_limit=0, max_line=512)
END = "fuzz-end"
END_LINE = b"\n" + encode(Say(room="end_room_zz", text="end", id=END))
"""Sent after the fuzz. Its answer (``hello_first`` before a hello, ``not_in_room`` after
one, both with ``ref`` END) means every fuzz line before it was handled."""
CODES = {code.value for code in ErrorCode}
FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

greeting = st.sampled_from(
    [b"", encode(Hello(nick="fuzzer")), encode(Hello(nick="f", rooms=["dev"]))]
)


def _check(line: bytes) -> ServerEvent:
    """A line the server sent must be a valid server event; errors have known codes."""
    event = decode_server(line)
    if isinstance(event, Error):
        assert event.code in CODES, event
    return event


# --- in-memory sessions -----------------------------------------------------------------


class MemoryPeer:
    """The client end of a memory stream to a real Session."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.splitter = LineSplitter(1 << 24)
        self.closed = False

    async def send(self, data: bytes) -> None:
        """Send unless the server already hung up (then the rest is moot)."""
        if self.closed:
            return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True

    async def events(self) -> list[ServerEvent]:
        """The next batch of events; empty once the server closed."""
        while not self.closed:
            try:
                data = await self.stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                break
            lines = self.splitter.feed(data)
            if lines:
                return [_check(line) for line in lines]
        return []

    async def until(self, wanted: Callable[[ServerEvent], bool]) -> list[ServerEvent]:
        """Every event up to and including the first ``wanted`` one (or up to the close)."""
        seen: list[ServerEvent] = []
        while batch := await self.events():
            seen += batch
            if any(wanted(event) for event in batch):
                break
        return seen


def _is_end(event: ServerEvent) -> bool:
    return isinstance(event, Error) and event.ref == END


async def _open_session(nursery: trio.Nursery, hub: Hub) -> MemoryPeer:
    client_end, server_end = trio.testing.memory_stream_pair()
    session = Session(StreamConnection(server_end, max_line=CONFIG.max_line), hub, CONFIG)
    nursery.start_soon(session.run)
    return MemoryPeer(client_end)


async def _fresh_client_chats(nursery: trio.Nursery, hub: Hub) -> None:
    peer = await _open_session(nursery, hub)
    await peer.send(encode(Hello(nick="fresh_client_zz", rooms=["fresh_room_zz"])))
    seen = await peer.until(lambda e: e == Members(room="fresh_room_zz", nicks=["fresh_client_zz"]))
    assert isinstance(seen[0], Welcome), seen
    await peer.send(encode(Say(room="fresh_room_zz", text="still alive", id="alive")))
    await _until_message_and_ack(peer)
    await peer.stream.aclose()


async def _until_message_and_ack(peer: MemoryPeer) -> None:
    seen: list[ServerEvent] = []
    while not (
        any(isinstance(e, Message) and e.text == "still alive" for e in seen)
        and any(isinstance(e, Ack) and e.id == "alive" for e in seen)
    ):
        batch = await peer.events()
        assert batch, f"the fresh client was closed on: {seen!r}"
        seen += batch


async def _fuzz_memory(greet: bytes, payload: Sequence[bytes]) -> list[ServerEvent]:
    """Fuzz one session, check a fresh client still chats; what the fuzzer was sent."""
    hub = Hub(CONFIG)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            fuzzer = await _open_session(nursery, hub)
            await fuzzer.send(greet)
            for chunk in payload:
                await fuzzer.send(chunk)
            await fuzzer.send(END_LINE)
            answers = await fuzzer.until(_is_end)
            await _fresh_client_chats(nursery, hub)
            await fuzzer.stream.aclose()
    assert len(hub) == 0, "a closed session left a member behind"
    return answers


@FUZZ
@given(greeting, st.lists(writes, max_size=10))
def test_session_answers_junk_only_with_valid_events(greet: bytes, payload: list[bytes]) -> None:
    trio.run(_fuzz_memory, greet, payload)


@FUZZ
@given(st.lists(writes, max_size=6), st.lists(st.integers(1, 64), min_size=1, max_size=6))
def test_session_survives_junk_cut_at_any_byte(payload: list[bytes], sizes: list[int]) -> None:
    """The same junk, delivered in arbitrary small pieces after a valid hello."""
    data = b"".join(payload)
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(data[start : start + size])
        start += size
    trio.run(_fuzz_memory, encode(Hello(nick="cutter")), pieces)


# --- a real server, both transports -------------------------------------------------------


async def _fuzz_tcp(server: Server, payload: Sequence[bytes]) -> None:
    stream = await trio.open_tcp_stream(*host_port(server.url("tcp")))
    async with stream:
        peer = MemoryPeer(stream)  # works on any trio stream
        await peer.send(encode(Hello(nick="tcp_fuzzer")))
        for chunk in payload:
            await peer.send(chunk)
        await peer.send(END_LINE)
        await peer.until(_is_end)


async def _fuzz_ws(server: Server, payload: Sequence[bytes]) -> None:
    async with open_websocket_url(server.url("ws") + "/", disconnect_timeout=2) as ws:
        try:
            await ws.send_message(encode(Hello(nick="ws_fuzzer")).decode())
            for chunk in payload:
                await ws.send_message(_as_message(chunk))
            await ws.send_message(END_LINE.decode())
            while True:
                message = await ws.get_message()
                assert isinstance(message, str), "the server sent a binary message"
                lines = [_check(line) for line in message.encode().split(b"\n") if line]
                if any(_is_end(event) for event in lines):
                    return
        except ConnectionClosed:
            return  # too_large (or a quit) ended it; every line before was checked


def _as_message(chunk: bytes) -> str | bytes:
    """Valid UTF-8 goes as a text message; anything else as a binary one (bad_event)."""
    try:
        return chunk.decode()
    except UnicodeDecodeError:
        return chunk


async def _fresh_clients_chat(server: Server) -> None:
    async with (
        open_client(server.url("ws"), "fresh_ws") as one,
        open_client(server.url("tcp"), "fresh_tcp", rooms=["dev"]) as two,
    ):
        await one.join("dev")
        await one.say("dev", "both alive", id="ok")
        async for event in two:
            if isinstance(event, Message) and event.text == "both alive":
                break


async def _fuzz_server(payload: Sequence[bytes]) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, CONFIG)
            async with trio.open_nursery() as fuzzers:
                fuzzers.start_soon(_fuzz_tcp, server, payload)
                fuzzers.start_soon(_fuzz_ws, server, payload)
            await _fresh_clients_chat(server)
            server.stop()


@settings(FUZZ, max_examples=25)
@given(st.lists(writes, max_size=8))
def test_live_server_answers_junk_only_with_valid_events(payload: list[bytes]) -> None:
    trio.run(_fuzz_server, payload)


# --- WebSocket frames of junk -------------------------------------------------------------

frames = st.builds(
    lambda opcode, fin, masked, payload: _frame(opcode, fin=fin, masked=masked, payload=payload),
    st.integers(0, 15),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=300),
)
"""Any opcode (reserved ones too), final or not, masked or not (a server must refuse unmasked)."""


def _frame(opcode: int, *, fin: bool, masked: bool, payload: bytes) -> bytes:
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = size if size < 126 else 126
    head += bytes([(0x80 if masked else 0) | length])
    if length == 126:
        head += size.to_bytes(2, "big")
    if not masked:
        return head + payload
    return head + b"\x00\x00\x00\x00" + payload  # a zero mask leaves the payload as is


async def _fuzz_frames(chunks: Sequence[bytes]) -> None:
    """Upgrade, say hello, send the frames; the fuzzer is gone and the server serves others."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, CONFIG)
            async with open_client(server.url("tcp"), "watcher") as watcher:
                fuzzer = await RawWebSocket.connect(server.url("ws"))
                await fuzzer.send_text(encode(Hello(nick="frames")).decode())
                await skip_until(watcher, Joined, nick="frames")
                with contextlib.suppress(trio.BrokenResourceError):  # closed on a bad frame
                    for chunk in chunks:
                        await fuzzer.stream.send_all(chunk)
                await fuzzer.stream.aclose()  # whatever the frames did, the peer is now gone
                await skip_until(watcher, Left, nick="frames")
            await _fresh_clients_chat(server)
            assert server.connections == 0
            server.stop()


@settings(FUZZ, max_examples=25)
@given(st.lists(st.one_of(frames, st.binary(max_size=40)), max_size=8))
def test_websocket_frames_of_junk_end_only_that_connection(chunks: list[bytes]) -> None:
    trio.run(_fuzz_frames, chunks)


def test_the_harness_sees_real_answers() -> None:
    """The checks above must be able to fail: this junk is answered, and seen."""
    junk = [
        b'{"type":"who","junk":[1,{"x":null}]}\n',
        b"\xff\n",
        b'{"type":"say","room":"dev","text":"hi","id":3}\n',
    ]
    answers = trio.run(_fuzz_memory, encode(Hello(nick="guard")), junk)
    assert Members(room=None, nicks=["guard"]) in answers
    codes = [(e.code, e.ref) for e in answers if isinstance(e, Error)]
    assert codes == [("bad_json", None), ("not_in_room", 3), ("not_in_room", END)]
