"""NDJSON over any trio byte stream (TCP sockets, TLS, or memory streams in tests).

On the server a connection only reads: the session's outbox writes to
:attr:`StreamConnection.stream` (see :mod:`triochat.server.outbox`). Clients,
which write from their own task, use :meth:`StreamConnection.send` and
:meth:`StreamConnection.close`.
"""

from __future__ import annotations

import math
import re
from functools import partial
from http import HTTPStatus

import trio

from triochat.errors import ConnectionLost, WrongPort
from triochat.protocol import LineSplitter
from triochat.transport.base import (
    DRIP_SIZE,
    RECEIVE_SIZE,
    CloseCode,
    Direct,
    Frame,
    Replies,
    http_refusal,
    read_socket,
    read_stream,
    receive_unfinished,
    write_without_waiting,
)
from triochat.transport.release import linger, release

HTTP_REQUEST = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE) ")
"""How an HTTP request starts; no NDJSON line does."""


class StreamConnection:
    native_ping = False
    secure = False
    """True in the TLS subclass (transport/tls_direct.py; see :attr:`Connection.secure`)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_line: int,
        message_timeout: float = math.inf,
        remote: str = "?",
        http_answer: bytes | None = None,
    ) -> None:
        self._stream = stream
        self._splitter = LineSplitter(max_line, trio.current_time)
        self._message_timeout = message_timeout
        self._small = False
        """The last read was a small piece of a line it did not finish."""
        self.remote = remote
        self._http_answer = http_answer
        """A server's answer to a peer whose first bytes are an HTTP request: this is
        sent in an HTTP response and the connection ends (:class:`WrongPort`).
        Checked on the first bytes only, before anything has been written to the peer."""
        self.stream = stream
        self.frame: Frame | None = None
        self.direct: Direct | None = None
        self.write_lines: Direct | None = None
        self._socket: trio.socket.SocketType | None = None
        """Read directly (see :func:`read_socket`); ``None`` for other streams."""
        if isinstance(stream, trio.SocketStream):
            self._socket = stream.socket
            self.direct = self.write_lines = partial(write_without_waiting, stream.socket)

    async def receive_lines(self, replies: Replies | None = None) -> list[bytes]:
        self._splitter.check()  # an over-long line may wait behind the lines last returned
        while True:
            since = self._splitter.since
            if since is None:
                data = await self._receive_some()
            else:
                data = await receive_unfinished(
                    self._receive_some, since, self._message_timeout, pause=self._small
                )
            if self._http_answer is not None:
                self._refuse_http(data, replies)
            lines = self._splitter.feed(data)
            if lines:
                return lines
            self._small = len(data) < DRIP_SIZE

    async def _receive_some(self) -> bytes | bytearray:
        if self._socket is not None:
            data: bytes | bytearray = await read_socket(self._socket, RECEIVE_SIZE, self.remote)
        else:
            data = await read_stream(self._stream, RECEIVE_SIZE, self.remote)
        if not data:
            raise ConnectionLost(f"{self.remote}: closed by peer")
        return data

    def _refuse_http(self, first: bytes | bytearray, replies: Replies | None) -> None:
        """:class:`WrongPort` (the answer, in HTTP, left with ``replies``) if
        ``first`` starts an HTTP request."""
        answer, self._http_answer = self._http_answer, None
        if answer is None or not HTTP_REQUEST.match(first):
            return
        if replies is not None:
            replies.control(http_refusal(HTTPStatus.BAD_REQUEST, answer))
        raise WrongPort(f"{self.remote}: an HTTP request on the TCP port")

    async def send(self, data: bytes) -> None:
        """A client's write (the server's go through its outbox)."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"{self.remote}: {exc}") from None

    async def ping(self, replies: Replies) -> None:
        raise NotImplementedError("plain streams have no transport-level ping")

    def goodbye(self, code: CloseCode) -> bytes:
        return b""  # TCP says goodbye with its FIN (see finish)

    async def finish(self) -> None:
        """A lingering close (see :func:`linger`), bounded by the caller."""
        await linger(self._stream)

    async def close(self, code: CloseCode) -> None:
        """A client's goodbye: a lingering close, then release; the caller bounds it."""
        try:
            await linger(self._stream)
        finally:
            await self.abort()

    async def abort(self) -> None:
        await release(self._stream)
