"""NDJSON over WebSocket text messages, on trio-websocket's public API.

A message may hold several lines (the server batches); a client may send one
event per message, with or without the trailing newline. Binary messages are
not part of the protocol and get ``bad_event``. Invalid UTF-8 in a text
message is a WebSocket protocol error: trio-websocket 0.12 drops the TCP
connection without the 1007 close frame RFC 6455 asks for (see
tests/server/test_bad_input.py); either way only that peer is gone.

trio-websocket reassembles a fragmented message in its own reader task, out of
sight, and bounds only its size (``max_message_size``, then 1009). So that a
message must also end within ``message_timeout`` of its first byte, the stream
under trio-websocket is a :class:`MessageWatch`, which follows the client's
frame headers as they pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import WebSocketConnection

from triochat.errors import ConnectionLost
from triochat.protocol import ErrorCode, ProtocolError, split_message
from triochat.transport.base import DRIP_PAUSE, DRIP_SIZE, CloseCode, WriteNow, message_timeout
from triochat.transport.release import release

_END_OF_REQUEST = b"\r\n\r\n"


class MessageWatch(trio.abc.Stream):
    """A byte stream passed through unchanged, watched for unfinished WebSocket messages.

    It reads what the client sends as RFC 6455 §5.2 frames once the HTTP request
    (which ends with a blank line) is over, and keeps :attr:`since`: when the first
    byte of the data message being received arrived. Control frames between
    fragments do not end a message. While a message is unfinished, a read that
    brought only a small piece is followed by :data:`DRIP_PAUSE` before the next.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        timeout: float = math.inf,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._stream = stream
        self.timeout = timeout
        self._clock = clock
        self.since: float | None = None
        self.scope: trio.CancelScope | None = None
        """A scope waiting for the next message: its deadline follows :attr:`since`."""
        self._request_tail: bytes | None = b""
        """The last bytes of the HTTP request while it lasts (its end may span reads)."""
        self._header = bytearray()
        self._payload_left = 0
        self._ends_message = False
        """The frame whose payload is being read is the last of a data message."""
        self._small = False

    @property
    def deadline(self) -> float:
        """When the message being received must be complete (``inf`` between messages)."""
        return math.inf if self.since is None else self.since + self.timeout

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._small and self.since is not None:
            await trio.sleep(DRIP_PAUSE)
        data = await self._stream.receive_some(max_bytes)
        self._small = len(data) < DRIP_SIZE
        self._watch(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def _watch(self, data: bytes | bytearray) -> None:
        at = 0 if self._request_tail is None else self._past_request(data)
        while at < len(data):
            if self._payload_left:
                step = min(self._payload_left, len(data) - at)
                self._payload_left -= step
                at += step
                if not self._payload_left and self._ends_message:
                    self._set_since(None)
            else:
                at = self._read_header(data, at)

    def _past_request(self, data: bytes | bytearray) -> int:
        """Where the first frame starts in ``data``; ``len(data)`` if the request goes on."""
        assert self._request_tail is not None
        seen = self._request_tail + data
        end = seen.find(_END_OF_REQUEST)
        if end < 0:
            self._request_tail = bytes(seen[-3:])
            return len(data)
        self._request_tail = None
        return end + len(_END_OF_REQUEST) - (len(seen) - len(data))

    def _read_header(self, data: bytes | bytearray, at: int) -> int:
        """Take header bytes from ``data[at:]``; where the header (or ``data``) ends."""
        if not self._header and self.since is None and data[at] & 0x0F < 0x8:
            self._set_since(self._clock())  # the first byte of a data frame: a message begins
        while True:
            need = _header_size(self._header) - len(self._header)
            if need == 0:
                self._start_payload()
                return at
            if at == len(data):
                return at
            self._header += data[at : at + need]
            at = min(at + need, len(data))

    def _start_payload(self) -> None:
        header = self._header
        opcode, final = header[0] & 0x0F, header[0] & 0x80
        size = header[1] & 0x7F
        if size >= 126:
            size = int.from_bytes(header[2 : 4 if size == 126 else 10], "big")
        self._ends_message = opcode < 0x8 and bool(final)
        self._payload_left = size
        header.clear()
        if not size and self._ends_message:
            self._set_since(None)

    def _set_since(self, since: float | None) -> None:
        self.since = since
        if self.scope is not None:
            self.scope.deadline = self.deadline


def _header_size(header: bytearray) -> int:
    """The length of a frame header of which ``header`` is the start (at least 2 bytes)."""
    if len(header) < 2:
        return 2
    size, masked = header[1] & 0x7F, header[1] & 0x80
    return 2 + {126: 2, 127: 8}.get(size, 0) + (4 if masked else 0)


class WebSocketLines:
    native_ping = True
    write_now: WriteNow | None = None
    """Framing and the stream belong to trio-websocket: every send goes through it."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        max_line: int,
        stream: trio.abc.Stream,
        watch: MessageWatch | None = None,
        remote: str = "?",
    ) -> None:
        """``stream`` is the byte stream under ``ws``; we own it, so :meth:`abort` closes it.

        ``watch``: the :class:`MessageWatch` over ``stream`` that ``ws`` reads
        through, whose messages must end in time (a server's); None: no deadline.
        """
        self._ws = ws
        self._stream = stream
        self._watch = watch
        self._max_line = max_line
        self.remote = remote

    async def receive_lines(self) -> list[bytes]:
        while True:
            message = await self._get_message()
            if isinstance(message, bytes):
                raise ProtocolError(
                    ErrorCode.BAD_EVENT, "binary messages are not part of the protocol"
                )
            lines = split_message(message.encode(), self._max_line)
            if lines:
                return lines

    async def _get_message(self) -> str | bytes:
        """The next message; ``message_timeout`` if one begins and does not end in time.

        A message may begin while this waits: the watch then moves the scope's deadline.
        """
        watch = self._watch
        if watch is None:
            return await self._receive()
        with trio.CancelScope(deadline=watch.deadline) as scope:
            watch.scope = scope
            try:
                return await self._receive()
            finally:
                watch.scope = None
        raise message_timeout(watch.timeout)

    async def _receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except WsClosed as exc:
            raise ConnectionLost(f"{self.remote}: {exc.reason}") from None

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send_message(data.decode())
        except WsClosed as exc:
            raise ConnectionLost(f"{self.remote}: {exc.reason}") from None

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except WsClosed as exc:
            raise ConnectionLost(f"{self.remote}: {exc.reason}") from None

    async def close(self, code: CloseCode) -> None:
        # aclose() waits for the peer's close frame; the caller bounds that wait,
        # and trio-websocket closes the stream itself if it is cancelled.
        await self._ws.aclose(code=code)

    async def abort(self) -> None:
        await release(self._stream)
