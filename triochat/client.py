"""The client library: one Trio API for both transports.

::

    async with open_client("ws://127.0.0.1:5000", nick="ada") as client:
        await client.say("lobby", "hello")
        async for event in client:
            ...

:func:`open_client` connects, says ``hello`` and returns once ``welcome``
arrived; iterating yields every later server event and ends when the server
closes the connection. Errors are ours, each with one meaning:
:class:`~triochat.errors.ConnectError` (nothing to talk to: refused, host not
found, timed out, not a triochat server), :class:`~triochat.errors.Rejected`
(the server refused the hello), :class:`~triochat.errors.ConnectionLost` (the
connection broke while sending).

Keepalive is automatic: WebSocket Pings are answered by trio-websocket, and a
TCP server's ``ping`` event is answered with ``pong`` while the caller iterates.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionRejected, HandshakeError, wrap_client_stream

from triochat.errors import (
    CertificateError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    Rejected,
)
from triochat.protocol import ErrorCode, ProtocolError, decode_server, encode
from triochat.protocol.events import (
    Dm,
    Error,
    Hello,
    History,
    Join,
    ListRooms,
    Nick,
    Part,
    Ping,
    Pong,
    Quit,
    Ref,
    Register,
    Say,
    ServerEvent,
    SetTopic,
    Welcome,
    Who,
)
from triochat.transport.base import SCHEMES, ClientConnection, CloseCode, hostport, url_scheme
from triochat.transport.release import release
from triochat.transport.tcp import StreamConnection
from triochat.transport.tls import client_context
from triochat.transport.websocket import WebSocketLines

log = logging.getLogger(__name__)

CLIENT_MAX_LINE = 64 * 1024 * 1024
"""Server lines can be long (a page of history); this only guards against nonsense."""
_HELLO_REFUSALS = {
    ErrorCode.NICK_TAKEN,
    ErrorCode.NICK_INVALID,
    ErrorCode.HELLO_TIMEOUT,
    ErrorCode.TLS_REQUIRED,
    ErrorCode.AUTH_REQUIRED,
    ErrorCode.AUTH_FAILED,
    ErrorCode.AUTH_RATE_LIMITED,
    ErrorCode.INSECURE_AUTH,
    ErrorCode.TOKEN_INVALID,
    ErrorCode.TOKEN_EXPIRED,
}
AUTH_REFUSALS = frozenset({ErrorCode.AUTH_REQUIRED, ErrorCode.AUTH_FAILED})
"""Refusals a password can fix: a client with a person at it asks for one."""


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str
    port: int

    @property
    def hostport(self) -> str:
        return hostport(self.host, self.port)

    @property
    def transport(self) -> str:
        """``ws`` (WebSocket) or ``tcp`` (NDJSON lines), with or without TLS."""
        return SCHEMES[self.scheme][0]

    @property
    def secure(self) -> bool:
        """The connection runs over TLS (``wss://``, ``tls://``)."""
        return SCHEMES[self.scheme][1]

    def wrong_port(self) -> ConnectError:
        """What to tell a person whose URL names the other listener of a triochat server."""
        line, websocket = (url_scheme(kind, secure=self.secure) for kind in ("tcp", "ws"))
        if self.transport == "ws":
            return ConnectError(
                f"{self}: this looks like triochat's TCP port; use {line}://{self.hostport}"
            )
        return ConnectError(
            f"{self}: this looks like a WebSocket port; use {websocket}://{self.hostport}"
        )

    def __str__(self) -> str:
        return f"{self.scheme}://{self.hostport}"


def parse_url(url: str) -> Address:
    """``ws://``, ``wss://``, ``tcp://`` or ``tls://`` and ``host:port``;
    :class:`ConnectError` if it is none of them."""
    usage = ConnectError(f"{url!r}: use ws://, wss://, tcp:// or tls://HOST:PORT")
    try:  # urlsplit refuses some hosts itself ("[::1", "[zz]"); so does .port a bad port
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise usage from None
    if parts.scheme not in SCHEMES or not host or not port:
        raise usage
    return Address(parts.scheme, host, port)


def tls_for(address: Address, cafile: str | None) -> ssl.SSLContext | None:
    """The verifying TLS context ``address`` needs (``cafile``: a private CA), or None.

    :class:`ConnectError` if ``cafile`` cannot be used.
    """
    if not address.secure:
        return None
    try:
        return client_context(cafile)
    except CertificateError as exc:
        raise ConnectError(f"{address}: {exc}") from None


class Client:
    """A connected, welcomed client. Make one with :func:`open_client`."""

    def __init__(self, conn: ClientConnection, address: Address) -> None:
        self._conn = conn
        self.address = address
        self.welcome: Welcome | None = None
        self._pending: deque[bytes] = deque()
        """Lines read but not yet handed out, whichever way the caller reads."""
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False

    # --- sending ------------------------------------------------------------

    async def send(self, event: Any) -> None:
        """Send one client event."""
        await self.send_raw(encode(event))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (whole lines); for tools that test the server."""
        if self._closed:
            raise ConnectionClosed("this client was closed")
        async with self._send_lock:
            await self._conn.send(data)

    async def say(self, room: str, text: str, id: Ref = None, *, action: bool = False) -> None:
        """Say ``text`` in ``room``; with ``action``, as an action (``/me``)."""
        await self.send(Say(room=room, text=text, id=id, action=action or None))

    async def dm(self, to: str, text: str, id: Ref = None, *, action: bool = False) -> None:
        await self.send(Dm(to=to, text=text, id=id, action=action or None))

    async def topic(self, room: str, text: str) -> None:
        """Set ``room``'s topic; empty ``text`` clears it."""
        await self.send(SetTopic(room=room, text=text))

    async def list_rooms(self, after: str | None = None, limit: int | None = None) -> None:
        """Ask for a page of the rooms with members; the answer is ``rooms``."""
        await self.send(ListRooms(after=after, limit=limit))

    async def join(self, room: str) -> None:
        await self.send(Join(room=room))

    async def part(self, room: str) -> None:
        await self.send(Part(room=room))

    async def nick(self, nick: str) -> None:
        await self.send(Nick(nick=nick))

    async def register(self, password: str) -> None:
        """Register the current nick; the server answers ``notice{registered}`` or an error."""
        await self.send(Register(password=password))

    async def who(self, room: str | None = None) -> None:
        await self.send(Who(room=room))

    async def history(
        self, room: str, before_seq: int | None = None, limit: int | None = None
    ) -> None:
        await self.send(History(room=room, before_seq=before_seq, limit=limit))

    async def ping(self, token: Ref = None) -> None:
        await self.send(Ping(token=token))

    async def quit(self, reason: str | None = None) -> None:
        """Ask the server to end the session; iteration ends once it has."""
        await self.send(Quit(reason=reason))

    # --- receiving ----------------------------------------------------------

    async def receive(self) -> ServerEvent:
        """The next server event; :class:`ConnectionLost` once the server has gone."""
        return decode_server(await self._next_line())

    async def receive_lines(self) -> list[bytes]:
        """The next raw lines, undecoded (cheap counting for load tools).

        Server keepalive pings are answered here, whichever way the caller reads.
        """
        if self._pending:
            lines = list(self._pending)
            self._pending.clear()
            return lines
        lines = await self._conn.receive_lines()
        if not self._conn.native_ping and any(b'"type":"ping"' in line for line in lines):
            await self._answer_pings(lines)
        return lines

    async def _answer_pings(self, lines: list[bytes]) -> None:
        for line in lines:
            event = decode_server(line)
            if isinstance(event, Ping):
                await self.send(Pong(token=event.token))

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> ServerEvent:
        try:
            return await self.receive()
        except ConnectionLost:
            raise StopAsyncIteration from None

    # --- lifecycle ----------------------------------------------------------

    async def greet(self, hello: Hello) -> Welcome:
        """Send ``hello`` and wait for ``welcome``; :class:`Rejected` if refused."""
        await self.send(hello)
        early: list[bytes] = []  # e.g. room_invalid errors: the caller still gets them
        while True:
            try:
                line = await self._next_line()
            except ConnectionLost:
                raise ConnectError(f"{self.address}: the server closed the connection") from None
            if line.startswith(b"HTTP/"):  # an HTTP server's answer to our hello line
                raise self.address.wrong_port()
            event = decode_server(line)
            if isinstance(event, Welcome):
                self._pending.extendleft(reversed(early))
                self.welcome = event
                return event
            if isinstance(event, Error) and event.code == ErrorCode.WRONG_PORT:
                raise self.address.wrong_port()
            if isinstance(event, Error) and event.code in _HELLO_REFUSALS:
                raise Rejected(event.code, event.message)
            early.append(line)

    async def _next_line(self) -> bytes:
        while not self._pending:
            self._pending.extend(await self.receive_lines())
        return self._pending.popleft()

    async def aclose(self, grace: float = 2.0) -> None:
        """Close the connection politely, within ``grace`` seconds."""
        if self._closed:
            return
        self._closed = True
        try:
            with trio.move_on_after(grace):
                async with self._send_lock:  # a send in flight finishes before the goodbye
                    await self._conn.close(CloseCode.NORMAL)
        finally:
            with trio.CancelScope(shield=True):
                await self._conn.abort()

    async def abort(self) -> None:
        """Drop the connection without goodbye (a vanished client)."""
        self._closed = True
        await self._conn.abort()


@asynccontextmanager
async def open_client(
    url: str,
    nick: str,
    *,
    rooms: list[str] | None = None,
    resume: dict[str, int] | None = None,
    password: str | None = None,
    token: str | None = None,
    connect_timeout: float = 10.0,
    cafile: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to ``url``, say hello as ``nick``, and yield the welcomed :class:`Client`.

    ``password`` logs in to a registered nick; ``token`` is a JWT an application
    issued (its ``sub`` is the nick). A refused login is :class:`Rejected` with
    the server's code (``auth_required``, ``auth_failed``, ``token_expired``...).

    ``wss://`` and ``tls://`` verify the server's certificate and host name
    against the system's CAs, or only ``cafile``'s (a private CA) when given;
    a certificate that fails is a :class:`ConnectError`.

    Errors come out as themselves, not wrapped in an exception group: the only
    background task is trio-websocket's reader, so a lone exception from the
    nursery is the caller's (or ours) and is re-raised bare.
    """
    address = parse_url(url)
    tls = tls_for(address, cafile)
    with _unwrapped():
        async with trio.open_nursery() as nursery:
            library = await nursery.start(_contain_library_tasks, address)
            client = await _connect_and_greet(
                address,
                library,
                Hello(nick=nick, rooms=rooms, resume=resume, password=password, token=token),
                connect_timeout,
                tls,
            )
            try:
                yield client
            except BaseException:
                # Cancelled or failed: trio-websocket's reader is going away with this
                # nursery, so a close handshake could never finish. Just drop.
                with trio.CancelScope(shield=True):
                    await client.abort()
                raise
            else:
                with trio.CancelScope(shield=True):
                    await client.aclose()
            finally:
                nursery.cancel_scope.cancel()


@dataclass(eq=False)
class _Library:
    """Where trio-websocket's reader task runs, and what it said while we connected."""

    nursery: trio.Nursery
    connecting: trio.CancelScope = field(default_factory=trio.CancelScope)
    """Cancelled when the reader finds the upgrade refused (it raises there, not to us)."""
    refused: ConnectionRejected | None = None

    def refuse(self, exc: ConnectionRejected) -> None:
        self.refused = self.refused or exc
        self.connecting.cancel()


async def _contain_library_tasks(
    address: Address, *, task_status: trio.TaskStatus[_Library]
) -> None:
    """A nursery for trio-websocket's reader task whose failures stay here.

    The reader can raise on its own, e.g. wsproto refusing to answer a server's
    Ping that arrives while we are closing (the client-side twin of
    trio-websocket #184). For the caller that is a lost connection (their next
    receive says so), never an exception out of the ``async with``. A refused
    upgrade is raised there too, while :func:`connect` waits: it is handed to
    the connecting code, which would otherwise wait until its deadline.
    """
    library: _Library | None = None
    try:
        async with trio.open_nursery() as nursery:
            library = _Library(nursery)
            task_status.started(library)
            await trio.sleep_forever()
    except* ConnectionRejected as group:
        if library is not None:
            library.refuse(group.exceptions[0])  # type: ignore[arg-type]
    except* Exception as group:
        log.debug("%s: WebSocket reader failed: %r", address, group.exceptions)


async def _connect_and_greet(
    address: Address, library: _Library, hello: Hello, limit: float, tls: ssl.SSLContext | None
) -> Client:
    try:
        with trio.fail_after(limit):
            with library.connecting:
                client = Client(await connect(address, library.nursery, tls), address)
                await client.greet(hello)
                return client
    except trio.TooSlowError:
        raise ConnectError(f"{address}: timed out") from None
    assert library.refused is not None  # nothing else cancels ``connecting``
    raise _refusal(address, library.refused)


@contextmanager
def _unwrapped() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        lone = _lone(group)
        if lone is None:
            raise
        raise lone from lone.__cause__


def _lone(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one leaf exception of ``group``, if it has exactly one."""
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _lone(inner) if isinstance(inner, BaseExceptionGroup) else inner


async def connect(
    address: Address, nursery: trio.Nursery, tls: ssl.SSLContext | None = None
) -> ClientConnection:
    """A transport :class:`ClientConnection` to ``address``; WebSocket tasks run in ``nursery``.

    ``tls`` (see :func:`tls_for`) is required for ``wss://`` and ``tls://``.
    """
    stream = await open_secure_stream(address, tls)
    if address.transport == "tcp":
        return StreamConnection(stream, max_line=CLIENT_MAX_LINE, remote=str(address))
    try:
        ws = await wrap_client_stream(
            nursery, stream, address.host, "/", max_message_size=CLIENT_MAX_LINE
        )
    except ConnectionRejected as exc:
        await trio.aclose_forcefully(stream)
        if _is_wrong_port(exc.body):
            raise address.wrong_port() from None
        raise ConnectError(
            f"{address}: WebSocket upgrade refused: HTTP {exc.status_code}"
        ) from None
    except HandshakeError as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectError(f"{address}: WebSocket handshake failed ({exc!r})") from None
    return WebSocketLines(ws, stream=stream, max_line=CLIENT_MAX_LINE, remote=str(address))


def _refusal(address: Address, exc: ConnectionRejected) -> ConnectError:
    """A refused WebSocket upgrade, in one line; a triochat TCP listener is named as such."""
    if _is_wrong_port(exc.body):
        return address.wrong_port()
    said = _error_in(exc.body)
    if said is not None:  # e.g. tls_required: a ws:// URL for a wss:// port
        return ConnectError(f"{address}: {said.message}")
    return ConnectError(f"{address}: WebSocket upgrade refused (HTTP {exc.status_code})")


def _is_wrong_port(body: bytes | None) -> bool:
    """Whether an HTTP refusal's body is a triochat TCP listener's ``error{wrong_port}``."""
    said = _error_in(body)
    return said is not None and said.code == ErrorCode.WRONG_PORT


def _error_in(body: bytes | None) -> Error | None:
    """The triochat ``error`` an HTTP refusal's body holds, if it holds one."""
    try:
        event = decode_server((body or b"").strip())
    except ProtocolError:
        return None
    return event if isinstance(event, Error) else None


async def open_secure_stream(
    address: Address, tls: ssl.SSLContext | None
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    """:func:`open_stream`, then for ``wss://`` and ``tls://`` the TLS handshake with
    ``tls``; a refused certificate (or TLS) is one :class:`ConnectError` line."""
    stream = await open_stream(address)
    if not address.secure:
        return stream
    if tls is None:
        raise ConnectError(f"{address}: no TLS context given for a TLS address")
    return await secure(address, stream, tls)


async def secure(
    address: Address, stream: trio.SocketStream, tls: ssl.SSLContext
) -> trio.SSLStream[trio.SocketStream]:
    """``stream`` after a client TLS handshake that verified the server as ``address.host``."""
    secured = trio.SSLStream(stream, tls, server_hostname=address.host)
    try:
        await secured.do_handshake()
    except trio.BrokenResourceError as exc:
        await release(stream)
        raise _tls_refusal(address, exc.__cause__) from None
    except BaseException:
        await release(stream)
        raise
    return secured


def _tls_refusal(address: Address, cause: BaseException | None) -> ConnectError:
    """A failed TLS handshake, in one line: an untrusted certificate is named as such."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ConnectError(
            f"{address}: the server's certificate is not trusted ({cause.verify_message})"
        )
    if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
        plain = url_scheme(address.transport, secure=False)
        return ConnectError(
            f"{address}: the server does not speak TLS there; use {plain}://{address.hostport}"
        )
    if isinstance(cause, ssl.SSLError):
        return ConnectError(f"{address}: TLS handshake failed ({cause.reason or cause})")
    return ConnectError(f"{address}: the server closed the connection during the TLS handshake")


async def open_stream(address: Address) -> trio.SocketStream:
    """A TCP stream to ``address``, with OS errors turned into one clear line."""
    try:
        return await trio.open_tcp_stream(address.host, address.port)
    except socket.gaierror:
        raise ConnectError(f"{address}: host not found") from None
    except OSError as exc:
        if _refused(exc):
            raise ConnectError(f"{address}: connection refused (is the server running?)") from None
        raise ConnectError(f"{address}: cannot connect ({exc.strerror or exc})") from None


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or any attempt behind it) was a refused connection."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return any(_refused(inner) for inner in cause.exceptions)
    return cause is not None and _refused(cause)
