"""Hand-driven connections for fault injection, on raw trio sockets and the protocol module.

The client library behaves; these do not. A :class:`RawClient` lets a fault
scenario choose socket options before connecting (a small receive buffer for
a reader that stalls), send any bytes it likes (malformed lines, half a line,
half a WebSocket frame, a binary frame) and vanish with a TCP reset
(``SO_LINGER`` 0). It owns its socket: nothing here reaches into a library.

``wss://`` and ``tls://`` work too: the same bytes go through TLS (trusting
the run's ``--cafile``, :mod:`harness.trust`), and a reset still resets the
socket under it.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import trio
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import ConnectionRejected, WebSocketConnection, wrap_client_stream

from harness.trust import CAFILE
from triochat.client import CLIENT_MAX_LINE, Address, parse_url, secure, tls_for
from triochat.errors import ConnectError, ConnectionLost
from triochat.protocol import encode
from triochat.protocol.events import Hello
from triochat.transport.base import ClientConnection
from triochat.transport.release import release
from triochat.transport.tcp import StreamConnection
from triochat.transport.websocket import WebSocketLines

Carrier = trio.SocketStream | trio.SSLStream[trio.SocketStream]
"""What carries a raw client's bytes: its socket, or TLS over it."""
HALF_LINE = b'{"type":"say","room":"lobby","text":"this line never'


class Refused(ConnectError):
    """The WebSocket port answered the upgrade with an HTTP status instead (429, 503, ...)."""

    def __init__(self, address: Address, status: int, body: bytes) -> None:
        super().__init__(f"{address}: upgrade refused with HTTP {status}")
        self.status = status
        self.body = body


class RawClient:
    """One connection driven byte by byte. Make one with :func:`open_raw`."""

    def __init__(
        self,
        address: Address,
        stream: trio.abc.Stream,
        ws: WebSocketConnection | None,
        sock: trio.SocketStream,
    ) -> None:
        """``stream`` carries the protocol: ``sock`` itself, or TLS over it."""
        self.address = address
        self._stream = stream
        self._socket = sock
        self._ws = ws
        # Receiving is ordinary: the client library's own transports do it.
        self._incoming: ClientConnection = (
            StreamConnection(stream, max_line=CLIENT_MAX_LINE, remote=str(address))
            if ws is None
            else WebSocketLines(ws, stream=stream, max_line=CLIENT_MAX_LINE, remote=str(address))
        )

    @property
    def is_ws(self) -> bool:
        return self._ws is not None

    async def send_line(self, line: bytes) -> None:
        """One protocol line (a WebSocket text message, or bytes on the TCP stream)."""
        try:
            if self._ws is not None:
                await self._ws.send_message(line.decode())
            else:
                await self._stream.send_all(line)
        except (WsClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{self.address}: {exc!r}") from None

    async def send_binary(self, data: bytes) -> None:
        """A binary WebSocket frame (not part of the protocol)."""
        assert self._ws is not None
        try:
            await self._ws.send_message(data)
        except WsClosed as exc:
            raise ConnectionLost(f"{self.address}: {exc!r}") from None

    async def send_half(self) -> None:
        """Half an event: a line without its end, or a WebSocket frame cut short."""
        if self._ws is None:
            await self._stream.send_all(HALF_LINE)
            return
        # A masked text frame announcing 200 payload bytes, followed by only a few.
        header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", 200) + os.urandom(4)
        await self._stream.send_all(header + HALF_LINE[:20])

    async def receive_lines(self) -> list[bytes]:
        """The next lines the server sent; :class:`ConnectionLost` once it closed."""
        return await self._incoming.receive_lines()

    async def hello(
        self, nick: str, rooms: list[str], resume: dict[str, int] | None = None
    ) -> list[bytes]:
        """Say hello and read up to ``welcome``; return every line read on the way.

        :class:`ConnectError` if the server refuses the nick.
        """
        await self.send_line(encode(Hello(nick=nick, rooms=rooms, resume=resume)))
        seen: list[bytes] = []
        while True:
            lines = await self.receive_lines()
            seen += lines
            for line in lines:
                if line.startswith(b'{"type":"welcome"'):
                    return seen
                if b'"code":"nick_' in line and line.startswith(b'{"type":"error"'):
                    raise ConnectError(f"{self.address}: hello refused: {line.decode()}")

    async def reset(self) -> None:
        """Vanish: close with ``SO_LINGER`` 0, so the kernel sends RST instead of FIN."""
        linger = struct.pack("ii", 1, 0)
        with suppress(OSError):
            self._socket.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        await release(self._socket)

    async def drop(self) -> None:
        """Close the socket without any goodbye (FIN, no WebSocket close, no close_notify)."""
        await release(self._socket)


@asynccontextmanager
async def open_raw(
    url: str, *, receive_buffer: int | None = None, local_address: str | None = None
) -> AsyncIterator[RawClient]:
    """A :class:`RawClient` on ``url``; ``receive_buffer`` fixes SO_RCVBUF before connecting.

    A fixed receive buffer turns off the kernel's autotuning (up to tens of MiB
    on loopback), so a reader that stops reading backs up into the server
    after kilobytes instead of megabytes. ``local_address`` binds the socket
    first (another loopback address, say, to be another client to the server's
    per-address limits). A WebSocket upgrade answered with a status instead is
    :class:`Refused`.
    """
    address = parse_url(url)
    tls = tls_for(address, CAFILE.get())
    sock = await _connect(address, receive_buffer, local_address)
    stream: Carrier = sock if tls is None else await secure(address, sock, tls)
    rejected: ConnectionRejected | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                websocket = address.transport == "ws"
                ws = await _upgrade(nursery, address, stream) if websocket else None
                yield RawClient(address, stream, ws, sock)
            finally:
                # Close before cancelling: a checkpoint in a cancelled scope here would
                # replace the body's exception with Cancelled, and the nursery would eat it.
                with trio.CancelScope(shield=True):
                    await release(sock)
                nursery.cancel_scope.cancel()
    except* ConnectionRejected as group:  # trio-websocket's reader task raises the refusal
        found = group.exceptions[0]
        assert isinstance(found, ConnectionRejected)
        rejected = found
    if rejected is not None:
        raise Refused(address, rejected.status_code, rejected.body or b"")


async def _connect(
    address: Address, receive_buffer: int | None, local_address: str | None = None
) -> trio.SocketStream:
    try:
        infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            if local_address is not None:
                await sock.bind((local_address, 0))
            await sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ConnectError(f"{address}: cannot connect ({exc.strerror or exc})") from None
    return trio.SocketStream(sock)


async def _upgrade(nursery: trio.Nursery, address: Address, stream: Carrier) -> WebSocketConnection:
    try:
        ws: WebSocketConnection = await wrap_client_stream(
            nursery, stream, address.host, "/", max_message_size=CLIENT_MAX_LINE
        )
    except ConnectionRejected as exc:
        raise Refused(address, exc.status_code, exc.body or b"") from None
    except Exception as exc:
        raise ConnectError(f"{address}: WebSocket handshake failed ({exc!r})") from None
    return ws
