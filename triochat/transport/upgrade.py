"""The WebSocket port's HTTP: the opening request, read, judged and answered by us.

Theory of operation
-------------------
Everything that reaches the WebSocket port starts as one HTTP/1.1 request (or
as something that is not HTTP at all: a line client on the wrong port). That
request is read here (:func:`receive_request`), split into a :class:`Request`
(:func:`parse`), and judged by one pure function, :func:`answer`, whose
:class:`Verdict` is either :attr:`Verdict.UPGRADE` (the caller writes
:func:`switching_protocols` and hands the rest of the stream to wsproto) or a
whole HTTP response, written from :class:`Answers` and followed by a close.

Why not h11 (wsproto's handshake parses with it): a WebSocket handshake is one
request whose every rule is a function below, and parsing it here is a few
regular expressions instead of h11's event machinery and wsproto's handshake
object, for a fraction of their cost on every connection. Nothing after the request is HTTP: no
keep-alive, no second request, no request body (a body sent anyway is read and
dropped by the lingering close).

Bounds: the request head must fit in :data:`MAX_HEAD` bytes with at most
:data:`MAX_FIELDS` header lines; the caller bounds the time
(``handshake_timeout``). Lines may end in CRLF or a bare LF (RFC 9112 §2.2).

No subprotocol and no extension is negotiated: ``Sec-WebSocket-Protocol`` and
``Sec-WebSocket-Extensions`` are ignored, so permessage-deflate is never on.

Origins (:class:`Origins`): a browser names the page that opens a WebSocket in
``Origin``, and cannot lie about it; a page from another site would otherwise
ride on the visitor's network position (cross-site WebSocket hijacking). So an
upgrade with an ``Origin`` that is not the ``Host``'s own, nor allowed by the
operator, gets ``403``. Clients that are no browser send no ``Origin`` and pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

import trio

from triochat.errors import ConnectionLost
from triochat.transport.base import RECEIVE_SIZE, read_socket, read_stream

MAX_HEAD = 8 * 1024
"""Bytes the request line and header lines may take, with their line ends."""
MAX_FIELDS = 100
"""Header lines one request may have."""
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""RFC 6455 §1.3: appended to the client's key before hashing."""
READY = b"/readyz"
PROBES = frozenset({b"/healthz", READY})
"""Paths a load balancer may poll (the same answer; see docs/operations.md)."""

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(%s) ([\x21-\x7e]+) HTTP/1\.([0-9])" % _TOKEN)
"""RFC 9112 §3: method SP request-target SP HTTP-version (only HTTP/1.x is spoken here)."""
_FIELD = re.compile(rb"(%s):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*" % _TOKEN)
"""RFC 9112 §5: name, colon, value; no space before the colon, no folding, no control bytes."""
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HTTP_LINE_END = re.compile(rb" HTTP/[0-9]\.[0-9]\r?\n")
"""How a first line that is meant as an HTTP request line ends, well-formed or not."""


class Verdict(Enum):
    """What one request gets: a status, and the one line of text that explains it."""

    UPGRADE = (101, "")
    HEALTHY = (200, "ok")
    DRAINING = (503, "triochat is shutting down; try again later")
    UNREADY = (503, "triochat cannot reach its shared store (redis) now; try another node")
    """``/readyz`` of a node whose Redis does not answer (``/healthz`` stays 200: it lives)."""
    FOREIGN_ORIGIN = (
        403,
        "this Origin may not open a WebSocket here: it is not the Host's own"
        " and the server does not allow it (--allowed-origin)",
    )
    NOT_WEBSOCKET = (426, "")
    """A plain HTTP request; the body names the ports (see :class:`Answers`)."""
    WRONG_VERSION = (426, "this server speaks WebSocket version 13 only")
    NOT_GET = (400, "a WebSocket upgrade is a GET request")
    OLD_HTTP = (400, "a WebSocket upgrade needs HTTP/1.1")
    NO_HOST = (400, "a WebSocket upgrade needs one Host header")
    NO_UPGRADE = (400, "a WebSocket upgrade needs 'Upgrade: websocket'")
    NO_CONNECTION = (400, "a WebSocket upgrade needs 'Connection: Upgrade'")
    BAD_KEY = (400, "Sec-WebSocket-Key must be 16 bytes in base64")
    MALFORMED = (400, "not an HTTP/1.1 request")
    TOO_LARGE = (400, f"request head longer than {MAX_HEAD} bytes")
    TOO_MANY_FIELDS = (400, f"more than {MAX_FIELDS} header lines")
    NOT_HTTP = (0, "")
    """Not HTTP at all (a line client): answered with the ``error{wrong_port}`` line."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class Request:
    """One request's head, as far as any rule here looks at it."""

    method: bytes
    target: bytes
    minor: int
    """The HTTP/1.x minor version: 0 or 1 (or higher, which is taken as 1)."""
    fields: dict[bytes, list[bytes]]
    """Header values by lower-case name, in the order they came."""

    def field(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower case), repeated ones joined by commas."""
        values = self.fields.get(name)
        return None if values is None else b", ".join(values)

    @property
    def head_only(self) -> bool:
        """A HEAD request: the answer's head without its body (RFC 9110 §9.3.2)."""
        return self.method == b"HEAD"


