"""The client library's own promises: clear connect errors, and no library error leaks."""

from __future__ import annotations

import pytest
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.server.helpers import settle_join
from triochat.client import open_client
from triochat.errors import ConnectError, ConnectionClosed, ConnectionLost
from triochat.protocol import decode_server, encode
from triochat.protocol.events import Limits, Welcome
from triochat.server import Server

ACROSS_NODES = True


async def test_connection_refused_is_one_clear_line() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: refused
        with pytest.raises(ConnectError) as caught:
            async with open_client(f"tcp://127.0.0.1:{port}", "ada"):
                pass
    assert str(caught.value) == (
        f"tcp://127.0.0.1:{port}: connection refused (is the server running?)"
    )


async def test_unknown_host_is_one_clear_line() -> None:
    with trio.fail_after(10), pytest.raises(ConnectError, match="host not found"):
        async with open_client("ws://no-such-host.invalid:5000", "ada"):
            pass


@pytest.mark.parametrize(
    "url",
    [
        "http://x:1",
        "ws://nohostport",
        "tcp://h:notaport",
        "ws://[::1",
        "ws://[zz]:5000",
        "ws://h:0",
        "tcp://h:70000",
    ],
)
async def test_bad_urls_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(ConnectError, match="use ws://, wss://, tcp:// or tls://HOST:PORT"):
        async with open_client(url, "ada"):
            pass


async def test_closing_while_another_task_sends_raises_only_our_errors(server: Server) -> None:
    failures: list[BaseException] = []

    async def keep_sending(client: object) -> None:
        from triochat.client import Client

        assert isinstance(client, Client)
        try:
            while True:
                await client.ping()
        except (ConnectionClosed, ConnectionLost):
            pass
        except Exception as exc:  # pragma: no cover - what this test exists to catch
            failures.append(exc)

    with trio.fail_after(10):
        # A nick per round: on several nodes, the last round's may not be free yet
        # (its node has not yet seen the close this side made).
        for round_ in range(30):
            nick = f"ada{round_}"
            async with open_client(server.url("tcp"), nick) as ada, trio.open_nursery() as n:
                await settle_join(ada)
                n.start_soon(keep_sending, ada)
                await trio.lowlevel.checkpoint()
                await ada.aclose()
    assert failures == []


async def _server_that_pings_during_close(*, task_status: trio.TaskStatus[int]) -> None:
    """A WebSocket server that answers the client's Close with a Ping first."""

    async def handle(stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        while True:
            data = await stream.receive_some()
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                elif isinstance(event, TextMessage):
                    welcome = Welcome(nick="ada", rooms=[], limits=_LIMITS, server_id="x")
                    await stream.send_all(ws.send(TextMessage(data=encode(welcome).decode())))
                elif isinstance(event, CloseConnection):
                    # wsproto would refuse to send this now: raw, unmasked Ping frame.
                    await stream.send_all(b"\x89\x04late")
                    await stream.send_all(ws.send(event.response()))
                    await stream.aclose()
                    return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


_LIMITS = Limits(
    max_line=1,
    max_text=1,
    max_nick=1,
    max_room=1,
    max_rooms=1,
    rate_limit=0,
    burst=1,
    max_history_page=1,
    outbox_events=1,
    outbox_bytes=1,
    max_topic=1,
)


async def test_a_server_ping_during_our_close_does_not_escape(nursery: trio.Nursery) -> None:
    """The client-side twin of trio-websocket #184: wsproto refuses the Pong."""
    port = await nursery.start(_server_that_pings_during_close)
    with trio.fail_after(10):
        async with open_client(f"ws://127.0.0.1:{port}", "ada") as ada:
            assert ada.welcome is not None
    nursery.cancel_scope.cancel()


async def test_raw_readers_get_every_line_after_welcome(url: str) -> None:
    """What arrived with the welcome (own joined, replay, members) is not lost to raw readers."""
    with trio.fail_after(5):
        async with open_client(url, "ada") as ada:
            lines: list[bytes] = []
            while not any(b'"type":"members"' in line for line in lines):
                lines += await ada.receive_lines()
            kinds = [type(decode_server(line)).__name__ for line in lines]
            assert kinds == ["Joined", "HistoryPage", "Members"]
