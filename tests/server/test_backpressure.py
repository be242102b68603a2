"""A client that stops reading is evicted; nobody else notices anything but its ``left``."""

from __future__ import annotations

import socket

import trio

from tests.server.helpers import host_port, settle_join, skip_until
from triochat.client import Client, open_client
from triochat.protocol import decode_server, encode
from triochat.protocol.events import Hello, Joined, Left, LeftReason, Members, Message, Say, Welcome
from triochat.server import Server, ServerConfig, serve

TEXT = "x" * 4000


async def _stalled_tcp_member(address: str, nick: str) -> trio.SocketStream:
    """A real TCP client that says hello, reads its welcome, then never reads again.

    A tiny receive buffer makes the kernel stop taking bytes for it early.
    """
    host, port = host_port(address)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    await stream.send_all(encode(Hello(nick=nick)))
    first = await stream.receive_some(4096)
    assert isinstance(decode_server(first.split(b"\n")[0]), Welcome)
    return stream


async def _is_member(client_nick: str, observer: Client, room: str) -> bool:
    await observer.who(room)
    members = await skip_until(observer, Members, room=room)
    return client_nick in members.nicks


async def _collect_until_done(client: Client, numbers: list[int], left: list[Left]) -> None:
    while True:
        event = await client.receive()
        if isinstance(event, Left):
            left.append(event)
        elif isinstance(event, Message):
            if event.text == "done":
                return
            numbers.append(int(event.text.split(":", 1)[0]))


async def test_slow_reader_is_evicted_and_others_get_everything_in_order(
    nursery: trio.Nursery,
) -> None:
    config = ServerConfig(port=0, tcp_port=0, rate_limit=0, outbox_events=200)
    server: Server = await nursery.start(serve, config)
    numbers: list[int] = []
    left: list[Left] = []
    with trio.fail_after(30):
        stalled = await _stalled_tcp_member(server.url("tcp"), "sloth")
        async with (
            open_client(server.url("ws"), "ada") as ada,
            open_client(server.url("tcp"), "bob") as bob,
            trio.open_nursery() as readers,
        ):
            await settle_join(ada)
            await settle_join(bob)
            readers.start_soon(_collect_until_done, ada, numbers, left)
            sent = 0
            # Keep talking until sloth is gone from the room, in rounds of 50.
            while sent == 0 or await _is_member("sloth", bob, "lobby"):
                for _ in range(50):
                    await bob.say("lobby", f"{sent}:{TEXT}")
                    sent += 1
            await bob.say("lobby", "done")
        await stalled.aclose()
    assert numbers == list(range(sent))
    assert [(e.nick, e.reason) for e in left] == [("sloth", LeftReason.SLOW_CONSUMER)]


async def test_a_writer_sends_everything_queued_in_one_websocket_message(server: Server) -> None:
    with trio.fail_after(5):
        async with (
            open_client(server.url("ws"), "ada") as ada,
            open_client(server.url("tcp"), "bob") as bob,
        ):
            await settle_join(ada)
            await skip_until(ada, Joined, nick="bob")
            # Three says in one TCP write are handled in one step by the server, so
            # ada's writer finds all three messages queued and sends one message.
            says = b"".join(encode(Say(room="lobby", text=t)) for t in ("one", "two", "three"))
            await bob.send_raw(says)
            batch = [decode_server(line) for line in await ada.receive_lines()]
            assert [e.text for e in batch if isinstance(e, Message)] == ["one", "two", "three"]
            assert len(batch) == 3
