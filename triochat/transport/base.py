"""The one interface both transports offer: whole lines in, batches of lines out."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from enum import IntEnum
from http import HTTPStatus
from typing import Protocol, TypeVar

import trio

from triochat.errors import ConnectionLost
from triochat.protocol import ErrorCode, ProtocolError

T = TypeVar("T")

SCHEMES = {"ws": ("ws", False), "wss": ("ws", True), "tcp": ("tcp", False), "tls": ("tcp", True)}
"""Each URL scheme's transport (``ws`` or ``tcp``) and whether it runs over TLS."""
_URL_SCHEMES = {meaning: scheme for scheme, meaning in SCHEMES.items()}


def url_scheme(transport: str, *, secure: bool) -> str:
    """The URL scheme of ``transport`` (``ws`` or ``tcp``), with or without TLS."""
    return _URL_SCHEMES[transport, secure]


RECEIVE_SIZE = 64 * 1024
"""The most bytes one read asks for."""
DRIP_PAUSE = 0.01
"""Seconds between reads of a peer whose unfinished line or message comes in small pieces."""
DRIP_SIZE = 1024
"""A read shorter than this (in bytes) that leaves a line or message unfinished is a small piece."""

Direct = Callable[[bytes], bytes]
"""Write what the socket takes now, without waiting; return the rest (``b""``: all of it)."""

Frame = Callable[[bytes], bytes]
"""Whole lines in, wire bytes out (a WebSocket text frame); ``b""`` once no more data may go."""


def write_without_waiting(sock: trio.socket.SocketType, data: bytes) -> bytes:
    """Write what the socket's buffer takes now; return the rest (``b""`` when all of it went).

    Trio keeps no user-space send buffer, so a plain write on the (non-blocking)
    descriptor is all a send is when the buffer has room. The descriptor is
    looked up on every call: a closed socket's is -1 (``EBADF``), never a number
    that may already belong to another connection. A failure leaves all of
    ``data`` unwritten, for the connection's next awaited send to meet the error.
    """
    try:
        written = os.write(sock.fileno(), data)
    except OSError:  # the buffer is full, or the socket is gone
        return data
    return data[written:]


async def read_socket(sock: trio.socket.SocketType, size: int, remote: str) -> bytes:
    """One read of at most ``size`` bytes (``b""`` at EOF), as trio's ``recv`` does it.

    Written out here because an idle connection's reader waits inside it: trio's
    ``SocketStream.receive_some`` waits four coroutine frames deeper, and each
    suspended frame is memory held per connection. The same checkpoints as
    trio's: one before a read that succeeds at once, else the wait itself.
    :class:`ConnectionLost` (naming ``remote``) if the socket is gone: the descriptor
    is looked up on every read, and a closed socket's is -1, never another connection's.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        data = _read_now(sock, size, remote)
    except BlockingIOError:
        pass
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return _read_now(sock, size, remote)
        except BlockingIOError:
            pass


async def read_stream(stream: trio.abc.ReceiveStream, size: int, remote: str) -> bytes:
    """:func:`read_socket` for any other stream (TLS): one read, ``b""`` at EOF, and
    :class:`ConnectionLost` (naming ``remote``) when the stream is broken or closed."""
    try:
        return bytes(await stream.receive_some(size))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionLost(f"{remote}: {exc}") from None


def _read_now(sock: trio.socket.SocketType, size: int, remote: str) -> bytes:
    try:
        return os.read(sock.fileno(), size)
    except BlockingIOError:
        raise
    except OSError as exc:  # reset, or closed under us
        raise ConnectionLost(f"{remote}: {exc.strerror or exc}") from None


def http_refusal(status: int, body: bytes) -> bytes:
    """A whole HTTP response (no upgrade, then close) carrying ``body``, one NDJSON line."""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (as in URLs)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CloseCode(IntEnum):
    """WebSocket close codes we send (TCP connections just close)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009


ENDS_CONNECTION = {
    ErrorCode.TOO_LARGE: CloseCode.TOO_BIG,
    ErrorCode.MESSAGE_TIMEOUT: CloseCode.POLICY,
}
"""Errors of :meth:`Connection.receive_lines` after which the stream is no longer
usable, each with the close code the connection ends with."""


