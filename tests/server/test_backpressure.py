"""A client that stops reading is evicted; nobody else notices anything but its ``left``."""

from __future__ import annotations

import trio

from tests.server.helpers import fill, settle_join, skip_until, stalled
from triochat.client import Client, open_client
from triochat.protocol import decode_server, encode
from triochat.protocol.events import (
    Hello,
    History,
    HistoryPage,
    Joined,
    Left,
    LeftReason,
    Members,
    Message,
    Say,
    Welcome,
)
from triochat.server import Server, ServerConfig, serve

ACROSS_NODES = True

TEXT = "x" * 4000


async def _stalled_tcp_member(address: str, nick: str) -> trio.SocketStream:
    """A real TCP client that says hello, reads its welcome, then never reads again."""
    stream = await stalled(address, Hello(nick=nick))
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


LONG = "y" * 7900
"""A message near ``max_text``: 300 of them are 2.4 MB, several outbox bounds' worth."""


async def test_a_history_page_asked_for_is_capped_at_half_the_bound_and_pages_on(
    server: Server,
) -> None:
    config = server.config
    with trio.fail_after(20):
        async with open_client(server.url("tcp"), "ada") as ada:
            await settle_join(ada)
            await fill(ada, "lobby", 300, LONG)
            await ada.history("lobby", limit=500)
            first = await skip_until(ada, HistoryPage, room="lobby")
            await ada.history("lobby", before_seq=first.events[0].seq, limit=500)
            second = await skip_until(ada, HistoryPage, room="lobby")
    for page in (first, second):
        assert 0 < sum(len(encode(e)) for e in page.events) <= config.outbox_bytes // 2
    seqs = [e.seq for e in second.events + first.events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "the pages join up"
    assert isinstance(first.events[-1], Message)
    assert first.events[-1].text == f"299:{LONG}", "a page holds the newest events that fit"


async def test_asking_for_history_without_reading_it_gets_a_client_evicted(
    server: Server,
) -> None:
    """Pages asked for count against the bound: they cannot pile up in the server's memory."""
    with trio.fail_after(30):
        async with open_client(server.url("tcp"), "ada") as ada:
            await settle_join(ada)
            await fill(ada, "lobby", 300, LONG)
            hoarder = await _stalled_tcp_member(server.url("tcp"), "hoarder")
            ask = encode(History(room="lobby", limit=500))
            await hoarder.send_all(ask * 100)  # ~50 MB of pages, and not a byte read
            left = await skip_until(ada, Left, nick="hoarder")
            assert left.reason == LeftReason.SLOW_CONSUMER
            await hoarder.aclose()