# --- reading -------------------------------------------------------------------------


async def receive_request(
    source: trio.socket.SocketType | trio.abc.ReceiveStream,
    began: Callable[[], object] | None = None,
) -> tuple[Request, bytes] | Verdict | None:
    """Read one request head from ``source``; the request and the bytes that came after it.

    ``source`` is a plain connection's socket (read directly) or any other
    stream (TLS). A :class:`Verdict` instead if the peer sent what no request
    can be (it gets that answer), None if it left first. ``began`` is called
    once bytes arrive.
    """
    buffer = b""
    while True:
        try:
            if isinstance(source, trio.abc.ReceiveStream):
                data = await read_stream(source, RECEIVE_SIZE, "")
            else:
                data = await read_socket(source, RECEIVE_SIZE, "")
        except ConnectionLost:
            return None
        if not data:
            return None
        searched = max(0, len(buffer) - 3)  # a head's end may straddle two reads
        buffer += data
        if began is not None:
            began()
        if not _looks_like_http(buffer):
            return Verdict.NOT_HTTP
        end = _HEAD_END.search(buffer, searched)
        if end is not None and end.end() <= MAX_HEAD:
            request = parse(buffer[: end.start()])
            return request if isinstance(request, Verdict) else (request, buffer[end.end() :])
        if len(buffer) >= MAX_HEAD:
            return Verdict.TOO_LARGE


def _looks_like_http(buffer: bytes) -> bool:
    """Whether the first line is (or, while unfinished, may be) meant as a request line.

    Anything else on this port is a client of another protocol, most likely a
    line client that wants the TCP port. A JSON line is known by its first byte,
    so it is answered without waiting for the line's end.
    """
    if buffer[:1] == b"{":
        return False
    end = buffer.find(b"\n")
    return end < 0 or _HTTP_LINE_END.search(buffer, 0, end + 1) is not None


def parse(head: bytes) -> Request | Verdict:
    """The request in ``head`` (up to, not including, the blank line), or why it is none."""
    lines = head.split(b"\n")
    if len(lines) - 1 > MAX_FIELDS:
        return Verdict.TOO_MANY_FIELDS
    start = _REQUEST_LINE.fullmatch(_unended(lines[0]))
    if start is None:
        return Verdict.MALFORMED
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        field = _FIELD.fullmatch(_unended(line))
        if field is None:
            return Verdict.MALFORMED
        fields.setdefault(field[1].lower(), []).append(field[2])
    return Request(start[1], start[2], int(start[3]), fields)


def _unended(line: bytes) -> bytes:
    """``line`` without the CR of its CRLF (the LF is gone already)."""
    return line[:-1] if line.endswith(b"\r") else line


# --- judging -------------------------------------------------------------------------


