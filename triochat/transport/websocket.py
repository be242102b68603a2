"""NDJSON over WebSocket text messages, on trio-websocket's public API: the client side.

The server speaks WebSocket through wsproto (triochat/transport/wsproto_ws.py);
triochat's clients (triochat/client.py, the TUI, the harness) use this, over
trio-websocket. A message from the server may hold several lines (it batches);
binary messages are not part of the protocol and are a ``bad_event``.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed as WsClosed
from trio_websocket import WebSocketConnection

from triochat.errors import ConnectionLost
from triochat.protocol import ErrorCode, ProtocolError, split_message
from triochat.transport.base import CloseCode
from triochat.transport.release import release


class WebSocketLines:
    """A client's WebSocket: framing and the stream belong to trio-websocket."""

    native_ping = True

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        max_line: int,
        stream: trio.abc.Stream,
        remote: str = "?",
    ) -> None:
        """``stream`` is the byte stream under ``ws``; we own it, so :meth:`abort` closes it."""
        self._ws = ws
        self._stream = stream
        self._max_line = max_line
        self.remote = remote

    async def receive_lines(self) -> list[bytes]:
        while True:
            message = await self._receive()
            if isinstance(message, bytes):
                raise ProtocolError(
                    ErrorCode.BAD_EVENT, "binary messages are not part of the protocol"
                )
            lines = split_message(message.encode(), self._max_line)
            if lines:
                return lines

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
