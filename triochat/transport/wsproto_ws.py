"""WebSocket messages and NDJSON lines on wsproto's sans-IO API; the framing and socket are ours.

Theory of operation
-------------------
trio-websocket gives every connection a reader task, a message channel and a
``send_message`` that passes through the scheduler twice; at fan-out rates that
is most of what a delivery costs, and at idle most of what a connection weighs
(docs/performance.md). Here wsproto (the protocol library under trio-websocket)
parses what the peer sends and produces the control frames; the opening
request is answered before this connection exists (transport/upgrade.py); the
session's own reader task feeds it, and lines go out as text frames built here
(a server's frames are not masked, RFC 6455 §5.1). So the outbox can write a
batch without waiting, exactly as on TCP.

Reading has two layers. :meth:`WsprotoConnection.receive_message` is plain
WebSocket: whole messages, text (as UTF-8) or binary, with every control frame
answered on the way; it is what the Autobahn conformance suite checks, through
an echo server in the tests (tests/conformance/). :meth:`~WsprotoConnection.receive_lines`
is the chat protocol's view of it: a text message's NDJSON lines, and a binary
message is ``bad_event``.

This connection never writes: the session's outbox does, one writer at a time
(see :mod:`triochat.server.outbox`). What the protocol makes the reader answer
(a Pong, the answer to a Close) goes to the outbox's control lane, so a
reader's cancel scope can never cut a frame short.

What trio-websocket did for us and is done here, each in one place:

- the close handshake: a peer's Close is answered at once (:meth:`_on_close`);
  ours (:meth:`goodbye`) is followed by waiting for the peer's answer, bounded
  by the caller (:meth:`finish`);
  once a Close is sent or received no text frame is made (:meth:`_text_frame`);
- a Ping is answered with a Pong, except after our Close (trio-websocket #184);
- fragmented messages are reassembled, at most ``max_message`` bytes over all
  their fragments (``too_large``, 1009), and must end within ``message_timeout``
  of their first fragment (``message_timeout``, 1008);
- a frame wsproto cannot accept (invalid UTF-8, a bad header) gets the close
  code wsproto names (1007, 1002), which trio-websocket 0.12 does not send.
"""

from __future__ import annotations

import math
from collections.abc import Coroutine
from functools import partial
from typing import Any, NamedTuple, NoReturn

import trio
from wsproto.connection import Connection as Protocol
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from triochat.errors import ConnectionLost
from triochat.protocol import ErrorCode, ProtocolError, split_message
from triochat.transport.base import (
    DRIP_SIZE,
    RECEIVE_SIZE,
    CloseCode,
    Direct,
    Frame,
    Replies,
    read_socket,
    read_stream,
    receive_unfinished,
    write_without_waiting,
)
from triochat.transport.release import release

_OPEN = ConnectionState.OPEN


