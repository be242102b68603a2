"""Many cheap clients in one process: one wakeup reads every socket that has data.

Theory of operation
-------------------
The client library gives each connection its own task, which costs a Trio
wakeup (and an extra ``recv``) per read; with thousands of clients each read
carries a line or two, so that overhead, not the accounting, would be most of
the harness's CPU. A :class:`Swarm` instead registers its members' sockets
with one ``epoll`` object and waits, in one task, for that object to become
readable: each wakeup then reads every ready socket once, splits what it got
into lines (TCP) or WebSocket frames (by hand: the server's frames are
unmasked and small), and hands each member's lines to its
:class:`~harness.tally.Tally` in one batch.

Latency is stamped when a round reads, so it is late by the wakeup and the
round's own time. No pause is taken between rounds: under load a round takes
long enough for many lines to pile up anyway, and at light load a pause short
enough not to show in the latency hardly makes reads bigger. A pause only
helped a server that shares the harness's cores drain a burst sooner
(docs/harness.md, "Read pause").

Members are plain ``ws://`` or ``tcp://`` connections (no TLS) driven by hand:
the upgrade, ``hello``, sends (``say``, ``quit``, answers to pings) go out
through Trio; only receiving bypasses it. Protocol events are built and
checked with :mod:`triochat.protocol`, as everywhere else in the harness.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import select
import socket
from contextlib import suppress
from dataclasses import dataclass, field

import trio

from harness.tally import Tally, take_round
from harness.wire import now_ns
from triochat.client import Address, parse_url
from triochat.errors import ConnectError, ConnectionLost
from triochat.protocol import encode
from triochat.protocol.codec import decode_server
from triochat.protocol.events import Hello, Ping, Pong, Quit, Say

RECEIVE = 64 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING = b'"type":"ping"'
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
NEWLINE = 0x0A
"""A server's message is one or more lines and ends in one; a message without it is
ended here, so that every line ends in exactly one (a blank line costs a slow round)."""
MAX_READY = 4096
"""Sockets served per wakeup at most (the rest are ready again at the next one)."""


class WireError(Exception):
    """The server broke the framing (a masked or reserved frame): the member is dropped."""


def lean_url(url: str) -> bool:
    """Whether a :class:`Swarm` can serve ``url`` (plain ``ws://`` or ``tcp://``)."""
    return parse_url(url).scheme in ("ws", "tcp")


@dataclass(eq=False)
class Member:
    """One lean connection: its socket, what is left unparsed, and its tally."""

    index: int
    nick: str
    address: Address
    sock: trio.socket.SocketType
    raw: socket.socket
    """The same socket, for non-blocking reads outside Trio."""
    ws: bool
    tally: Tally = field(default_factory=lambda: Tally(roster=False))
    pending: bytearray = field(default_factory=bytearray)
    fragments: bytearray = field(default_factory=bytearray)
    """A WebSocket text message whose last frame has not come yet."""
    closed_at_ns: int | None = None
    outbox: list[bytes] = field(default_factory=list)
    """Answers (pongs, a close), framed, that the reader owes the server; the swarm sends them."""

    @property
    def alive(self) -> bool:
        return self.closed_at_ns is None

    def frame(self, line: bytes, opcode: int = OP_TEXT) -> bytes:
        return ws_frame(line, opcode) if self.ws else line

    async def say(self, room: str, text: str) -> None:
        await self.send_line(encode(Say(room=room, text=text)))

    async def send_line(self, line: bytes) -> None:
        """Send one protocol line; :class:`ConnectionLost` if the connection is gone."""
        await self.send_framed(self.frame(line))

    async def send_framed(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = await self.sock.send(view)
                view = view[sent:]
        except OSError as exc:
            raise ConnectionLost(f"{self.address}: {exc}") from None

    def take(self, data: bytes) -> list[bytes]:
        """The complete lines in ``data`` (with what came before it); answers go to outbox."""
        return [line for line in self.chunk(data).split(b"\n") if line]

    def chunk(self, data: bytes) -> bytes:
        """The complete lines in ``data`` (with what came before it), each ending in a
        newline, framing taken off; answers (pongs, a close) go to the outbox."""
        if self.ws:
            if not self.pending and not self.fragments:
                whole = _one_message(data)
                if whole is not None:
                    return whole
            self.pending += data
            return self._frames()
        if not self.pending and data.endswith(b"\n"):
            return data  # the usual case: whole lines
        self.pending += data
        end = self.pending.rfind(b"\n") + 1
        whole = bytes(self.pending[:end])
        del self.pending[:end]
        return whole

    def _frames(self) -> bytes:
        buf = self.pending
        out = bytearray()
        at = 0
        while len(buf) - at >= 2:
            head, size = buf[at], buf[at + 1]
            if size & 0x80 or head & 0x70:
                raise WireError(f"{self.address}: a masked or reserved frame from the server")
            size &= 0x7F
            start = at + 2
            if size == 126:
                start += 2
                size = int.from_bytes(buf[at + 2 : start]) if len(buf) >= start else -1
            elif size == 127:
                start += 8
                size = int.from_bytes(buf[at + 2 : start]) if len(buf) >= start else -1
            if size < 0 or len(buf) < start + size:
                break
            end = start + size
            if head == 0x80 | OP_TEXT and not self.fragments:  # the usual case: a whole message
                out += buf[start:end]
                if not size or buf[end - 1] != NEWLINE:
                    out += b"\n"
            else:
                self._message(head & 0x80, head & 0x0F, bytes(buf[start:end]), out)
            at = end
        del buf[:at]
        return bytes(out)

    def _message(self, final: int, opcode: int, payload: bytes, out: bytearray) -> None:
        if opcode in (OP_TEXT, OP_CONTINUATION, OP_BINARY):
            # A binary message is no protocol line: it stands as an undecodable one.
            self.fragments += payload if opcode != OP_BINARY else b"\xff"
            if final:
                out += self.fragments
                if not self.fragments.endswith(b"\n"):
                    out += b"\n"
                self.fragments = bytearray()
        elif opcode == OP_PING:
            self.outbox.append(ws_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.outbox.append(ws_frame(payload[:2], OP_CLOSE))


def _one_message(data: bytes) -> bytes | None:
    """The payload of ``data`` if ``data`` is exactly one final text frame (unmasked, with
    a 7- or 16-bit length) whose payload ends in a newline; None for anything else, which
    :meth:`Member._frames` takes apart. One read of one message is what a member gets
    at light load, where a read's fixed costs matter most."""
    if len(data) < 2 or data[0] != 0x80 | OP_TEXT:
        return None
    size, start = data[1], 2
    if size == 126:
        size, start = int.from_bytes(data[2:4]), 4
    elif size > 126:  # a 64-bit length, or masked: the general path judges it
        return None
    if start + size != len(data) or data[-1] != NEWLINE:
        return None
    return data[start:]


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame."""
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2)
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8)
    mask = os.urandom(4)
    repeated = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload) ^ int.from_bytes(repeated)).to_bytes(size)
    return header + mask + masked


async def connect(
    index: int, url: str, nick: str, rooms: list[str], within: float
) -> tuple[Member, list[bytes]]:
    """Connect, upgrade (ws), say hello and wait for ``welcome``; lines read on the way too."""
    address = parse_url(url)
    raw = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        with trio.fail_after(within):
            await sock.connect((address.host, address.port))
            member = Member(index, nick, address, sock, raw, address.transport == "ws")
            if member.ws:
                await _upgrade(member)
            await member.send_line(encode(Hello(nick=nick, rooms=rooms)))
            return member, await _welcome(member)
    except trio.TooSlowError:
        raw.close()
        raise ConnectError(f"{address}: timed out") from None
    except OSError as exc:
        raw.close()
        raise ConnectError(f"{address}: cannot connect ({exc.strerror or exc})") from None
    except BaseException:
        raw.close()
        raise


async def _upgrade(member: Member) -> None:
    key = base64.b64encode(os.urandom(16))
    host = member.address.hostport
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await member.send_framed(request.encode())
    answer = bytearray()
    while b"\r\n\r\n" not in answer:
        chunk = await member.sock.recv(RECEIVE)
        if not chunk:
            raise ConnectError(f"{member.address}: closed during the WebSocket upgrade")
        answer += chunk
    head, _, rest = bytes(answer).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.split(" ")[1:2] != ["101"]:
        raise ConnectError(f"{member.address}: upgrade refused ({status})")
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    if accept not in head:
        raise ConnectError(f"{member.address}: upgrade answered with a wrong accept key")
    member.pending += rest


async def _welcome(member: Member) -> list[bytes]:
    seen: list[bytes] = member.take(b"")
    while not any(line.startswith(b'{"type":"welcome"') for line in seen):
        for line in seen:
            if line.startswith(b'{"type":"error"') and b'"code":"nick_' in line:
                raise ConnectError(f"{member.address}: hello refused: {line.decode()}")
        chunk = await member.sock.recv(RECEIVE)
        if not chunk:
            raise ConnectError(f"{member.address}: the server closed the connection")
        seen += member.take(chunk)
    return seen


class Swarm:
    """Members of one process, read by one task (:meth:`run`) through one ``epoll``."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self._by_fd: dict[int, Member] = {}
        self._poll = select.epoll()
        self._owing_send, self._owing_receive = trio.open_memory_channel[Member](math.inf)
        """Members with answers in their outbox, for :meth:`_answer` to send (the reader
        cannot wait for a slow send, so the channel has no bound; each entry is a
        member that had something to answer, at most one per read)."""
        self._live = 0
        self._none_live = trio.Event()
        self.reads = 0
        """``recv`` calls that brought whole lines, since the start."""
        self.lines = 0
        """Lines those reads brought."""

    def add(self, member: Member, early: list[bytes]) -> None:
        """Start reading ``member``; ``early``: lines read before (up to ``welcome``)."""
        self.members.append(member)
        fd = member.raw.fileno()
        self._by_fd[fd] = member
        self._poll.register(fd, select.EPOLLIN)
        self._live += 1
        member.tally.take(early)

    async def run(self) -> None:
        """Read every member until cancelled; answers (pongs, closes) go out meanwhile."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer)
            try:
                while True:
                    await trio.lowlevel.wait_readable(self._poll)
                    self.read_ready()
            finally:
                nursery.cancel_scope.cancel()

    def read_ready(self) -> None:
        """One round: read every member whose socket has data, and count what came."""
        stamp = now_ns()
        tallies: list[Tally] = []
        chunks: list[bytes] = []
        for fd, _ in self._poll.poll(0, MAX_READY):
            member = self._by_fd.get(fd)
            if member is None:
                continue
            try:
                data = member.raw.recv(RECEIVE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._closed(member)
                continue
            if member.ws or member.pending or not data.endswith(b"\n") or PING in data:
                data = self._lines(member, data)
            if data:
                tallies.append(member.tally)
                chunks.append(data)
        if chunks:
            self.reads += len(chunks)
            self.lines += take_round(tallies, chunks, stamp)

    def _lines(self, member: Member, data: bytes) -> bytes:
        """The whole lines in ``data`` (framing taken off), each ending in a newline.

        Pings are answered (through the outbox), and a member whose server broke
        the framing is dropped.
        """
        try:
            whole = member.chunk(data)
        except WireError:
            member.tally.garbled += 1
            self._closed(member)
            return b""
        if PING in whole:
            pongs = [encode(Pong(token=ping.token)) for ping in _pings(whole.split(b"\n"))]
            member.outbox += [member.frame(pong) for pong in pongs]
        if member.outbox:
            self._owing_send.send_nowait(member)
        return whole

    def _closed(self, member: Member) -> None:
        member.closed_at_ns = now_ns()
        self._live -= 1
        if self._live == 0:
            self._none_live.set()
        fd = member.raw.fileno()
        self._by_fd.pop(fd, None)
        with suppress(OSError, ValueError):
            self._poll.unregister(fd)

    async def _answer(self) -> None:
        async for member in self._owing_receive:
            answers, member.outbox = member.outbox, []
            for answer in answers:
                with suppress(ConnectionLost):
                    await member.send_framed(answer)

    async def quit(self, reason: str, grace: float) -> None:
        """``quit`` every live member, wait (``grace`` s at most) for the server to close."""
        with trio.move_on_after(grace):
            for member in self.members:
                if member.alive:
                    with suppress(ConnectionLost):
                        await member.send_line(encode(Quit(reason=reason)))
            if self._live:
                await self._none_live.wait()

    def release(self) -> None:
        for member in self.members:
            if member.alive:
                self._closed(member)
            member.raw.close()
        self._poll.close()


def _pings(lines: list[bytes]) -> list[Ping]:
    found = []
    for line in lines:
        if PING in line:
            with suppress(Exception):
                event = decode_server(line)
                if isinstance(event, Ping):
                    found.append(event)
    return found
