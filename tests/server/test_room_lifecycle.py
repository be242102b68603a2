"""Rooms have a lifecycle: an empty room is freed when memory is wanted, its ``seq`` never goes
back, and with a history database it comes back whole on the next join."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import settle_join, skip_until
from tests.server.test_hub import Inbox
from triochat.client import open_client
from triochat.protocol import decode_server
from triochat.protocol.events import HistoryPage, Joined, LeftReason, Members, Message
from triochat.server import Server, serve
from triochat.server.config import ServerConfig
from triochat.server.hub import ROOM_COST, Hub, Member
from triochat.server.roomlog import LINE_COST

BUDGET = 40 * ROOM_COST


def _member(hub: Hub, nick: str) -> tuple[Inbox, Member]:
    inbox = Inbox(hub)
    inbox.member = hub.attach(inbox, nick)
    return inbox, inbox.member


def _seqs(inbox: Inbox, room: str) -> list[int]:
    events = [decode_server(line) for line in inbox.lines]
    return [e.seq for e in events if isinstance(e, Joined | Message) and e.room == room]


def test_empty_rooms_are_freed_least_recently_used_first_within_the_budget() -> None:
    hub = Hub(ServerConfig(history_bytes=BUDGET))
    _, ada = _member(hub, "ada")
    for n in range(200):
        hub.join(ada, f"r{n}")
        hub.part(ada, f"r{n}")
        assert hub.history_bytes <= BUDGET
    assert hub.rooms_in_memory < 40
    assert hub.unloaded(["r0"]) == [], "without a store nothing is ever loaded"
    kept = hub.rooms_in_memory
    hub.join(ada, "r199")  # the most recent is still there: its seq goes on
    assert hub.rooms_in_memory == kept


def test_a_room_made_again_after_it_was_freed_numbers_on_after_it() -> None:
    hub = Hub(ServerConfig(history_bytes=BUDGET))
    inbox, ada = _member(hub, "ada")
    hub.join(ada, "old")
    for n in range(5):
        hub.say(ada, "old", f"{n}")
    hub.part(ada, "old")  # seq 7 was its last
    for n in range(100):  # push it out
        hub.join(ada, f"r{n}")
        hub.part(ada, f"r{n}")
    inbox.lines.clear()
    hub.join(ada, "old")
    (first, *_) = _seqs(inbox, "old")
    assert first > 7, "a resuming client must see a gap, not another past under old numbers"


def test_rooms_with_members_never_go_but_the_largest_are_trimmed_to_the_budget() -> None:
    budget = 3 * ROOM_COST + 60 * (200 + LINE_COST)
    hub = Hub(ServerConfig(history_bytes=budget))
    inbox, ada = _member(hub, "ada")
    for room in ("a", "b", "c"):
        hub.join(ada, room)
    for n in range(100):
        hub.say(ada, "a", f"{n:03}" + "x" * 100)
        assert hub.history_bytes <= budget
    assert hub.rooms_in_memory == 3
    inbox.lines.clear()
    hub.history(ada, "a", None, 500)
    (page,) = (decode_server(line) for line in inbox.lines)
    assert isinstance(page, HistoryPage)
    seqs = [event.seq for event in page.events]
    assert 10 < len(seqs) < 100
    assert seqs == list(range(seqs[0], 102)), "the newest are kept, unbroken"


def test_max_rooms_counts_rooms_with_members_only() -> None:
    hub = Hub(ServerConfig(max_rooms=2))
    _, ada = _member(hub, "ada")
    for n in range(10):  # each emptied before the next: never more than one open
        hub.join(ada, f"r{n}")
        hub.part(ada, f"r{n}")
    hub.join(ada, "a")
    hub.join(ada, "b")
    assert hub.admit(["a", "c"]) == (["a"], ["c"])


def test_a_stored_room_is_not_freed_before_its_events_are_saved() -> None:
    hub = Hub(ServerConfig(history_bytes=ROOM_COST), durable=True)
    _, ada = _member(hub, "ada")
    hub.restore("lobby", [], 0)
    hub.join(ada, "lobby")
    hub.say(ada, "lobby", "unsaved")
    hub.detach(ada, LeftReason.QUIT)  # empty, over budget, but its events are unsaved
    assert hub.unloaded(["lobby"]) == []
    rows, held = hub.take_unsaved()
    assert [row.seq for row in rows] == [1, 2, 3]
    assert hub.unloaded(["lobby"]) == [], "still not saved while the commit is under way"
    hub.release(held)
    assert hub.unloaded(["lobby"]) == ["lobby"], "saved: it may go, and a load brings it back"


def test_a_stored_room_is_not_freed_while_it_is_being_loaded() -> None:
    hub = Hub(ServerConfig(history_bytes=ROOM_COST), durable=True)
    _, ada = _member(hub, "ada")
    with hub.pinned(["lobby"]):
        hub.restore("lobby", [], 0)
        hub.join(ada, "lobby")
        hub.part(ada, "lobby")
        hub.release(hub.take_unsaved()[1])
        assert hub.unloaded(["lobby"]) == []
    hub.join(ada, "other")
    hub.part(ada, "other")  # the next change frees what is no longer pinned
    hub.release(hub.take_unsaved()[1])
    assert hub.unloaded(["lobby"]) == ["lobby"]


async def test_a_freed_stored_room_comes_back_whole_on_the_next_join(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = replace(TEST_CONFIG, db_path=str(tmp_path / "h.sqlite3"), history_bytes=8 * ROOM_COST)
    server: Server = await nursery.start(serve, config)
    with trio.fail_after(20):
        async with open_client(server.url("tcp"), "ada", rooms=["keep"]) as ada:
            await settle_join(ada)
            for n in range(5):
                await ada.say("keep", f"kept {n}", id=n)
            await skip_until(ada, Message, text="kept 4")
            await ada.part("keep")
            for n in range(30):  # more rooms than the budget holds: "keep" is freed
                await ada.join(f"r{n}")
                await ada.part(f"r{n}")
            await ada.who(None)  # a round trip: every part above is done
            await skip_until(ada, Members, room=None)
        assert server.hub.unloaded(["keep"]) == ["keep"]
        async with open_client(server.url("tcp"), "bob", rooms=["keep"]) as bob:
            joined = await skip_until(bob, Joined, nick="bob")
            page = await skip_until(bob, HistoryPage, room="keep")
    assert joined.seq == 8, "ada's join, 5 messages, her part: bob's join is the 8th"
    assert [e.seq for e in page.events] == list(range(1, 8))
    assert [e.text for e in page.events if isinstance(e, Message)] == [
        f"kept {n}" for n in range(5)
    ]


def test_a_room_joined_again_after_it_emptied_is_kept_while_it_has_members() -> None:
    hub = Hub(ServerConfig(history_bytes=BUDGET))
    inbox, ada = _member(hub, "ada")
    hub.join(ada, "home")
    hub.part(ada, "home")  # idle for a moment
    hub.join(ada, "home")
    for n in range(100):  # churn far past the budget
        hub.join(ada, f"r{n}")
        hub.part(ada, f"r{n}")
    hub.say(ada, "home", "still here")
    assert _seqs(inbox, "home")[-1] == 4, "joined, left, joined, then this message"
