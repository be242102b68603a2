"""Actions (``/me``), room topics and the room list, end to end on every transport,
with history in memory, in SQLite, and on three nodes sharing Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
import trio

from tests.redisd import needs_redis
from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import expect, settle_join, skip_until
from tests.server.nodes import run_nodes
from triochat.client import Client, open_client
from triochat.protocol.events import (
    Ack,
    DirectMessage,
    Error,
    HistoryPage,
    Joined,
    Left,
    Members,
    Message,
    Pong,
    RoomInfo,
    Rooms,
    Topic,
)
from triochat.server import Server, ServerConfig, serve
from triochat.server.hub import rooms_page

ACROSS_NODES = True


async def _joined_all(client: Client, count: int) -> None:
    for _ in range(count):
        await settle_join(client)


async def _topic(client: Client, room: str, text: str) -> Topic:
    """Set ``room``'s topic and read up to the setter's own ``topic`` event."""
    await client.topic(room, text)
    return await skip_until(client, Topic, room=room, text=text)


async def _members(client: Client, room: str) -> Members:
    await client.who(room)
    return await skip_until(client, Members, room=room)


async def _rooms(client: Client, after: str | None = None, limit: int | None = None) -> Rooms:
    await client.list_rooms(after, limit)
    return await skip_until(client, Rooms)


# --- actions -----------------------------------------------------------------------------


async def test_an_action_reaches_everyone_and_history_as_an_action(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada") as ada, open_client(url, "bob") as bob:
            await settle_join(ada)
            await settle_join(bob)
            await ada.say("lobby", "waves", id="a1", action=True)
            mine = await skip_until(ada, Message, text="waves")
            assert mine.action is True
            await expect(ada, Ack, id="a1", seq=mine.seq)
            theirs = await skip_until(bob, Message, text="waves")
            assert (theirs.action, theirs.from_, theirs.seq) == (True, "ada", mine.seq)
            await bob.say("lobby", "hi", id="b1")
            plain = await skip_until(ada, Message, text="hi")
            assert plain.action is False

            await ada.dm("bob", "nods", id="d1", action=True)
            dm = await skip_until(bob, DirectMessage, text="nods")
            assert (dm.action, dm.from_, dm.id) == (True, "ada", "d1")
            echo = await skip_until(ada, DirectMessage, text="nods")
            assert echo.action is True

            async with open_client(url, "cy") as cy:
                await expect(cy, Joined, nick="cy")
                page = await expect(cy, HistoryPage, room="lobby")
                said = {e.text: e.action for e in page.events if isinstance(e, Message)}
                assert said == {"waves": True, "hi": False}


async def test_an_action_follows_the_text_rules(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada") as ada:
            await settle_join(ada)
            await ada.say("lobby", "", id=1, action=True)
            await expect(ada, Error, code="bad_event", ref=1)
            await ada.say("lobby", "be\x1bll", id=2, action=True)
            refused = await expect(ada, Error, code="bad_event", ref=2)
            assert "control characters other than newline and tab" in refused.message


# --- topics ------------------------------------------------------------------------------


async def test_a_topic_is_a_room_event_for_every_member_and_clears(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada") as ada, open_client(url, "bob") as bob:
            await settle_join(ada)
            await settle_join(bob)
            assert (await _members(bob, "lobby")).topic is None
            before = await skip_until(ada, Joined, nick="bob")

            ours = await _topic(ada, "lobby", "release on friday")
            assert (ours.seq, ours.from_) == (before.seq + 1, "ada")
            theirs = await skip_until(bob, Topic, room="lobby")
            assert theirs == ours
            assert (await _members(bob, "lobby")).topic == "release on friday"

            again = await _topic(bob, "lobby", "release on friday")  # the same: an event still
            assert again.seq == ours.seq + 1

            cleared = await _topic(ada, "lobby", "")
            assert (cleared.seq, cleared.text) == (again.seq + 1, "")
            assert (await _members(ada, "lobby")).topic is None
            await ada.say("lobby", "after", id="x")
            message = await skip_until(ada, Message, text="after")
            assert message.seq == cleared.seq + 1


async def test_topic_refusals(url: str, server: Server) -> None:
    longest = server.config.max_topic
    with trio.fail_after(10):
        async with open_client(url, "ada", rooms=["dev"]) as ada:
            await settle_join(ada)
            assert ada.welcome is not None
            assert ada.welcome.limits.max_topic == longest == 300
            await ada.topic("lobby", "not mine")
            await expect(ada, Error, code="not_in_room")
            await ada.topic("no room!", "x")
            await expect(ada, Error, code="room_invalid")
            await ada.topic("dev", "x" * (longest + 1))
            too_long = await expect(ada, Error, code="bad_event")
            assert f"at most {longest} characters" in too_long.message
            for text, control in [("two\nlines", "U+000A at 3"), ("a\ttab", "U+0009 at 1")]:
                await ada.topic("dev", text)
                refused = await expect(ada, Error, code="bad_event")
                assert refused.message == f"a topic may not hold control characters ({control})"
            await ada.ping("after")
            await expect(ada, Pong, token="after")  # nothing was set meanwhile
            await _topic(ada, "dev", "é" * longest)
            assert (await _members(ada, "dev")).topic == "é" * longest


async def test_a_joiner_gets_the_topic_in_members_and_the_event_in_its_past(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada") as ada:
            await settle_join(ada)
            set_ = await _topic(ada, "lobby", "welcome, all")
            async with open_client(url, "bob") as bob:
                await expect(bob, Joined, nick="bob")
                page = await expect(bob, HistoryPage, room="lobby")
                assert page.events[-1] == set_
                members = await expect(bob, Members, room="lobby")
                assert (members.nicks, members.topic) == (["ada", "bob"], "welcome, all")
                await ada.who()
                everyone = await skip_until(ada, Members, room=None)
                assert everyone.topic is None
            await ada.join("lobby")  # already in: only members, with the topic
            again = await skip_until(ada, Members, room="lobby")
            assert again.topic == "welcome, all"


async def test_a_resume_replays_the_topics_missed(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada") as ada:
            await settle_join(ada)
            async with open_client(url, "bob") as bob:
                await settle_join(bob)
                seen = await _topic(bob, "lobby", "first")
            await skip_until(ada, Left, nick="bob")
            missed = await _topic(ada, "lobby", "second")
            async with open_client(url, "bob", resume={"lobby": seen.seq}) as bob:
                await expect(bob, Joined, nick="bob")
                page = await expect(bob, HistoryPage, room="lobby")
                assert [type(e).__name__ for e in page.events] == ["Left", "Topic"]
                assert page.events[-1] == missed
                assert (await expect(bob, Members, room="lobby")).topic == "second"


async def test_the_topic_stays_with_a_room_that_empties(url: str) -> None:
    """On nodes the room's mirror is forgotten when its last member leaves, and the next
    join reads the room back from Redis."""
    with trio.fail_after(10):
        async with open_client(url, "ada", rooms=["quiet"]) as ada:
            await settle_join(ada)
            await _topic(ada, "quiet", "nobody here")
            await ada.part("quiet")
            await skip_until(ada, Left, nick="ada")
        async with open_client(url, "bob", rooms=["quiet"]) as bob:
            await expect(bob, Joined, room="quiet")
            await expect(bob, HistoryPage, room="quiet")
            assert (await expect(bob, Members, room="quiet")).topic == "nobody here"


async def test_who_of_a_room_one_is_not_in_tells_its_topic(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada", rooms=["dev"]) as ada:
            await settle_join(ada)
            await _topic(ada, "dev", "builds")
            async with open_client(url, "bob", rooms=["ops"]) as bob:  # on another node
                await settle_join(bob)
                members = await _members(bob, "dev")
                assert (members.nicks, members.topic) == (["ada"], "builds")


# --- the room list ---------------------------------------------------------------------------

ROOMS = [f"room{n}" for n in range(1, 8)]


async def test_list_pages_through_every_room_with_members_once(url: str) -> None:
    with trio.fail_after(15):
        async with (
            open_client(url, "ada", rooms=ROOMS) as ada,
            open_client(url, "bob", rooms=ROOMS[1:3]) as bob,
            open_client(url, "cy", rooms=["room3", "gone"]) as cy,
        ):
            await _joined_all(ada, 7)
            await _joined_all(bob, 2)
            await _joined_all(cy, 2)
            await _topic(bob, "room2", "second room")
            await cy.part("gone")  # empty now: not listed
            await skip_until(cy, Left, room="gone")

            first = await _rooms(ada, limit=3)
            assert first == Rooms(
                rooms=[
                    RoomInfo(room="room1", members=1),
                    RoomInfo(room="room2", members=2, topic="second room"),
                    RoomInfo(room="room3", members=3),
                ],
                next="room3",
            )
            second = await _rooms(ada, after=first.next, limit=3)
            assert [r.room for r in second.rooms] == ["room4", "room5", "room6"]
            assert second.next == "room6"
            last = await _rooms(ada, after=second.next, limit=3)
            assert (last.rooms, last.next) == ([RoomInfo(room="room7", members=1)], None)

            everything = await _rooms(cy)  # the default page holds them all
            assert [r.room for r in everything.rooms] == ROOMS
            assert everything.next is None
            exact = await _rooms(cy, after="room4", limit=3)  # no more after the page
            assert ([r.room for r in exact.rooms], exact.next) == (ROOMS[4:], None)


async def test_list_limits_are_clamped(url: str) -> None:
    with trio.fail_after(10):
        async with open_client(url, "ada", rooms=["b", "a", "c"]) as ada:
            await _joined_all(ada, 3)
            for limit in (0, -5):
                page = await _rooms(ada, limit=limit)
                assert ([r.room for r in page.rooms], page.next) == (["a"], "a")
            page = await _rooms(ada, after="a", limit=10_000)
            assert ([r.room for r in page.rooms], page.next) == (["b", "c"], None)
            page = await _rooms(ada, after="zzz")
            assert page == Rooms(rooms=[])


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 50])
def test_paging_by_next_visits_every_room_once_in_order(limit: int) -> None:
    names = ["b", "a", "ab", "a-b", "z9", "é", "ω", "日本", "_x", "a.b", "𐐨"]
    listed = [RoomInfo(room=name, members=1) for name in names]
    seen: list[str] = []
    after: str | None = None
    while True:
        page = rooms_page(listed, after, limit)
        assert 1 <= len(page.rooms) <= limit
        seen += [info.room for info in page.rooms]
        if page.next is None:
            break
        assert page.next == page.rooms[-1].room
        after = page.next
    assert seen == sorted(names)


# --- state that outlives the log and the process -------------------------------------


@asynccontextmanager
async def _running(kind: str, config: ServerConfig, tmp_path: Path) -> AsyncIterator[Server]:
    if kind == "nodes":
        async with run_nodes(config) as nodes:
            yield cast(Server, nodes)  # used as a server: its url() is the balancer's
        return
    db = str(tmp_path / "h.sqlite3") if kind == "sqlite" else None
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, replace(config, db_path=db))
        yield server
        server.stop()


@pytest.mark.parametrize("kind", ["memory", "sqlite", pytest.param("nodes", marks=needs_redis)])
async def test_the_topic_outlives_the_retention_of_its_event(kind: str, tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, retention=5)
    with trio.fail_after(15):
        async with (
            _running(kind, config, tmp_path) as server,
            open_client(server.url("tcp"), "ada") as ada,
        ):
            await settle_join(ada)
            await _topic(ada, "lobby", "kept")
            for n in range(12):
                await ada.say("lobby", f"{n}")
                await skip_until(ada, Ack)
            async with open_client(server.url("ws"), "bob") as bob:
                await expect(bob, Joined, nick="bob")
                page = await expect(bob, HistoryPage, room="lobby")
                assert not any(isinstance(e, Topic) for e in page.events)
                assert (await expect(bob, Members, room="lobby")).topic == "kept"


async def test_the_topic_survives_a_restart_with_history_on_disk(tmp_path: Path) -> None:
    """Also past retention: the event is gone from the file, the topic is not."""
    config = replace(TEST_CONFIG, db_path=str(tmp_path / "h.sqlite3"), retention=3)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            async with open_client(server.url("tcp"), "ada", rooms=["dev", "ops"]) as ada:
                await _joined_all(ada, 2)
                await _topic(ada, "dev", "on disk")
                await _topic(ada, "ops", "soon gone")
                await _topic(ada, "ops", "")
                for n in range(5):
                    await ada.say("dev", f"{n}")
                    await skip_until(ada, Ack)
            server.stop()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config)
            async with open_client(server.url("ws"), "bob", rooms=["ops"]) as bob:
                await expect(bob, Joined, room="ops")
                await expect(bob, HistoryPage, room="ops")
                assert (await expect(bob, Members, room="ops")).topic is None
                await bob.who("dev")  # a room read from disk for who alone
                assert await expect(bob, Members) == Members(room="dev", nicks=[], topic="on disk")
                await bob.join("DEV")
                await expect(bob, Joined, room="dev")
                await expect(bob, HistoryPage, room="dev")
                assert (await expect(bob, Members, room="dev")).topic == "on disk"
            server.stop()
