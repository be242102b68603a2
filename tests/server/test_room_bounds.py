"""Rooms are bounded: the history each keeps in memory in bytes, and how many the server holds."""

from __future__ import annotations

from dataclasses import replace

import trio

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import settle_join, skip_until
from triochat.client import open_client
from triochat.protocol import encode
from triochat.protocol.events import Error, HistoryPage, Message
from triochat.server import Server, serve
from triochat.server.roomlog import LINE_COST, RoomLog

HEAVY = "\U0001f642" * 7990
"""4 bytes of UTF-8 a character: a 32 KB line."""


def test_a_room_log_keeps_the_newest_lines_that_fit_its_bytes() -> None:
    cost = 4 + LINE_COST  # what a 4-byte line takes in memory
    log = RoomLog(retention=100, max_bytes=2 * cost + 3)
    for seq in range(1, 8):
        log.append(seq, b"abcd")  # two fit, never a third
    assert log.before(None, 100) == [b"abcd", b"abcd"]
    assert log.retained_bytes == 2 * cost
    assert log.page(0, log.next_seq, 100, 100) == (7, [b"abcd", b"abcd"])
    assert log.between(0, 8) == [b"abcd", b"abcd"]
    log.append(8, b"x" * 50)  # larger than the bound alone: still kept, as the newest
    assert log.before(None, 100) == [b"x" * 50]
    assert log.next_seq == 9


def test_a_shrunk_room_log_keeps_its_newest_lines_and_its_numbering() -> None:
    log = RoomLog(retention=100)
    for seq in range(1, 11):
        log.append(seq, b"%d" % seq)
    log.shrink(3 * (2 + LINE_COST))
    assert log.before(None, 100) == [b"8", b"9", b"10"]
    log.shrink(0)  # the newest always stays
    assert log.before(None, 100) == [b"10"]
    log.append(11, b"11")
    assert log.between(0, 12) == [b"10", b"11"]


async def test_history_in_memory_is_bounded_in_bytes_per_room(nursery: trio.Nursery) -> None:
    config = replace(TEST_CONFIG, room_history_bytes=300_000)
    server: Server = await nursery.start(serve, config)
    with trio.fail_after(20):
        async with open_client(server.url("tcp"), "ada") as ada:
            await settle_join(ada)
            for n in range(20):  # about 640 KB said, 300 KB kept
                await ada.say("lobby", f"{n}:{HEAVY}")
            await skip_until(ada, Message, text=f"19:{HEAVY}")
            await ada.history("lobby", limit=500)
            page = await skip_until(ada, HistoryPage, room="lobby")
    kept = sum(len(encode(event)) for event in page.events)
    assert 0 < kept <= 300_000
    assert page.events[-1].seq == 21, "the newest are the ones kept"


async def test_the_server_holds_at_most_max_rooms(nursery: trio.Nursery) -> None:
    server: Server = await nursery.start(serve, replace(TEST_CONFIG, max_rooms=3))
    with trio.fail_after(20):
        async with open_client(server.url("tcp"), "ada", rooms=["a", "b", "c"]) as ada:
            for _ in range(3):
                await settle_join(ada)
            await ada.join("d")
            error = await skip_until(ada, Error)
            assert error.code == "too_many_rooms"
            assert "limit of 3 rooms" in error.message
            async with open_client(server.url("tcp"), "bob", rooms=["c"]) as bob:
                await settle_join(bob)  # an existing room takes anyone


async def test_a_hello_past_the_room_limit_is_welcomed_into_the_rooms_that_fit(
    nursery: trio.Nursery,
) -> None:
    server: Server = await nursery.start(serve, replace(TEST_CONFIG, max_rooms=2))
    with trio.fail_after(20):
        async with open_client(server.url("tcp"), "ada", rooms=["a", "b", "c"]) as ada:
            assert ada.welcome is not None
            assert ada.welcome.rooms == ["a", "b"]
            error = await skip_until(ada, Error)
            assert error.code == "too_many_rooms"
            await ada.say("a", "still here", id=1)
            await skip_until(ada, Message, text="still here")