def answer(
    request: Request, *, draining: bool, origins: Origins | None = None, ready: bool = True
) -> Verdict:
    """What ``request`` gets; ``draining``: the server is stopping; ``origins``: which
    browser origins may upgrade (default: the Host's own only); ``ready``: what it
    needs to serve (with ``--redis``, Redis) answers.

    In this order: a probe gets its state; a plain request is told this is a
    WebSocket port (or 503 while draining); an upgrade RFC 6455 §4.2.1 does not
    allow gets 400, one of another version 426, one from a foreign origin 403
    (draining or not: it would never be accepted); a good one is refused while
    draining, else accepted.
    """
    if not _wants_websocket(request):
        if _is_probe(request):
            if draining:
                return Verdict.DRAINING
            unready = not ready and request.target.partition(b"?")[0] == READY
            return Verdict.UNREADY if unready else Verdict.HEALTHY
        return Verdict.DRAINING if draining else Verdict.NOT_WEBSOCKET
    for rule in _RULES:
        broken = rule(request)
        if broken is not None:
            return broken
    if request.field(b"sec-websocket-version") != b"13":
        return Verdict.WRONG_VERSION  # RFC 6455 §4.4: 426 naming the versions we speak
    if not (origins or SAME_HOST).admits(request):
        return Verdict.FOREIGN_ORIGIN
    return Verdict.DRAINING if draining else Verdict.UPGRADE


def _wants_websocket(request: Request) -> bool:
    """Whether the request asks for an upgrade or a WebSocket at all, rightly or not.

    Those are judged by RFC 6455's rules; any other request is plain HTTP.
    """
    fields = request.fields
    return (
        b"upgrade" in fields or b"sec-websocket-key" in fields or b"sec-websocket-version" in fields
    )


def _is_probe(request: Request) -> bool:
    path = request.target.partition(b"?")[0]
    return path in PROBES and request.method in (b"GET", b"HEAD")


def _has_token(value: bytes | None, token: bytes) -> bool:
    """Whether a comma-separated header value holds ``token`` (case-insensitive)."""
    return value is not None and any(t.strip().lower() == token for t in value.split(b","))


# One function per rule of RFC 6455 §4.2.1: None if kept, else the 400 for breaking it.


def _get(request: Request) -> Verdict | None:
    return None if request.method == b"GET" else Verdict.NOT_GET


def _http_1_1(request: Request) -> Verdict | None:
    return None if request.minor >= 1 else Verdict.OLD_HTTP


def _host(request: Request) -> Verdict | None:
    hosts = request.fields.get(b"host", [])
    return None if len(hosts) == 1 and hosts[0] else Verdict.NO_HOST


def _upgrade(request: Request) -> Verdict | None:
    ok = _has_token(request.field(b"upgrade"), b"websocket")
    return None if ok else Verdict.NO_UPGRADE


def _connection(request: Request) -> Verdict | None:
    ok = _has_token(request.field(b"connection"), b"upgrade")
    return None if ok else Verdict.NO_CONNECTION


def _key(request: Request) -> Verdict | None:
    return None if _nonce(request) is not None else Verdict.BAD_KEY


_RULES = (_get, _http_1_1, _host, _upgrade, _connection, _key)


def _nonce(request: Request) -> bytes | None:
    """The ``Sec-WebSocket-Key`` if it is base64 of exactly 16 bytes (§4.2.1 item 5)."""
    key = request.field(b"sec-websocket-key")
    if key is None or len(key) != 24:
        return None
    try:
        decoded = base64.b64decode(key, validate=True)
    except binascii.Error:
        return None
    return key if len(decoded) == 16 else None


# --- origins -------------------------------------------------------------------------

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ORIGIN = re.compile(
    r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9._~!$&'()*+,;=%-]+)(?::([0-9]{1,5}))?"
)
"""RFC 6454 §6.2's serialisation (after lower-casing): scheme, host, optional port; no path."""
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._~!$&'()*+,;=%-]+)(?::([0-9]{1,5}))?")
"""RFC 9110 §7.2's ``Host``: host and optional port (after lower-casing)."""


def normal_origin(text: str) -> tuple[str, str, int] | None:
    """``text`` as an origin (scheme, host, port), case-folded and with the scheme's
    default port filled in; None if it is none (``null``, a path, no known port)."""
    found = _ORIGIN.fullmatch(text.strip().lower())
    if found is None:
        return None
    scheme, host, port = found[1], found[2], found[3]
    number = int(port) if port else DEFAULT_PORTS.get(scheme)
    if number is None or not 0 < number <= 65535:
        return None
    return scheme, host, number


