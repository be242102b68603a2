"""What the WebSocket port answers, byte for byte: probes, plain HTTP, bad upgrades, drain.

Each answer is read from a real server over a raw socket; the rules themselves
(triochat/transport/upgrade.py's :func:`answer`) are also checked one by one,
without a server.
"""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import host_port, still_serving
from triochat.protocol import decode_server, encode
from triochat.protocol.events import Error, Hello
from triochat.server import Server, serve
from triochat.transport.upgrade import (
    MAX_FIELDS,
    MAX_HEAD,
    Verdict,
    accept_token,
    answer,
    parse,
)

ACROSS_NODES = True

TIMEOUT = 10


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    running: Server = await nursery.start(serve, TEST_CONFIG)
    yield running
    running.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """By lower-case name; every name must come once."""
    body: bytes


def parse_response(data: bytes) -> Response:
    """One whole HTTP/1.1 response that is all of ``data``: Content-Length and close."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice"
        headers[name.lower()] = value.strip()
    return Response(int(status), headers, body)


FRESH = b"fresh"
"""A new random key (the default of :func:`handshake`)."""


def handshake(
    *,
    start: bytes = b"GET / HTTP/1.1",
    host: bytes | None = b"localhost",
    upgrade: bytes | None = b"websocket",
    connection: bytes | None = b"Upgrade",
    key: bytes | None = FRESH,
    version: bytes | None = b"13",
    extra: bytes = b"",
) -> bytes:
    """An upgrade request, good unless told otherwise (None leaves a header out)."""
    fields = [
        (b"Host", host),
        (b"Upgrade", upgrade),
        (b"Connection", connection),
        (b"Sec-WebSocket-Key", base64.b64encode(os.urandom(16)) if key is FRESH else key),
        (b"Sec-WebSocket-Version", version),
    ]
    lines = [start] + [b"%s: %s" % (n, v) for n, v in fields if v is not None]
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def ask(server: Server, *pieces: bytes) -> Response:
    """Send ``pieces`` (each once the server has read the last), read the answer to the close."""
    with trio.fail_after(TIMEOUT):
        async with await trio.open_tcp_stream(*host_port(server.url("ws"))) as stream:
            for piece in pieces:
                await stream.send_all(piece)
                await trio.testing.wait_all_tasks_blocked()
            response = parse_response(await read_to_eof(stream))
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body) or not response.body
    return response


# --- probes ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"/healthz", b"/readyz", b"/readyz?from=lb"])
async def test_a_probe_says_ok_while_serving(server: Server, path: bytes) -> None:
    response = await ask(server, b"GET %s HTTP/1.1\r\nHost: lb\r\n\r\n" % path)
    assert response.status == 200
    assert response.body == b"ok\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_a_head_probe_gets_the_head_alone(server: Server) -> None:
    response = await ask(server, b"HEAD /healthz HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert response.status == 200
    assert response.headers["content-length"] == "3"
    assert response.body == b""


async def test_an_http_1_0_probe_with_bare_line_feeds_says_ok(server: Server) -> None:
    """HAProxy's default check is HTTP/1.0; netcat sends bare LFs (RFC 9112 §2.2 allows them)."""
    response = await ask(server, b"GET /healthz HTTP/1.0\n\n")
    assert response.status == 200
    assert response.body == b"ok\n"


# --- plain HTTP and bad upgrades ----------------------------------------------------------


async def test_a_plain_request_gets_426_naming_the_tcp_port(server: Server) -> None:
    response = await ask(server, b"GET / HTTP/1.1\r\nHost: browser\r\nAccept: */*\r\n\r\n")
    assert response.status == 426
    assert response.headers["upgrade"] == "websocket"
    assert response.body.count(b"\n") == 1
    text = response.body.decode()
    assert text.startswith("this is triochat's WebSocket endpoint")
    assert server.url("tcp") in text
    await still_serving(server)


BAD_UPGRADES = {
    "HTTP/1.0": (handshake(start=b"GET / HTTP/1.0"), Verdict.OLD_HTTP),
    "POST": (handshake(start=b"POST / HTTP/1.1"), Verdict.NOT_GET),
    "no Host": (handshake(host=None), Verdict.NO_HOST),
    "two Hosts": (handshake(extra=b"Host: other\r\n"), Verdict.NO_HOST),
    "Upgrade: h2c": (handshake(upgrade=b"h2c"), Verdict.NO_UPGRADE),
    "no Upgrade": (handshake(upgrade=None), Verdict.NO_UPGRADE),
    "Connection: keep-alive": (handshake(connection=b"keep-alive"), Verdict.NO_CONNECTION),
    "key of 15 bytes": (handshake(key=base64.b64encode(b"x" * 15)), Verdict.BAD_KEY),
    "key of 17 bytes": (handshake(key=base64.b64encode(b"x" * 17)), Verdict.BAD_KEY),
    "key not base64": (handshake(key=b"not base64 at all, no!!"), Verdict.BAD_KEY),
    "no key": (handshake(key=None), Verdict.BAD_KEY),
    "1,000 headers": (
        handshake(extra=b"X:y\r\n" * 1000),  # 5 KB: within the size limit
        Verdict.TOO_MANY_FIELDS,
    ),
    "oversized": (handshake(extra=b"X-Big: %s\r\n" % (b"y" * MAX_HEAD)), Verdict.TOO_LARGE),
    "space before colon": (handshake(extra=b"X-Bad : y\r\n"), Verdict.MALFORMED),
    "folded header": (handshake(extra=b"X-Fold: a\r\n b\r\n"), Verdict.MALFORMED),
}


