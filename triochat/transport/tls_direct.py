"""The server's TLS, driven by us: ``ssl.SSLObject`` on two ``MemoryBIO``\\ s over the socket.

Theory of operation
-------------------
On a plaintext socket the outbox writes whole batches without waiting, from
the flusher (``direct``, ``write_lines``), and keeps what the socket did not
take as *held* wire bytes. TLS keeps that path: here the wire bytes are
ciphertext. Every byte the server sends is encrypted at the moment it
becomes wire bytes (a batch framed when the outbox takes it, a control frame
when the reader hands it over, the goodbye when the outbox asks for it), and
the outbox writes wire bytes in exactly the order they became wire bytes
(held, then control, then lines): so TLS records leave in the order they were
sealed, as TLS requires, and the outbox never learns that they are sealed.
The writer task, when one is needed, writes ciphertext to the raw socket.

Reading is the socket's fast read (:func:`read_socket`) with the bytes fed to
the incoming BIO. What reading makes TLS answer (a TLS 1.3 key update) goes to
the outbox's control lane, like a WebSocket Pong.

:class:`TLSStream` is the same engine as a trio stream, for the handshake
phase of the WebSocket port (the opening request, a 101 or an HTTP answer,
and a lingering close); the connection classes take over after it.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import trio
from wsproto.connection import Connection as Protocol

from triochat.errors import ConnectionLost, WrongPort
from triochat.transport.base import (
    RECEIVE_SIZE,
    CloseCode,
    Replies,
    read_socket,
    write_without_waiting,
)
from triochat.transport.tcp import StreamConnection
from triochat.transport.wsproto_ws import WsprotoConnection

TLS_HANDSHAKE_RECORD = b"\x16"
"""The first byte of every TLS connection: a handshake record (RFC 8446 §5.1)."""


class TLSEngine:
    """One server-side TLS session over one socket; it never writes by itself."""

    __slots__ = ("_incoming", "_object", "_outgoing", "remote", "socket")

    def __init__(self, context: ssl.SSLContext, stream: trio.SocketStream, remote: str) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.socket = stream
        self.remote = remote

    async def handshake(self, plaintext_answer: Callable[[bytes], bytes]) -> None:
        """The TLS handshake; the caller bounds the time. :class:`ConnectionLost` if it fails.

        A peer whose first bytes are no TLS record (a ``ws://`` or ``tcp://`` client)
        is sent ``plaintext_answer(first bytes)``, unencrypted, and :class:`WrongPort`
        is raised: it learns why instead of waiting for its own timeout.
        """
        first = await self._read_raw()
        if first[:1] != TLS_HANDSHAKE_RECORD:
            await self._send(plaintext_answer(first))
            raise WrongPort(f"{self.remote}: plaintext on a TLS port")
        self._incoming.write(first)
        while True:
            try:
                self._object.do_handshake()
            except ssl.SSLWantReadError:
                await self._send(self._outgoing.read())
                self._incoming.write(await self._read_raw())
                continue
            except ssl.SSLError as exc:
                raise ConnectionLost(f"{self.remote}: TLS handshake failed ({exc})") from None
            break
        await self._send(self._outgoing.read())  # the last flight, and any session tickets

    def seal(self, plaintext: bytes) -> bytes:
        """``plaintext`` as TLS records, to be written next in the connection's order."""
        if not plaintext:
            return b""
        self._object.write(plaintext)
        return self._outgoing.read()

    def close_notify(self) -> bytes:
        """Our ``close_notify`` alert, as wire bytes (TLS's goodbye)."""
        with contextlib.suppress(ssl.SSLError):  # it waits for the peer's; ours is written
            self._object.unwrap()
        return self._outgoing.read()

    async def receive(self) -> tuple[bytes, bytes]:
        """The next plaintext (never empty), and wire bytes TLS must answer with (or ``b""``).

        :class:`ConnectionLost` at the peer's ``close_notify``, EOF, or a bad record.
        """
        while True:
            plaintext = self._decrypt()  # records may have come with the handshake's last
            if plaintext:
                return plaintext, self._outgoing.read()
            self._incoming.write(await self._read_raw())

    def _decrypt(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._object.read(RECEIVE_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                raise ConnectionLost(f"{self.remote}: TLS failed ({exc})") from None
            if not chunk:  # the peer's close_notify
                if chunks:
                    break  # the end is found again on the next read
                raise ConnectionLost(f"{self.remote}: closed by peer (close_notify)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_raw(self) -> bytes:
        data = await read_socket(self.socket.socket, RECEIVE_SIZE, self.remote)
        if not data:
            raise ConnectionLost(f"{self.remote}: closed by peer")
        return data

    async def _send(self, wire: bytes) -> None:
        if wire:
            try:
                await self.socket.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(f"{self.remote}: {exc}") from None


class TLSStream(trio.abc.HalfCloseableStream):
    """:class:`TLSEngine` as a trio stream, for the WebSocket port's opening request and its
    answer; ``send_eof`` is our ``close_notify`` and the socket's FIN."""

    def __init__(self, engine: TLSEngine) -> None:
        self.engine = engine

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.engine._send(self.engine.seal(bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await self.engine.socket.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.engine._send(self.engine.close_notify())
        await self.engine.socket.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            plaintext, answer = await self.engine.receive()
        except ConnectionLost:
            return b""
        await self.engine._send(answer)
        return plaintext

    async def aclose(self) -> None:
        await self.engine.socket.aclose()


class _Sealing:
    """A reader's :class:`Replies`, with what it hands over sealed first."""

    __slots__ = ("_engine", "_replies")

    def __init__(self, replies: Replies, engine: TLSEngine) -> None:
        self._replies = replies
        self._engine = engine

    def control(self, wire: bytes) -> None:
        self._replies.control(self._engine.seal(wire))

    def closing(self, wire: bytes) -> None:
        # Sealed now, in record order: the session ends before anything else is sealed.
        self._replies.closing(self._engine.seal(wire))


class TLSStreamConnection(StreamConnection):
    """NDJSON over server-side TLS: a :class:`StreamConnection` whose wire bytes are sealed."""

    secure = True

    def __init__(
        self,
        engine: TLSEngine,
        *,
        max_line: int,
        message_timeout: float = math.inf,
        remote: str = "?",
        http_answer: bytes | None = None,
    ) -> None:
        super().__init__(
            engine.socket,
            max_line=max_line,
            message_timeout=message_timeout,
            remote=remote,
            http_answer=http_answer,
        )
        self._engine = engine
        self.frame = engine.seal
        self.write_lines = None  # the outbox composes direct(frame(lines))
        self._sealing: _Sealing | None = None

    async def receive_lines(self, replies: Replies | None = None) -> list[bytes]:
        if replies is None:
            return await super().receive_lines(None)
        sealing = self._sealing
        if sealing is None or sealing._replies is not replies:
            sealing = self._sealing = _Sealing(replies, self._engine)
        return await super().receive_lines(sealing)

    async def _receive_some(self) -> bytes:
        plaintext, answer = await self._engine.receive()
        if answer and self._sealing is not None:
            self._sealing._replies.control(answer)  # TLS's own records: sealed already
        return plaintext

    def goodbye(self, code: CloseCode) -> bytes:
        return self._engine.close_notify()


class TLSWsprotoConnection(WsprotoConnection):
    """WebSocket over server-side TLS: a :class:`WsprotoConnection` whose wire bytes are sealed."""

    secure = True

    def __init__(
        self,
        engine: TLSEngine,
        protocol: Protocol,
        *,
        max_line: int,
        max_message: int,
        message_timeout: float = math.inf,
        remote: str = "?",
    ) -> None:
        super().__init__(
            engine.socket,
            protocol,
            max_line=max_line,
            max_message=max_message,
            message_timeout=message_timeout,
            remote=remote,
        )
        self._engine = engine
        self._sealing: _Sealing | None = None
        self.write_lines = self._write_sealed

    def _text_frame(self, data: bytes) -> bytes:
        return self._engine.seal(super()._text_frame(data))

    def _write_sealed(self, data: bytes) -> bytes:
        wire = self._text_frame(data)
        return write_without_waiting(self._engine.socket.socket, wire) if wire else b""

    async def receive_lines(self, replies: Replies) -> list[bytes]:
        return await super().receive_lines(self._sealed(replies))

    async def ping(self, replies: Replies) -> None:
        await super().ping(self._sealed(replies))

    def goodbye(self, code: CloseCode) -> bytes:
        return self._engine.seal(super().goodbye(code))

    def _sealed(self, replies: Replies) -> _Sealing:
        sealing = self._sealing
        if sealing is None or sealing._replies is not replies:
            sealing = self._sealing = _Sealing(replies, self._engine)
        return sealing

    def _read(self) -> Coroutine[Any, Any, bytes]:
        return self._read_plaintext()

    async def _read_plaintext(self) -> bytes:
        plaintext, answer = await self._engine.receive()
        if answer and self._sealing is not None:
            self._sealing._replies.control(answer)
        return plaintext