async def receive_unfinished(
    receive: Callable[[], Awaitable[T]], since: float, limit: float, *, pause: bool
) -> T:
    """``receive()`` for a peer part-way through a line or message that began at ``since``.

    The line or message must end within ``limit`` seconds of its first byte, however its
    pieces are spaced: ``message_timeout`` once that has passed. Between lines a
    peer is not timed here: silence is the keepalive's business. ``pause`` (the last
    read was a small piece) waits :data:`DRIP_PAUSE` before reading, so a peer that
    drips costs a wakeup per pause, not per byte: what arrives meanwhile is one read.
    """
    with trio.move_on_at(since + limit):
        if pause:
            await trio.sleep(DRIP_PAUSE)
        return await receive()
    raise message_timeout(limit)


def message_timeout(limit: float) -> ProtocolError:
    """The error of a line or message not complete ``limit`` seconds after its first byte."""
    return ProtocolError(
        ErrorCode.MESSAGE_TIMEOUT, f"a line or message still unfinished {limit:g} s after it began"
    )


class Replies(Protocol):
    """Where a transport's reader puts what the protocol makes it answer (see
    :meth:`triochat.server.outbox.Outbox.control`): a reader never writes itself."""

    def control(self, wire: bytes) -> None: ...

    def closing(self, wire: bytes) -> None:
        """The answer to a peer's Close: sent by the goodbye, once the session has ended
        (and its nick is free), so a peer that sees its close answered may take it again."""
        ...


class Connection(Protocol):
    """One peer of the server, after any transport handshake: it reads and frames,
    and the session's outbox writes (:mod:`triochat.server.outbox`).

    Errors: :class:`~triochat.errors.ConnectionLost` when the peer went away;
    :class:`~triochat.protocol.ProtocolError` when what it sent breaks framing
    (``too_large``, ``message_timeout``: the stream is no longer usable, see
    :data:`ENDS_CONNECTION`; ``bad_event``: a binary WebSocket message, which is skipped).
    """

    remote: str
    """The peer's address, for logs."""
    native_ping: bool
    """True when :meth:`ping` is a transport-level check (WebSocket Ping/Pong)."""
    secure: bool
    """The bytes are encrypted between the peer and this server (TLS)."""
    stream: trio.abc.Stream
    """What the outbox's writer writes to."""
    direct: Direct | None
    """The outbox's write without waiting; ``None`` if the stream is not a socket."""
    frame: Frame | None
    """How lines are framed on the wire; ``None``: as they are."""
    write_lines: Direct | None
    """``frame`` then ``direct`` in one call (the outbox's hottest path): the
    framed bytes the socket did not take; ``None`` if the stream is not a socket."""

    async def receive_lines(self, replies: Replies) -> list[bytes]:
        """The next complete non-blank lines, at least one; answers go to ``replies``."""
        ...

    async def ping(self, replies: Replies) -> None:
        """Return when the peer answered a transport-level ping (only if ``native_ping``)."""
        ...

    def goodbye(self, code: CloseCode) -> bytes:
        """The wire bytes that close politely (a WebSocket Close with ``code``), if any."""
        ...

    async def finish(self) -> None:
        """After the goodbye is written: wait for the peer's end (its Close, or EOF)."""
        ...

    async def abort(self) -> None:
        """Release the connection now."""
        ...


class ClientConnection(Protocol):
    """A client's side of a connection: it reads, and writes from its own task."""

    remote: str
    native_ping: bool

    async def receive_lines(self) -> list[bytes]:
        """The next complete non-blank lines, at least one."""
        ...

    async def send(self, data: bytes) -> None:
        """Send ``data`` (whole lines) as one message."""
        ...

    async def close(self, code: CloseCode) -> None:
        """Say goodbye (with ``code`` on WebSocket) and release; the caller bounds it."""
        ...

    async def abort(self) -> None:
        """Release the connection now, without any goodbye."""
        ...