@pytest.mark.parametrize("name", BAD_UPGRADES)
async def test_an_upgrade_rfc_6455_does_not_allow_gets_400(server: Server, name: str) -> None:
    request, verdict = BAD_UPGRADES[name]
    response = await ask(server, request)
    assert response.status == 400
    assert response.body == verdict.text.encode() + b"\n"
    assert "upgrade" not in response.headers


@pytest.mark.parametrize("version", [b"8", b"14", None])
async def test_another_websocket_version_gets_426_naming_13(
    server: Server, version: bytes | None
) -> None:
    response = await ask(server, handshake(version=version))
    assert response.status == 426
    assert response.headers["sec-websocket-version"] == "13"
    assert response.headers["upgrade"] == "websocket"


async def test_a_line_that_is_neither_json_nor_http_gets_the_wrong_port_line(
    server: Server,
) -> None:
    """A ``{`` is answered at its first byte (tests/server/test_wrong_port.py); any other
    first line that is no request line is answered at its end, not after 10 s."""
    with trio.fail_after(3):
        async with await trio.open_tcp_stream(*host_port(server.url("ws"))) as stream:
            await stream.send_all(b"hello there\n")
            (line,) = (await read_to_eof(stream)).splitlines()
    error = decode_server(line)
    assert isinstance(error, Error)
    assert error.code == "wrong_port"
    assert error.message.endswith(f"line clients connect to {server.url('tcp')}")


# --- upgrades -------------------------------------------------------------------------


async def _upgraded(server: Server, pieces: list[bytes]) -> tuple[trio.SocketStream, bytes]:
    """Send ``pieces`` one at a time; the stream and what came back up to the blank line."""
    stream = await trio.open_tcp_stream(*host_port(server.url("ws")))
    for piece in pieces:
        await stream.send_all(piece)
        await trio.testing.wait_all_tasks_blocked()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, data
        data += chunk
    return stream, data


