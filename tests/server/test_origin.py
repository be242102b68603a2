"""Origin checks on the WebSocket port: a foreign browser origin gets 403 before the upgrade.

Byte-level answers are read from a real server over a raw socket (in the style of
test_http_port.py); a browser-style handshake goes through the ``websockets``
client, which lets a test set ``Origin``; the rules are also checked one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import host_port
from tests.server.test_http_port import ask, handshake, read_to_eof
from triochat import argtypes, cli
from triochat.server import Server, serve
from triochat.transport.upgrade import Origins, Verdict, answer, normal_origin, parse

ACROSS_NODES = True

TIMEOUT = 10


async def _serving(nursery: trio.Nursery, *allowed: str) -> Server:
    config = replace(TEST_CONFIG, allowed_origins=allowed)
    server: Server = await nursery.start(serve, config)
    return server


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    running = await _serving(nursery)
    yield running
    running.stop()


def _host(server: Server) -> bytes:
    host, port = host_port(server.url("ws"))
    return f"{host}:{port}".encode()


async def _status(server: Server, origin: bytes | None, *, host: bytes | None = None) -> int:
    """The status an upgrade from ``origin`` gets (the stream is closed after a 101)."""
    extra = b"" if origin is None else b"Origin: %s\r\n" % origin
    request = handshake(host=host or _host(server), extra=extra)
    with trio.fail_after(TIMEOUT):
        async with await trio.open_tcp_stream(*host_port(server.url("ws"))) as stream:
            await stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                assert chunk, data
                data += chunk
    return int(data.split(b" ", 2)[1])


# --- over real sockets -----------------------------------------------------------------


async def test_a_foreign_origin_gets_403_with_one_line_saying_why(server: Server) -> None:
    request = handshake(host=_host(server), extra=b"Origin: https://evil.example\r\n")
    response = await ask(server, request)
    assert response.status == 403
    assert response.body == Verdict.FOREIGN_ORIGIN.text.encode() + b"\n"
    assert response.body.count(b"\n") == 1
    assert b"--allowed-origin" in response.body


async def test_no_origin_is_a_non_browser_client_and_is_upgraded(server: Server) -> None:
    assert await _status(server, None) == 101


async def test_the_hosts_own_origin_is_upgraded_in_any_case(server: Server) -> None:
    host = _host(server)
    assert await _status(server, b"http://" + host) == 101
    assert await _status(server, b"HTTP://" + host.upper()) == 101


async def test_another_port_of_the_same_host_is_foreign(server: Server) -> None:
    host, port = host_port(server.url("ws"))
    assert await _status(server, f"http://{host}:{port + 1}".encode()) == 403
    assert await _status(server, f"http://{host}".encode()) == 403  # port 80 is not ours


@pytest.mark.parametrize("origin", [b"null", b"https://evil.example", b"http://127.0.0.1.evil"])
async def test_null_and_foreign_origins_are_refused(server: Server, origin: bytes) -> None:
    assert await _status(server, origin) == 403


async def test_a_listed_origin_is_upgraded_with_its_default_port_normalised(
    nursery: trio.Nursery,
) -> None:
    server = await _serving(nursery, "https://chat.example:443", "http://app.example:8080")
    try:
        assert await _status(server, b"https://CHAT.example") == 101
        assert await _status(server, b"http://app.example:8080") == 101
        assert await _status(server, b"http://app.example") == 403
        assert await _status(server, b"http://chat.example") == 403  # scheme differs
    finally:
        server.stop()


async def test_a_star_allows_every_origin(nursery: trio.Nursery) -> None:
    server = await _serving(nursery, "*")
    try:
        assert await _status(server, b"https://evil.example") == 101
        assert await _status(server, b"null") == 101
    finally:
        server.stop()


async def test_a_refused_origin_never_reaches_a_session(server: Server) -> None:
    """The 403 comes before the upgrade: frames sent behind the request are never read."""
    request = handshake(host=_host(server), extra=b"Origin: https://evil.example\r\n")
    with trio.fail_after(TIMEOUT):
        async with await trio.open_tcp_stream(*host_port(server.url("ws"))) as stream:
            await stream.send_all(request)
            data = await read_to_eof(stream)
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert server.connections == 0


# --- a browser-style handshake through a real client -------------------------------------


async def _websockets_status(url: str, origin: str) -> int:
    """101 if ``websockets`` opens the WebSocket with ``origin``, else the refusal's status."""

    async def attempt() -> int:
        try:
            async with connect(url, origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    return await trio.to_thread.run_sync(lambda: asyncio.run(asyncio.wait_for(attempt(), TIMEOUT)))


async def test_websockets_with_a_foreign_origin_gets_403_and_an_allowed_one_101(
    nursery: trio.Nursery,
) -> None:
    server = await _serving(nursery, "https://chat.example")
    try:
        url = server.url("ws")
        assert await _websockets_status(url, "https://evil.example") == 403
        assert await _websockets_status(url, "https://chat.example") == 101
    finally:
        server.stop()


# --- the rules, without a server -------------------------------------------------------


def _judged(extra: bytes, host: bytes = b"chat.example", *, draining: bool = False) -> Verdict:
    request = parse(handshake(host=host, key=b"dGhlIHNhbXBsZSBub25jZQ==", extra=extra)[:-4])
    assert not isinstance(request, Verdict)
    return answer(request, draining=draining)


@pytest.mark.parametrize(
    ("origin", "host", "verdict"),
    [
        (None, b"chat.example", Verdict.UPGRADE),
        (b"https://chat.example", b"chat.example", Verdict.UPGRADE),  # behind a TLS proxy
        (b"https://chat.example", b"chat.example:443", Verdict.UPGRADE),
        (b"http://chat.example:5000", b"chat.example:5000", Verdict.UPGRADE),
        (b"http://[::1]:5000", b"[::1]:5000", Verdict.UPGRADE),
        (b"http://chat.example", b"chat.example:5000", Verdict.FOREIGN_ORIGIN),
        (b"https://evil.example", b"chat.example", Verdict.FOREIGN_ORIGIN),
        (b"https://chat.example/path", b"chat.example", Verdict.FOREIGN_ORIGIN),
        (b"null", b"chat.example", Verdict.FOREIGN_ORIGIN),
    ],
)
def test_origin_against_host(origin: bytes | None, host: bytes, verdict: Verdict) -> None:
    assert _judged(b"" if origin is None else b"Origin: %s\r\n" % origin, host) is verdict


def test_two_origin_headers_are_foreign() -> None:
    extra = b"Origin: https://chat.example\r\nOrigin: https://chat.example\r\n"
    assert _judged(extra) is Verdict.FOREIGN_ORIGIN


def test_a_foreign_origin_is_403_even_while_draining() -> None:
    assert _judged(b"Origin: https://evil.example\r\n", draining=True) is Verdict.FOREIGN_ORIGIN
    assert _judged(b"Origin: https://chat.example\r\n", draining=True) is Verdict.DRAINING


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("https://Chat.Example", ("https", "chat.example", 443)),
        ("https://chat.example:443", ("https", "chat.example", 443)),
        ("http://chat.example:8080", ("http", "chat.example", 8080)),
        ("null", None),
        ("https://chat.example/", None),
        ("chat.example", None),
        ("foo://chat.example", None),  # no default port known
        ("http://chat.example:0", None),
    ],
)
def test_origins_are_normalised(text: str, normal: tuple[str, str, int] | None) -> None:
    assert normal_origin(text) == normal


def test_a_bad_allowed_origin_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        Origins.of(["https://chat.example/app"])


def test_a_bad_allowed_origin_flag_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--allowed-origin", "https://chat.example/app"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("triochat serve: argument --allowed-origin: 'https://chat.example/app'")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("*", "*"),
        ("HTTPS://Chat.Example:443", "https://chat.example"),
        ("http://a:81", "http://a:81"),
    ],
)
def test_allowed_origin_flag_values_are_normalised(text: str, kept: str) -> None:
    assert argtypes.origin(text) == kept
