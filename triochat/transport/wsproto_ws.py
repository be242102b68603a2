"""NDJSON over WebSocket on wsproto's sans-IO API: the framing and the socket are ours.

Theory of operation
-------------------
trio-websocket gives every connection a reader task, a message channel and a
``send_message`` that passes through the scheduler twice; at fan-out rates that
is most of what a delivery costs, and at idle most of what a connection weighs
(docs/performance.md). Here wsproto (the protocol library under trio-websocket)
parses what the peer sends and produces the handshake and control frames; the
session's own reader task feeds it, and lines go out as text frames built here
(a server's frames are not masked, RFC 6455 §5.1). So the outbox can write a
batch without waiting, exactly as on TCP.

Writes keep one invariant: bytes reach the socket in the order they were
accepted. At most one task writes at a time (``_lock``); a write without
waiting happens only while no task writes and nothing is held, and otherwise
joins ``_held``, which every locked write sends first. A locked write cut short
(cancelled mid-frame) leaves the connection broken: nothing more is written.

What trio-websocket did for us and is done here, each in one place:

- the close handshake: a peer's Close is answered at once (:meth:`_on_close`);
  ours waits for the peer's answer, bounded by the caller (:meth:`close`);
  once a Close is sent or received no text frame is made (:meth:`_text_frame`);
- a Ping is answered with a Pong, except after our Close (trio-websocket #184);
- fragmented messages are reassembled, at most ``max_message`` bytes over all
  their fragments (``too_large``, 1009), and must end within ``message_timeout``
  of their first fragment (``message_timeout``, 1008);
- a frame wsproto cannot accept (invalid UTF-8, a bad header) gets the close
  code wsproto names (1007, 1002), which trio-websocket 0.12 does not send;
- a request that is not a WebSocket upgrade gets wsproto's HTTP error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as Protocol
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from triochat.errors import ConnectionLost
from triochat.protocol import ErrorCode, ProtocolError, split_message
from triochat.transport.base import (
    DRIP_SIZE,
    CloseCode,
    WriteNow,
    receive_unfinished,
    write_without_waiting,
)
from triochat.transport.release import release

RECEIVE_SIZE = 64 * 1024
_OPEN = ConnectionState.OPEN


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame holding ``payload`` (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


async def accept(
    stream: trio.SocketStream,
    *,
    max_line: int,
    max_message: int,
    message_timeout: float = math.inf,
    remote: str = "?",
    refuse: Callable[[Request], bytes | None] | None = None,
) -> WsprotoConnection | None:
    """The server's side of the opening handshake.

    ``None`` if the peer left first, or sent something other than an upgrade
    request (it gets wsproto's HTTP error response), or ``refuse`` turned the
    request down (it gets the HTTP response ``refuse`` returned). The caller
    bounds the time.
    """
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        try:
            ws.receive_data(data)
        except RemoteProtocolError as exc:
            if exc.event_hint is not None:
                await stream.send_all(ws.send(exc.event_hint))
            return None
        for event in ws.events():
            if isinstance(event, Request):
                answer = refuse(event) if refuse is not None else None
                if answer is not None:
                    await stream.send_all(answer)
                    return None
                await stream.send_all(ws.send(AcceptConnection()))
                assert ws.connection is not None  # accepting opened it
                return WsprotoConnection(
                    stream,
                    ws.connection,
                    max_line=max_line,
                    max_message=max_message,
                    message_timeout=message_timeout,
                    remote=remote,
                )


class WsprotoConnection:
    """One accepted WebSocket peer (see the module docstring)."""

    native_ping = True

    def __init__(
        self,
        stream: trio.SocketStream,
        protocol: Protocol,
        *,
        max_line: int,
        max_message: int,
        message_timeout: float = math.inf,
        remote: str = "?",
    ) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._ws = protocol
        self._max_line = max_line
        self._max_message = max_message
        self.remote = remote
        self.write_now: WriteNow | None = self._write_now
        self._lock = trio.StrictFIFOLock()
        self._held = b""
        """Wire bytes accepted but not yet written; they go before anything else."""
        self._broken = False
        """A write was cut short mid-frame: the byte stream is no longer WebSocket."""
        self._message = bytearray()
        """The text message being received, UTF-8, while it is unfinished."""
        self._message_size = 0
        """Bytes of the message being received so far (text or binary)."""
        self._message_since: float | None = None
        """When its first fragment arrived; None between messages."""
        self._message_timeout = message_timeout
        self._small = False
        """The last read was a small piece of a message it did not finish."""
        self._pongs: dict[bytes, trio.Event] = {}
        self._pings_sent = 0

    # --- writing ----------------------------------------------------------------

    def _text_frame(self, data: bytes) -> bytes:
        """``data`` as a text frame, or nothing once a Close was sent or received.

        Every text frame is made here, so none can follow a Close on the wire: after
        ours the peer must get nothing but control frames (RFC 6455 §5.5.1), and
        after its Close the session is ending.
        """
        if self._ws.state is not _OPEN:
            return b""
        return text_frame(data)

    def _write_now(self, data: bytes) -> bool:
        """Frame ``data`` and write what the socket takes now (see :data:`WriteNow`)."""
        frame = self._text_frame(data)
        if self._held or self._lock.locked():
            self._held += frame
        else:
            self._held = write_without_waiting(self._socket, frame)
        return not self._held

    async def send(self, data: bytes) -> None:
        await self._write(self._text_frame(data) if data else b"")

    async def _write(self, wire: bytes) -> None:
        """Write what is held, then ``wire``: every write that may wait comes here."""
        async with self._lock:
            wire, self._held = self._held + wire, b""
            if self._broken:
                raise ConnectionLost(f"{self.remote}: an earlier write was cut short")
            if not wire:
                return
            self._broken = True  # until the whole of it is written
            try:
                await self._stream.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(f"{self.remote}: {exc}") from None
            self._broken = False

    # --- reading ----------------------------------------------------------------

    async def receive_lines(self) -> list[bytes]:
        while True:
            for event in self._ws.events():
                lines = await self._on_event(event)
                if lines:
                    # Events not yet taken stay with wsproto for the next call.
                    return lines
            since = self._message_since
            if since is None:
                await self._receive_some()
            else:
                size = await receive_unfinished(
                    self._receive_some, since, self._message_timeout, pause=self._small
                )
                self._small = size < DRIP_SIZE

    async def _receive_some(self) -> int:
        """Read once and give wsproto what came; how many bytes that was."""
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{self.remote}: {exc}") from None
        if not data:
            raise ConnectionLost(f"{self.remote}: closed by peer without a Close frame")
        self._ws.receive_data(data)
        return len(data)

    async def _on_event(self, event: Event) -> list[bytes]:
        """Handle one event; the lines of a text message it completes."""
        if isinstance(event, TextMessage):
            return self._on_text(event)
        if isinstance(event, BytesMessage):
            self._count(event.data, event.message_finished)
            if event.message_finished:
                raise ProtocolError(
                    ErrorCode.BAD_EVENT, "binary messages are not part of the protocol"
                )
        elif isinstance(event, Ping):
            if self._ws.state is _OPEN:
                await self._write(self._ws.send(event.response()))
        elif isinstance(event, Pong):
            answered = self._pongs.pop(bytes(event.payload), None)
            if answered is not None:
                answered.set()
        elif isinstance(event, CloseConnection):
            await self._on_close(event)
        return []

    def _on_text(self, event: TextMessage) -> list[bytes]:
        part = event.data.encode()
        if self._message_since is None and event.message_finished:  # the usual: one whole frame
            if len(part) > self._max_message:
                raise self._too_large()
            return split_message(part, self._max_line)
        self._count(part, event.message_finished)
        self._message += part
        if not event.message_finished:
            return []
        message = bytes(self._message)
        self._message.clear()
        return split_message(message, self._max_line)

    def _count(self, part: bytes | bytearray, finished: bool) -> None:
        """Account for one piece of a message: its size over all pieces, and its deadline."""
        if self._message_since is None:
            self._message_since = trio.current_time()
        self._message_size += len(part)
        if self._message_size > self._max_message:
            raise self._too_large()
        if finished:
            self._message_size = 0
            self._message_since = None

    def _too_large(self) -> ProtocolError:
        return ProtocolError(ErrorCode.TOO_LARGE, f"message longer than {self._max_message} bytes")

    async def _on_close(self, event: CloseConnection) -> None:
        """The peer closed, or wsproto found a frame it cannot accept: answer, then end.

        wsproto reports a frame it cannot parse as a Close it received while
        still OPEN; then the code it names (1007 for invalid UTF-8, 1002 for
        framing) is ours to send.
        """
        if self._ws.state is _OPEN:
            reply = self._ws.send(CloseConnection(code=event.code, reason=event.reason))
            why = f"protocol error ({event.code}): {event.reason}"
        else:
            reply = self._ws.send(event.response())
            why = f"closed by peer ({event.code})"
        await self._write(reply)
        raise ConnectionLost(f"{self.remote}: {why}")

    # --- keepalive and goodbye ---------------------------------------------------

    async def ping(self) -> None:
        self._pings_sent += 1
        payload = self._pings_sent.to_bytes(4, "big")
        answered = self._pongs[payload] = trio.Event()
        try:
            if self._ws.state is not _OPEN:
                raise ConnectionLost(f"{self.remote}: closing")
            await self._write(self._ws.send(Ping(payload)))
            await answered.wait()
        finally:
            self._pongs.pop(payload, None)

    async def close(self, code: CloseCode) -> None:
        """Close frame (after whatever is held), then read until the peer's Close.

        The caller bounds the wait; the stream is released either way.
        """
        try:
            if self._ws.state is _OPEN:
                await self._write(self._ws.send(CloseConnection(code=code)))
            while self._ws.state is ConnectionState.LOCAL_CLOSING:
                await self._receive_some()
                for _ in self._ws.events():  # the answer moves the state to CLOSED
                    pass
        except ConnectionLost:
            pass
        finally:
            await self.abort()

    async def abort(self) -> None:
        await release(self._stream)
