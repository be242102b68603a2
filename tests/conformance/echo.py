"""A WebSocket echo server made of the server's own parts, for the Autobahn suite.

Not part of the product: the chat server speaks NDJSON lines and refuses binary
messages, while the Autobahn cases need an echo of every message. What is under
test is what the chat server runs on every WebSocket connection:

* reading (:meth:`WsprotoConnection.receive_message`): reassembly, UTF-8,
  control frames answered in the middle of a fragmented message, close codes;
* writing (:class:`~triochat.server.outbox.Outbox`): one writer at a time,
  writes without waiting, the writer task for what the socket did not take;
* the close, as :meth:`triochat.server.session.Session._say_goodbye` does it:
  a peer's Close (or EOF) ends the connection with nothing more to say; a
  message too large or too slow gets our Close (1009, 1008), then the wait
  for the peer's, each bounded by ``close_timeout``.

Each message goes back as one frame of its own kind through
:meth:`Outbox.control`, the outbox's lane for whole wire frames, in order. Its
line queue is no use here: it frames everything taken at once as one text frame.

The opening handshake is wsproto's own (the server's is triochat/transport/upgrade.py,
tested on its own): only what comes after the 101 is under test here.
"""

from __future__ import annotations

import contextlib
from functools import partial

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import RemoteProtocolError

from triochat.errors import ConnectionLost
from triochat.protocol import ProtocolError
from triochat.server.config import ServerConfig
from triochat.server.outbox import Outbox, OutboxClosed
from triochat.transport.base import ENDS_CONNECTION, RECEIVE_SIZE, CloseCode
from triochat.transport.release import release
from triochat.transport.wsproto_ws import WsprotoConnection, binary_frame, text_frame

MAX_MESSAGE = 16 * 1024 * 1024
"""Autobahn's largest messages (cases 9.1.6 and 9.2.6) are 16 MiB exactly."""
DEFAULTS = ServerConfig()
"""The chat server's defaults, for the timeouts the echo shares with it."""


async def serve_echo(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Echo on 127.0.0.1 until cancelled; ``task_status`` gets the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(echo, listeners)


async def echo(stream: trio.SocketStream) -> None:
    """One connection: the upgrade, then every message back, then the close."""
    try:
        with trio.move_on_after(DEFAULTS.handshake_timeout):
            conn = await _accept(stream)
        if conn is not None:
            await _echo(conn)
    finally:
        await release(stream)


async def _accept(stream: trio.SocketStream) -> WsprotoConnection | None:
    """wsproto's side of the opening handshake; None if the peer left or was refused."""
    ws = WSConnection(ConnectionType.SERVER)
    while data := await stream.receive_some(RECEIVE_SIZE):
        try:
            ws.receive_data(data)
        except RemoteProtocolError as exc:
            if exc.event_hint is not None:
                await stream.send_all(ws.send(exc.event_hint))
            return None
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
                assert ws.connection is not None  # accepting opened it
                return WsprotoConnection(
                    stream,
                    ws.connection,
                    max_line=MAX_MESSAGE,
                    max_message=MAX_MESSAGE,
                    message_timeout=DEFAULTS.message_timeout,
                )
    return None


async def _echo(conn: WsprotoConnection) -> None:
    outbox = Outbox(max_events=0, max_bytes=0, direct=conn.direct)  # no lines: frames only
    code: CloseCode | None = None
    """Our Close's code; None once the peer closed or went (nothing more to say)."""
    async with trio.open_nursery() as nursery:
        outbox.start(partial(nursery.start_soon, _write, outbox, conn))
        try:
            while True:
                data, binary = await conn.receive_message(outbox)
                outbox.control(binary_frame(data) if binary else text_frame(data))
        except ConnectionLost:
            pass
        except ProtocolError as exc:  # too_large, message_timeout
            code = ENDS_CONNECTION[exc.code]
        outbox.seal()  # the writer ends once it wrote what is pending
        nursery.cancel_scope.deadline = trio.current_time() + DEFAULTS.close_timeout
    try:
        with trio.move_on_after(DEFAULTS.close_timeout):
            if code is None:
                await outbox.finish(conn.stream)
            else:
                await outbox.finish(conn.stream, partial(conn.goodbye, code))
                await conn.finish()
    except ConnectionLost:
        pass


async def _write(outbox: Outbox, conn: WsprotoConnection) -> None:
    """The writer task: what a write without waiting left behind."""
    with contextlib.suppress(OutboxClosed, ConnectionLost):
        await outbox.drain(conn.stream)
