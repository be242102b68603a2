"""The design change, measured: WebSocket on wsproto's sans-IO API, flushed like triochat's TCP.

Where trio-websocket's public API cannot reach a performance target, the smallest
honest design change that can is wanted. This is it, reduced to what the load
generator needs:

- wsproto does the handshake and parses what clients send; there is no reader
  task and no message channel, only the connection's own task;
- a ``say`` is encoded once and appended to every member's queue; one flusher
  task frames each member's whole queue as one text frame (a server's frames are
  not masked) and writes it with a non-blocking ``write(2)`` on the socket the
  connection owns, as triochat's TCP path does;
- only bytes that do not fit in the socket go to a writer task, started then and
  gone once they are written; nothing else writes to that socket meanwhile;
- a member whose unwritten bytes pass a bound is dropped.

Like ``bench.floor`` it has no history, acks, flood control or keepalive, and
speaks the same protocol subset as ``bench.peer``. It is here to put figures on
the change, not to serve anyone. Run as ``python -m bench.wsproto_floor --port 0``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from bench.reference import Rooms, parse_args, until_signalled, welcome

PENDING_LIMIT = 1 << 20
"""Unwritten bytes past which a member is dropped."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Member:
    __slots__ = ("fd", "lines", "pending", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.lines: list[bytes] = []
        self.pending: bytearray | None = None
        """Bytes a writer task owns; while set, nothing else writes to the socket."""


class Hub(Rooms[Member]):
    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__()
        self.nursery = nursery
        self.dirty: set[str] = set()
        self.wake = trio.Event()

    def admit(self, stream: trio.SocketStream, rooms: list[str], welcome: str) -> Member:
        """A member of ``rooms`` whose welcome is written or queued like any broadcast.

        Joining and the welcome's ``_flush`` are one step with no checkpoint, so no
        ``say`` falls between them, and every later line is written after the welcome.
        It joins first so that a ``_flush`` that drops it leaves it in no room.
        """
        member = Member(stream)
        self.join(member, rooms)
        member.lines.append(welcome.encode())
        self._flush(member)
        return member

    def say(self, room: str, nick: str, text: str, ref: object) -> None:
        line = self.message(room, nick, text, ref).encode()
        for member in self.members[room]:
            member.lines.append(line)
        self.dirty.add(room)
        self.wake.set()

    async def flusher(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            rooms, self.dirty = self.dirty, set()
            for room in rooms:
                for member in tuple(self.members[room]):  # a flush may drop a member
                    if member.lines:
                        self._flush(member)

    def _flush(self, member: Member) -> None:
        data = text_frame(b"".join(member.lines))
        member.lines.clear()
        if member.pending is not None:
            member.pending += data
            if len(member.pending) > PENDING_LIMIT:
                self.drop(member)
            return
        try:
            written = os.write(member.fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                self.drop(member)
                return
            raise
        if written < len(data):
            member.pending = bytearray(data[written:])
            self.nursery.start_soon(self._write_rest, member)

    async def _write_rest(self, member: Member) -> None:
        try:
            while member.pending:
                chunk, member.pending = member.pending, bytearray()
                await member.stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop(member)
        finally:
            member.pending = None

    def drop(self, member: Member) -> None:
        self.leave(member, list(self.members))
        member.stream.socket.close()


async def _receive(stream: trio.SocketStream, ws: WSConnection) -> bool:
    data = await stream.receive_some(65536)
    ws.receive_data(data or None)
    return bool(data)


async def _handshake(stream: trio.SocketStream, ws: WSConnection) -> bool:
    while await _receive(stream, ws):
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
                return True
    return False


async def _session(hub: Hub, stream: trio.SocketStream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    if not await _handshake(stream, ws):
        return
    member: Member | None = None
    joined: list[str] = []
    nick = ""
    text = ""
    try:
        while await _receive(stream, ws):
            for event in ws.events():
                if isinstance(event, Ping):
                    continue  # the load generator never pings; a real server would pong
                if isinstance(event, CloseConnection):
                    return
                if not isinstance(event, TextMessage):
                    continue
                text += event.data
                if not event.message_finished:
                    continue
                lines, text = text.splitlines(), ""
                for line in lines:
                    msg = json.loads(line)
                    if member is None and msg.get("type") == "hello":
                        nick, joined = str(msg["nick"]), [str(r) for r in msg.get("rooms") or []]
                        member = hub.admit(stream, joined, welcome(nick, joined))
                    elif msg.get("type") == "say" and msg.get("room") in joined:
                        hub.say(msg["room"], nick, msg["text"], msg.get("id"))
    finally:
        if member is not None:
            hub.drop(member)


async def run(host: str, port: int) -> None:
    async with until_signalled() as nursery:
        hub = Hub(nursery)
        nursery.start_soon(hub.flusher)

        async def handler(stream: trio.SocketStream) -> None:
            # A client leaving is not an error.
            gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
            async with stream:
                with gone:
                    await _session(hub, stream)

        listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        bound = listeners[0].socket.getsockname()
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        print(f"listening ws://{bound[0]}:{bound[1]}", flush=True)


def main() -> None:
    args = parse_args("WebSocket on wsproto, flushed like TCP.")
    trio.run(run, args.host, args.port)


if __name__ == "__main__":
    main()