def origin_text(origin: tuple[str, str, int]) -> str:
    """The origin as ``scheme://host[:port]``, the port left out when it is the default."""
    scheme, host, port = origin
    return (
        f"{scheme}://{host}" if DEFAULT_PORTS.get(scheme) == port else f"{scheme}://{host}:{port}"
    )


@dataclass(frozen=True, slots=True)
class Origins:
    """Which ``Origin`` may upgrade: none at all, the ``Host``'s own, and ``allowed``.

    Invariant: ``allowed`` holds normalised origins (:func:`normal_origin`), so
    matching is exact after both sides are normalised: scheme and host in any
    case, a default port written or not.
    """

    allowed: frozenset[tuple[str, str, int]] = frozenset()
    anything: bool = False
    """``*`` was allowed: every origin passes."""

    @classmethod
    def of(cls, origins: Iterable[str]) -> Origins:
        """From ``--allowed-origin`` values; ValueError names one that is no origin."""
        allowed = set()
        anything = False
        for text in origins:
            if text.strip() == "*":
                anything = True
                continue
            origin = normal_origin(text)
            if origin is None:
                raise ValueError(f"{text!r} is not an origin (scheme://host[:port], or *)")
            allowed.add(origin)
        return cls(frozenset(allowed), anything)

    def admits(self, request: Request) -> bool:
        value = request.field(b"origin")
        if value is None or self.anything:
            return True  # no Origin: not a browser, nothing to hijack
        origin = normal_origin(value.decode("latin-1"))
        if origin is None:
            return False  # "null" (sandboxed or file: pages), two Origins, garbage
        return origin in self.allowed or _is_host_of(origin, request.field(b"host"))


def _is_host_of(origin: tuple[str, str, int], host: bytes | None) -> bool:
    """Whether ``Host`` names the origin's host and port (its scheme's default if none).

    The scheme is not compared: behind a TLS-terminating proxy the page is
    ``https://chat.example`` while this server speaks plain HTTP to the proxy.
    """
    found = None if host is None else _HOST.fullmatch(host.decode("latin-1").strip().lower())
    if found is None:
        return False
    port = int(found[2]) if found[2] else DEFAULT_PORTS.get(origin[0])
    return (found[1], port) == (origin[1], origin[2])


SAME_HOST = Origins()
"""The default: browsers may upgrade from the Host's own origin only."""


# --- answering -----------------------------------------------------------------------


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for ``key`` (RFC 6455 §4.2.2 item 5.4)."""
    return base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())


def switching_protocols(request: Request) -> bytes:
    """The 101 for a request :func:`answer` found to be an upgrade."""
    key = request.field(b"sec-websocket-key")
    assert key is not None  # answer() checked it is 16 bytes in base64
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_token(key)
    )


class Answers:
    """Every answer other than the upgrade, made once per server, as wire bytes.

    ``not_websocket``: the body of the 426 to a plain request (it names the
    server's TCP listener, which only the server knows); ``not_http``: what a
    peer that does not speak HTTP is sent (the ``error{wrong_port}`` line).
    """

    def __init__(self, not_websocket: str, not_http: bytes) -> None:
        self._wire: dict[tuple[Verdict, bool], bytes] = {}
        for verdict in Verdict:
            if verdict is Verdict.UPGRADE:
                continue
            text = not_websocket if verdict is Verdict.NOT_WEBSOCKET else verdict.text
            for head_only in (False, True):
                self._wire[verdict, head_only] = (
                    not_http if verdict is Verdict.NOT_HTTP else _response(verdict, text, head_only)
                )

    def wire(self, verdict: Verdict, *, head_only: bool = False) -> bytes:
        return self._wire[verdict, head_only]


def _response(verdict: Verdict, text: str, head_only: bool) -> bytes:
    """A whole HTTP/1.1 response: status, length, ``Connection: close``, one line of text."""
    body = f"{text}\n".encode()
    head = [
        f"HTTP/1.1 {verdict.status} {HTTPStatus(verdict.status).phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if verdict.status == 426:
        head.append("Upgrade: websocket")  # RFC 9110 §15.5.22: 426 names the protocol
    if verdict is Verdict.WRONG_VERSION:
        head.append("Sec-WebSocket-Version: 13")
    wire = ("\r\n".join(head) + "\r\n\r\n").encode()
    return wire if head_only else wire + body