async def test_a_good_upgrade_gets_101_with_the_accept_token_and_nothing_negotiated(
    server: Server,
) -> None:
    nonce = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
    request = handshake(
        key=nonce,
        extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Protocol: chat\r\n",
    )
    with trio.fail_after(TIMEOUT):
        stream, head = await _upgraded(server, [request])
        await stream.aclose()
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    fields = {n.lower(): v.strip() for n, _, v in (line.partition(b":") for line in lines[1:-2])}
    assert fields == {
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-accept": b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    }
    assert accept_token(nonce) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("how", ["in pieces", "hello in the same packet"])
async def test_an_upgrade_becomes_a_chat_session(server: Server, how: str) -> None:
    """A request in pieces (each read before the next is sent) is one request; frames
    sent right behind it, before the 101, are the session's first."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = ws.send(Request(host="localhost", target="/chat"))
    hello = encode(Hello(nick="piecemeal")).decode()
    if how == "in pieces":
        cuts = [0, 1, 5, 17, len(request) - 3, len(request) - 1, len(request)]
        pieces = [request[a:b] for a, b in itertools.pairwise(cuts)]
    else:
        pieces = [request + wsproto.frame_protocol.FrameProtocol(True, []).send_data(hello)]
    with trio.fail_after(TIMEOUT):
        stream, data = await _upgraded(server, pieces)
        ws.receive_data(data)
        events = list(ws.events())  # the 101, and maybe the welcome already
        assert isinstance(events[0], AcceptConnection)
        if how == "in pieces":
            await stream.send_all(ws.send(TextMessage(data=hello)))
        welcome = "".join(e.data for e in events if isinstance(e, TextMessage))
        while '"type":"welcome"' not in welcome:
            ws.receive_data(await stream.receive_some())
            welcome += "".join(e.data for e in ws.events() if isinstance(e, TextMessage))
        await stream.aclose()


# --- drain ----------------------------------------------------------------------------


@pytest.fixture
async def draining(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, trio.SocketStream]]:
    """A server that stops while a request is on its way: the first bytes have been read."""
    config = replace(TEST_CONFIG, drain_timeout=5, close_timeout=5)
    running: Server = await nursery.start(serve, config)
    stream = await trio.open_tcp_stream(*host_port(running.url("ws")))
    await stream.send_all(b"GET ")
    await trio.testing.wait_all_tasks_blocked()
    running.stop()
    await trio.testing.wait_all_tasks_blocked()  # the stop has reached the handshake
    yield running, stream
    await stream.aclose()


@pytest.mark.parametrize("path", [b"/healthz", b"/readyz"])
async def test_a_probe_says_503_while_draining(
    draining: tuple[Server, trio.SocketStream], path: bytes
) -> None:
    _, stream = draining
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"%s HTTP/1.1\r\nHost: lb\r\n\r\n" % path)
        response = parse_response(await read_to_eof(stream))
    assert response.status == 503
    assert response.body == Verdict.DRAINING.text.encode() + b"\n"


async def test_an_upgrade_while_draining_gets_503(
    draining: tuple[Server, trio.SocketStream],
) -> None:
    _, stream = draining
    with trio.fail_after(TIMEOUT):
        await stream.send_all(handshake().removeprefix(b"GET "))
        response = parse_response(await read_to_eof(stream))
    assert response.status == 503


async def test_a_connection_that_sent_nothing_is_closed_at_once_on_stop(
    nursery: trio.Nursery,
) -> None:
    config = replace(TEST_CONFIG, handshake_timeout=30, drain_timeout=30, close_timeout=30)
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Server]) -> None:
        await serve(config, task_status=task_status)
        done.set()

    running: Server = await nursery.start(run)
    async with await trio.open_tcp_stream(*host_port(running.url("ws"))) as stream:
        await trio.testing.wait_all_tasks_blocked()  # accepted, waiting for a request
        with trio.fail_after(TIMEOUT):
            running.stop()
            assert await read_to_eof(stream) == b""
            await done.wait()


# --- the rules, without a server ---------------------------------------------------------

GOOD = handshake(key=b"dGhlIHNhbXBsZSBub25jZQ==")[:-4]


def judged(head: bytes, *, draining: bool = False) -> Verdict:
    request = parse(head)
    return request if isinstance(request, Verdict) else answer(request, draining=draining)


def test_a_good_upgrade_is_accepted_unless_draining() -> None:
    assert judged(GOOD) is Verdict.UPGRADE
    assert judged(GOOD, draining=True) is Verdict.DRAINING


@pytest.mark.parametrize("name", BAD_UPGRADES)
def test_each_broken_rule_has_its_verdict_draining_or_not(name: str) -> None:
    request, verdict = BAD_UPGRADES[name]
    head = request[: request.index(b"\r\n\r\n")]
    if verdict is Verdict.TOO_LARGE:
        assert len(request) > MAX_HEAD  # the reader's rule; parse() has no size limit
        return
    assert judged(head) is verdict
    assert judged(head, draining=True) is verdict


@pytest.mark.parametrize(
    ("head", "serving", "draining"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x", Verdict.HEALTHY, Verdict.DRAINING),
        (b"HEAD /readyz HTTP/1.0", Verdict.HEALTHY, Verdict.DRAINING),
        (b"POST /healthz HTTP/1.1\r\nHost: x", Verdict.NOT_WEBSOCKET, Verdict.DRAINING),
        (b"GET / HTTP/1.1\r\nHost: x", Verdict.NOT_WEBSOCKET, Verdict.DRAINING),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket",
            Verdict.NO_CONNECTION,
            Verdict.NO_CONNECTION,
        ),
        (b"GET / HTTP/2.0\r\nHost: x", Verdict.MALFORMED, Verdict.MALFORMED),
    ],
)
def test_plain_requests_and_probes(head: bytes, serving: Verdict, draining: Verdict) -> None:
    assert judged(head) is serving
    assert judged(head, draining=True) is draining


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"Upgrade", b"foo, WebSocket"),
        (b"Connection", b"keep-alive, UPGRADE"),
        (b"Connection", b"keep-alive,upgrade"),
    ],
)
def test_tokens_are_found_in_comma_lists_in_any_case(field: bytes, value: bytes) -> None:
    head = GOOD.replace(b"%s: " % field, b"%s: %s\r\nX-Was: " % (field, value))
    assert judged(head) is Verdict.UPGRADE


def test_the_field_limit_counts_header_lines() -> None:
    fields = b"".join(b"\r\nX-%d: y" % n for n in range(MAX_FIELDS - 5))
    assert judged(GOOD + fields) is Verdict.UPGRADE  # 5 of the good request's + 95 = 100
    assert judged(GOOD + fields + b"\r\nX-More: y") is Verdict.TOO_MANY_FIELDS
