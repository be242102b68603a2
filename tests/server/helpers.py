"""Small waits on what a client receives, so tests read as what a user sees."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, TypeVar

import trio
import wsproto
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from triochat.client import Client, open_client, parse_url
from triochat.protocol import encode
from triochat.protocol.events import Ack, Hello, Message, ServerEvent
from triochat.server import Server

E = TypeVar("E")


def host_port(url: str) -> tuple[str, int]:
    """The host and port of a ``ws://`` or ``tcp://`` URL, for raw-socket peers."""
    address = parse_url(url)
    return address.host, address.port


async def until(condition: Callable[[], bool]) -> None:
    """Wait for something a client cannot see to have happened (bounded by the caller)."""
    # Polling a condition (not sleeping for a guessed time): nothing signals it.
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.005)


async def expect(client: Client, kind: type[E], **fields: Any) -> E:
    """The next event, which must be a ``kind`` with ``fields``."""
    event = await client.receive()
    assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
    for name, value in fields.items():
        assert getattr(event, name) == value, f"{name}: {event!r}"
    return event


async def skip_until(client: Client, kind: type[E], **fields: Any) -> E:
    """Read past other events up to the first ``kind`` matching ``fields``."""
    while True:
        event: ServerEvent = await client.receive()
        if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
            return event


async def still_serving(server: Server) -> None:
    """A brand-new WebSocket client joins and gets its ``say`` acknowledged."""
    async with open_client(server.url("ws"), "newcomer") as newcomer:
        await settle_join(newcomer)
        await newcomer.say("lobby", "still here?", id="ok")
        await skip_until(newcomer, Ack, id="ok")


async def stalled(url: str, hello: Hello) -> trio.SocketStream:
    """A TCP client that says ``hello`` and then never reads.

    A tiny receive buffer makes the kernel stop taking bytes for it early.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(host_port(url))
    stream = trio.SocketStream(sock)
    await stream.send_all(encode(hello))
    return stream


async def fill(client: Client, room: str, count: int, text: str) -> None:
    """Say ``count`` messages ``n:text``, reading the echoes now and then (not to be evicted)."""
    for n in range(count):
        await client.say(room, f"{n}:{text}")
        if n % 20 == 19 or n == count - 1:
            await skip_until(client, Message, text=f"{n}:{text}")


async def settle_join(client: Client) -> None:
    """Consume what a fresh client gets per room: joined, history, members."""
    from triochat.protocol.events import HistoryPage, Joined, Members

    await expect(client, Joined)
    await expect(client, HistoryPage)
    await expect(client, Members)


class RawWebSocket:
    """A WebSocket client made of wsproto and a bare socket, free to break the rules."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    @classmethod
    async def connect(
        cls, url: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> RawWebSocket:
        host, port = host_port(url)
        raw = cls(await trio.open_tcp_stream(host, port))
        request = Request(host=host, target="/", extra_headers=headers or [])
        await raw.stream.send_all(raw.ws.send(request))
        await raw.next_event(AcceptConnection)
        return raw

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def events_until_closed(
        self, *, answer: bool = True, to_the_end: bool = False
    ) -> list[wsproto.events.Event]:
        """Every event the server sends until it ends the socket, a Close of its own
        answered as a client should (``answer``).

        Without ``answer`` (another task answers, or nobody: a peer mid-frame cannot),
        it stops at the server's Close, or with ``to_the_end`` goes on to the socket's end.
        """
        events: list[wsproto.events.Event] = []
        while True:
            for event in self.ws.events():
                events.append(event)
                if not isinstance(event, CloseConnection):
                    continue
                if answer and self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self.stream.send_all(self.ws.send(event.response()))
                elif not answer and not to_the_end:
                    return events
            try:
                data = await self.stream.receive_some()
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return events
            self.ws.receive_data(data)

    async def next_event(self, kind: type[wsproto.events.Event]) -> wsproto.events.Event:
        while True:
            for event in self.ws.events():
                if isinstance(event, kind):
                    return event
            data = await self.stream.receive_some()
            assert data, "server closed before the expected event"
            self.ws.receive_data(data)
