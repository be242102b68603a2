"""A client pointed at the other listener is told so at once, in one line, by either side."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from tests.server.helpers import host_port, still_serving
from triochat.client import open_client
from triochat.errors import ConnectError
from triochat.protocol import decode_server
from triochat.protocol.events import Error
from triochat.server import Server

PROMPTLY = 3.0
"""Well under the 10 s a client waited before the server recognised the other protocol."""


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


def _swapped(url: str) -> str:
    scheme, rest = url.split("://")
    return f"{'tcp' if scheme == 'ws' else 'ws'}://{rest}"


@pytest.mark.parametrize("scheme", ["ws", "tcp"])
async def test_a_client_on_the_other_port_is_named_the_right_url(
    server: Server, scheme: str
) -> None:
    """``ws://`` at the TCP port, or ``tcp://`` at the WebSocket port."""
    wrong = _swapped(server.url("tcp" if scheme == "ws" else "ws"))
    other = "tcp" if scheme == "ws" else "ws"
    looks = "triochat's TCP port" if scheme == "ws" else "a WebSocket port"
    with trio.fail_after(PROMPTLY), pytest.raises(ConnectError) as caught:
        async with open_client(wrong, "ada"):
            pass
    hostport = wrong.split("://")[1]
    assert str(caught.value) == f"{wrong}: this looks like {looks}; use {other}://{hostport}"
    await still_serving(server)


async def test_http_on_the_tcp_port_gets_one_error_naming_the_websocket_url(
    server: Server,
) -> None:
    with trio.fail_after(PROMPTLY):
        stream = await trio.open_tcp_stream(*host_port(server.url("tcp")))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        head, body = (await _read_to_eof(stream)).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert f"Content-Length: {len(body)}".encode() in head
    error = decode_server(body)
    assert body.count(b"\n") == 1
    assert isinstance(error, Error)
    assert error.code == "wrong_port"
    assert error.message.endswith(f"WebSocket clients connect to {server.url('ws')}")


async def test_a_json_line_on_the_websocket_port_gets_one_error_naming_the_tcp_url(
    server: Server,
) -> None:
    with trio.fail_after(PROMPTLY):
        stream = await trio.open_tcp_stream(*host_port(server.url("ws")))
        await stream.send_all(b'{"type":"hello","nick":"ada"}\n')
        data = await _read_to_eof(stream)
    (line,) = data.splitlines()
    error = decode_server(line)
    assert isinstance(error, Error)
    assert error.code == "wrong_port"
    assert error.message.endswith(f"line clients connect to {server.url('tcp')}")
    await still_serving(server)


async def test_an_http_answer_to_a_tcp_hello_is_named_as_such(nursery: trio.Nursery) -> None:
    """Any HTTP server, not only triochat's WebSocket listener, answers our hello in HTTP."""

    async def http_server(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    (listener,) = await nursery.start(partial(trio.serve_tcp, http_server, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    with trio.fail_after(PROMPTLY), pytest.raises(ConnectError) as caught:
        async with open_client(f"tcp://127.0.0.1:{port}", "ada"):
            pass
    assert "this looks like a WebSocket port" in str(caught.value)
