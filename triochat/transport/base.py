"""The one interface both transports offer: whole lines in, batches of lines out."""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

import trio

WriteNow = Callable[[bytes], bool]
"""Send ``data`` (whole lines) without waiting, as far as the socket takes it.

``True``: all of it is on the wire. ``False``: the connection holds the rest, in
wire form (a WebSocket frame cannot be cut and framed again), and writes it
first on the next :meth:`Connection.send`, which the caller must make;
``send(b"")`` is enough. Never raises: after a failed write the data is held,
and that send meets the error.

Only while no :meth:`Connection.send` is running.
"""


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


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (as in URLs)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CloseCode(IntEnum):
    """WebSocket close codes we send (TCP connections just close)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009


class Connection(Protocol):
    """One peer, after any transport handshake.

    Errors: :class:`~triochat.errors.ConnectionLost` when the peer went away;
    :class:`~triochat.protocol.ProtocolError` when what it sent breaks framing
    (``too_large``: the stream is no longer usable; ``bad_event``: a binary
    WebSocket frame, which is skipped).
    """

    remote: str
    """The peer's address, for logs."""
    native_ping: bool
    """True when :meth:`ping` is a transport-level check (WebSocket Ping/Pong)."""

    @property
    def write_now(self) -> WriteNow | None:
        """The transport's :data:`WriteNow`; ``None`` if it has no such write."""
        ...

    async def receive_lines(self) -> list[bytes]:
        """The next complete non-blank lines, at least one."""
        ...

    async def send(self, data: bytes) -> None:
        """Send what :data:`WriteNow` left held, then ``data`` (whole lines) as one message.

        ``data`` may be empty: then only the held bytes go.
        """
        ...

    async def ping(self) -> None:
        """Return when the peer answered a transport-level ping (only if ``native_ping``)."""
        ...

    async def close(self, code: CloseCode) -> None:
        """Say goodbye: flush, close politely (with ``code`` on WebSocket), release."""
        ...

    async def abort(self) -> None:
        """Release the connection now, without any goodbye."""
        ...
