"""NDJSON over any trio byte stream (TCP sockets, or memory streams in tests)."""

from __future__ import annotations

import trio

from triochat.errors import ConnectionLost
from triochat.protocol import LineSplitter
from triochat.transport.base import CloseCode, WriteNow, write_without_waiting
from triochat.transport.release import release

RECEIVE_SIZE = 64 * 1024


class StreamConnection:
    native_ping = False

    def __init__(self, stream: trio.abc.Stream, *, max_line: int, remote: str = "?") -> None:
        self._stream = stream
        self._splitter = LineSplitter(max_line)
        self.remote = remote
        self.write_now: WriteNow | None = None
        self._held = b""
        """What :meth:`_write_now` could not write; :meth:`send` writes it first."""
        if isinstance(stream, trio.SocketStream):
            self._socket = stream.socket
            self.write_now = self._write_now

    def _write_now(self, data: bytes) -> bool:
        """Write what the socket buffer takes now (see :data:`WriteNow`)."""
        if self._held:
            self._held += data
        else:
            self._held = write_without_waiting(self._socket, data)
        return not self._held

    async def receive_lines(self) -> list[bytes]:
        self._splitter.check()  # an over-long line may wait behind the lines last returned
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(f"{self.remote}: {exc}") from None
            if not data:
                raise ConnectionLost(f"{self.remote}: closed by peer")
            lines = self._splitter.feed(data)
            if lines:
                return lines

    async def send(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{self.remote}: {exc}") from None

    async def ping(self) -> None:
        raise NotImplementedError("plain streams have no transport-level ping")

    async def close(self, code: CloseCode) -> None:
        """A lingering close: FIN, then read until the peer's FIN (bounded by the caller).

        Closing a socket with unread input makes the kernel send RST, which can
        destroy our last lines before the peer reads them; waiting for the
        peer's EOF first makes the close a flushed one.
        """
        try:
            if isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()
            while await self._stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            await self.abort()

    async def abort(self) -> None:
        await release(self._stream)