class Message(NamedTuple):
    """One whole message as the peer sent it, its fragments joined."""

    data: bytes
    """The payload; UTF-8 (checked by wsproto) for a text message."""
    binary: bool


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame holding ``payload`` (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def binary_frame(payload: bytes) -> bytes:
    """``payload`` as a final, unmasked binary frame: a text frame but for the opcode.

    No chat line goes this way (the tests' echo does), so it is made from the text frame.
    """
    return b"\x82" + text_frame(payload)[1:]


class WsprotoConnection:
    """One accepted WebSocket peer (see the module docstring)."""

    native_ping = True
    secure = False
    """True in the TLS subclass (transport/tls_direct.py; see :attr:`Connection.secure`)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: Protocol,
        *,
        max_line: int,
        max_message: int,
        message_timeout: float = math.inf,
        remote: str = "?",
    ) -> None:
        self._stream = stream
        self.stream = stream
        self.frame: Frame | None = self._text_frame
        self._socket: trio.socket.SocketType | None = None
        """Read and written directly; ``None`` for other streams (TLS), which the
        outbox's writer task writes to."""
        self.direct: Direct | None = None
        self.write_lines: Direct | None = None
        if isinstance(stream, trio.SocketStream):
            self._socket = stream.socket
            self.direct = partial(write_without_waiting, stream.socket)
            self.write_lines = self._write_lines
        self._ws = protocol
        self._max_line = max_line
        self._max_message = max_message
        self.remote = remote
        self._message = bytearray()
        """The message being received (text in UTF-8), while it is unfinished."""
        self._message_since: float | None = None
        """When its first fragment arrived; None between messages."""
        self._message_timeout = message_timeout
        self._small = False
        """The last read was a small piece of a message it did not finish."""
        self._pongs: dict[bytes, trio.Event] = {}
        self._pings_sent = 0

    # --- framing ----------------------------------------------------------------

    def _text_frame(self, data: bytes) -> bytes:
        """``data`` as a text frame, or nothing once a Close was sent or received.

        Every text frame is made here, so none can follow a Close on the wire: after
        ours the peer must get nothing but control frames (RFC 6455 §5.5.1), and
        after its Close the session is ending.
        """
        if self._ws.state is not _OPEN:
            return b""
        return text_frame(data)

    def _write_lines(self, data: bytes) -> bytes:
        """``direct(frame(data))`` in one call: it runs once per recipient of each flush."""
        if self._ws.state is not _OPEN:
            return b""
        # Offered as ``write_lines`` only when the stream is a socket: never None here.
        return write_without_waiting(self._socket, text_frame(data))  # type: ignore[arg-type]

    # --- reading ----------------------------------------------------------------

    async def receive_lines(self, replies: Replies) -> list[bytes]:
        """The chat protocol's view: a text message's NDJSON lines; binary is ``bad_event``.

        It reads for itself rather than through :meth:`receive_message`: an idle
        connection waits in here, and each suspended coroutine frame is memory
        held per connection.
        """
        while True:
            message = self._next_message(replies)
            if message is None:
                self._feed(await self._read_more())
                continue
            data, binary = message
            if binary:
                raise ProtocolError(
                    ErrorCode.BAD_EVENT, "binary messages are not part of the protocol"
                )
            lines = split_message(data, self._max_line)
            if lines:
                return lines

    async def receive_message(self, replies: Replies) -> Message:
        """The next whole message, its fragments joined; answers go to ``replies``."""
        while (message := self._next_message(replies)) is None:
            self._feed(await self._read_more())
        return message

    def _next_message(self, replies: Replies) -> Message | None:
        """The next message among the events wsproto has already parsed, if any.

        Events after it stay with wsproto for the next call.
        """
        for event in self._ws.events():
            message = self._on_event(event, replies)
            if message is not None:
                return message
        return None

    def _read_more(self) -> Coroutine[Any, Any, bytes]:
        """One more read: between messages without a clock (silence is the
        keepalive's business), part-way through one within ``message_timeout``.

        Not a coroutine function: its caller awaits the read itself, one frame
        less for an idle connection to hold.
        """
        since = self._message_since
        if since is None:
            return self._read()
        return self._read_unfinished(since)

    async def _read_unfinished(self, since: float) -> bytes:
        data = await receive_unfinished(self._read, since, self._message_timeout, pause=self._small)
        self._small = len(data) < DRIP_SIZE
        return data

    def _read(self) -> Coroutine[Any, Any, bytes]:
        if self._socket is None:
            return read_stream(self._stream, RECEIVE_SIZE, self.remote)
        return read_socket(self._socket, RECEIVE_SIZE, self.remote)

    async def _receive_some(self) -> int:
        """Read once and give wsproto what came; how many bytes that was."""
        return self._feed(await self._read())

    def _feed(self, data: bytes) -> int:
        if not data:
            raise ConnectionLost(f"{self.remote}: closed by peer without a Close frame")
        self._ws.receive_data(data)
        return len(data)

    def _on_event(self, event: Event, replies: Replies) -> Message | None:
        """Handle one event; the message it completes, if any."""
        if isinstance(event, TextMessage):
            return self._on_data(event.data.encode(), event.message_finished, binary=False)
        if isinstance(event, BytesMessage):
            return self._on_data(bytes(event.data), event.message_finished, binary=True)
        if isinstance(event, Ping):
            if self._ws.state is _OPEN:
                replies.control(self._ws.send(event.response()))
        elif isinstance(event, Pong):
            answered = self._pongs.pop(bytes(event.payload), None)
            if answered is not None:
                answered.set()
        elif isinstance(event, CloseConnection):
            self._on_close(event, replies)
        return None

    def _on_data(self, part: bytes, finished: bool, *, binary: bool) -> Message | None:
        """One piece of a message: the whole message once ``finished``.

        The size is checked over all the pieces so far, and the first piece
        starts the message's clock.
        """
        if self._message_since is None:
            if finished:  # the usual: one whole frame
                if len(part) > self._max_message:
                    raise self._too_large()
                return Message(part, binary)
            self._message_since = trio.current_time()
        message = self._message
        message += part
        if len(message) > self._max_message:
            raise self._too_large()
        if not finished:
            return None
        whole = bytes(message)
        message.clear()
        self._message_since = None
        return Message(whole, binary)

    def _too_large(self) -> ProtocolError:
        return ProtocolError(ErrorCode.TOO_LARGE, f"message longer than {self._max_message} bytes")

    def _on_close(self, event: CloseConnection, replies: Replies) -> NoReturn:
        """The peer closed, or wsproto found a frame it cannot accept: answer (once the
        session has ended: :meth:`Replies.closing`), then end.

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
        replies.closing(reply)
        raise ConnectionLost(f"{self.remote}: {why}")

    # --- keepalive and goodbye ---------------------------------------------------

    async def ping(self, replies: Replies) -> None:
        self._pings_sent += 1
        payload = self._pings_sent.to_bytes(4, "big")
        answered = self._pongs[payload] = trio.Event()
        try:
            if self._ws.state is not _OPEN:
                raise ConnectionLost(f"{self.remote}: closing")
            replies.control(self._ws.send(Ping(payload)))
            await answered.wait()
        finally:
            self._pongs.pop(payload, None)

    def goodbye(self, code: CloseCode) -> bytes:
        """Our Close frame, unless a Close was already sent or received."""
        if self._ws.state is not _OPEN:
            return b""
        return self._ws.send(CloseConnection(code=code))

    async def finish(self) -> None:
        """After our Close: read until the peer's answer (the caller bounds the wait)."""
        try:
            while self._ws.state is ConnectionState.LOCAL_CLOSING:
                await self._receive_some()
                for _ in self._ws.events():  # the answer moves the state to CLOSED
                    pass
        except ConnectionLost:
            pass

    async def abort(self) -> None:
        await release(self._stream)
