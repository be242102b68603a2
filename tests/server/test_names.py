"""Names that cannot impersonate, over real sockets: look-alike nicks are taken, look-alike
rooms are one room, deceiving characters are refused, and stored rooms keep their history.

Runs on both transports, with history in memory and in SQLite (tests/server/conftest.py).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import expect, settle_join, skip_until
from triochat.client import open_client
from triochat.errors import Rejected
from triochat.protocol import rules
from triochat.protocol.events import (
    Ack,
    Error,
    HistoryPage,
    Joined,
    Members,
    Message,
    NickChanged,
)
from triochat.server import Server, serve
from triochat.server.store import HistoryStore

ACROSS_NODES = True

TIMEOUT = 10
ACE_IN_CYRILLIC = "\u0430\u0441\u0435"
"""``ace`` spelt in Cyrillic letters: one script, so a valid nick, and ``ace``'s look-alike."""
ACCESS_IN_CYRILLIC = "\u0430\u0441\u0441\u0435\u0455\u0455"


async def _refused(url: str, nick: str) -> str:
    """The code a hello with ``nick`` is refused with."""
    with pytest.raises(Rejected) as caught:
        async with open_client(url, nick):
            pass
    return caught.value.code


@pytest.mark.parametrize(
    ("present", "taker"),
    [
        ("ace", ACE_IN_CYRILLIC),
        ("m", "rn"),
        ("rnax", "max"),
        ("lan", "Ian"),
        ("bob", "b0b"),
        ("Ada", "aDA"),
        ("ada", "\uff41\uff44\uff41"),  # fullwidth
    ],
)
async def test_a_look_alike_of_a_present_nick_is_taken(url: str, present: str, taker: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(url, present):
            assert await _refused(url, taker) == "nick_taken"


@pytest.mark.parametrize(
    "nick",
    [
        "\u0430da",  # a Cyrillic a among Latin letters: mixed scripts
        "ad\u202ea",  # right-to-left override
        "ad\u200da",  # zero-width joiner
        "\x1b[31mada",  # ANSI escape
        "ada\u2066",  # bidi isolate
    ],
)
async def test_deceiving_nicks_are_nick_invalid(url: str, nick: str) -> None:
    with trio.fail_after(TIMEOUT):
        assert await _refused(url, nick) == "nick_invalid"


async def test_a_nick_change_to_a_look_alike_of_a_present_user_is_refused(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(url, "ace") as ace, open_client(url, "eve") as eve:
            await settle_join(ace)
            await settle_join(eve)
            for fake in (ACE_IN_CYRILLIC, "ACE"):
                await eve.nick(fake)
                error = await skip_until(eve, Error)
                assert error.code == "nick_taken"
            await eve.nick("ace\u200b")
            assert (await skip_until(eve, Error)).code == "nick_invalid"
            await eve.nick("Eve")  # one's own case variant is fine
            await skip_until(eve, NickChanged, old="eve", new="Eve")


async def test_display_keeps_what_was_typed_nfkc(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(url, "\uff21da") as ada:  # fullwidth A
            assert ada.welcome is not None
            assert ada.welcome.nick == "Ada"


async def test_a_look_alike_room_name_joins_the_same_room(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(url, "ada", rooms=["access"]) as ada:
            await settle_join(ada)
            async with open_client(url, "bob", rooms=[ACCESS_IN_CYRILLIC, "ACCESS"]) as bob:
                assert bob.welcome is not None
                assert bob.welcome.rooms == ["access"]  # one room, called as it was made
                await expect(bob, Joined, room="access", nick="bob")
                await expect(bob, HistoryPage, room="access")
                await expect(bob, Members, room="access", nicks=["ada", "bob"])
                await skip_until(ada, Joined, room="access", nick="bob")
                await bob.say(ACCESS_IN_CYRILLIC, "same room", id=1)
                await skip_until(bob, Ack, id=1, room="access")
                await skip_until(ada, Message, room="access", text="same room")


async def test_look_alike_rooms_in_one_hello_are_one_new_room(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        wanted = [ACCESS_IN_CYRILLIC, "access", "ACCESS", "lobby"]
        async with open_client(url, "ada", rooms=wanted) as ada:
            assert ada.welcome is not None
            assert ada.welcome.rooms == [ACCESS_IN_CYRILLIC, "lobby"]


async def test_a_deceiving_room_name_is_room_invalid(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(url, "ada") as ada:
            await settle_join(ada)
            for room in ("lob\u202eby", "lob\u200bby", "\x1b[0mlobby", "l\u03bfbby"):
                await ada.join(room)
                assert (await skip_until(ada, Error)).code == "room_invalid"


async def test_text_keeps_newlines_and_tabs_and_refuses_other_controls(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_client(url, "ada") as ada:
            await settle_join(ada)
            await ada.say("lobby", "\x1b[31mred", id="esc")
            error = await skip_until(ada, Error)
            assert (error.code, error.ref) == ("bad_event", "esc")
            await ada.dm("ada", "bell\x07", id="bel")
            error = await skip_until(ada, Error)
            assert (error.code, error.ref) == ("bad_event", "bel")
            await ada.say("lobby", "two\nlines\tand \u202ertl", id="ok")
            message = await skip_until(ada, Message)
            assert message.text == "two\nlines\tand \u202ertl"


# --- rooms on disk -----------------------------------------------------------------------


def _legacy_db(path: Path, rooms: dict[str, float]) -> None:
    """A history file as servers before room keys wrote it: events only, no ``rooms`` table."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE events (room TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,"
            " line BLOB NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID;"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )
        for room, ts in rooms.items():
            line = (
                f'{{"type":"message","room":"{room}","seq":1,"from":"old","text":"in {room}",'
                f'"ts":{ts}}}'
            )
            db.execute("INSERT INTO events VALUES (?, 1, ?, ?)", (room, ts, line.encode()))
        db.commit()


async def _first_page(url: str, room: str) -> tuple[list[str], HistoryPage]:
    async with open_client(url, "reader", rooms=[room]) as reader:
        assert reader.welcome is not None
        await expect(reader, Joined)
        return reader.welcome.rooms, await expect(reader, HistoryPage)


async def test_rooms_stored_before_keys_keep_their_history(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    _legacy_db(db, {"lobby": 1.0, "dev-ops": 2.0})
    config = replace(TEST_CONFIG, db_path=str(db))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            for asked, stored in (("Lobby", "lobby"), ("DEV-OPS", "dev-ops")):
                rooms, page = await _first_page(server.url("tcp"), asked)
                assert rooms == [stored]
                assert [getattr(e, "text", None) for e in page.events] == [f"in {stored}"]
            server.stop()


async def test_a_stored_room_is_found_by_a_look_alike_after_a_restart(tmp_path: Path) -> None:
    config = replace(TEST_CONFIG, db_path=str(tmp_path / "h.sqlite3"))
    with trio.fail_after(TIMEOUT):
        for asked in (ACCESS_IN_CYRILLIC, "access"):  # made in Cyrillic, asked for in Latin
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve, config)
                async with open_client(server.url("tcp"), "ada", rooms=[asked]) as ada:
                    assert ada.welcome is not None
                    assert ada.welcome.rooms == [rules.check_room(ACCESS_IN_CYRILLIC)]
                    await settle_join(ada)
                    await ada.say(asked, f"said as {asked}", id=1)
                    await skip_until(ada, Ack, id=1)
                server.stop()
        stored = HistoryStore(config.db_path or "", 100).load()
        assert list(stored) == [ACCESS_IN_CYRILLIC]


async def test_stored_rooms_that_now_look_alike_serve_the_latest_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "old.sqlite3"
    _legacy_db(db, {"rnode": 1.0, "mode": 2.0})
    config = replace(TEST_CONFIG, db_path=str(db))
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(serve, config)
            rooms, page = await _first_page(server.url("tcp"), "rnode")
            assert rooms == ["mode"]
            assert [getattr(e, "text", None) for e in page.events] == ["in mode"]
            server.stop()
    assert any("'mode' and 'rnode' now count as one" in r.getMessage() for r in caplog.records)


def test_the_room_index_is_rebuilt_when_the_key_version_changes(tmp_path: Path) -> None:
    """Keys depend on the Unicode data: one made under other data must not be trusted."""
    path = tmp_path / "h.sqlite3"
    _legacy_db(path, {"access": 1.0})
    HistoryStore(path, 100).close()  # indexed under today's version
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE rooms SET key = 'stale'")
        db.execute("UPDATE meta SET value = 'older data' WHERE key = 'room_keys'")
        db.commit()
    store = HistoryStore(path, 100)
    try:
        past = store.read_room(ACCESS_IN_CYRILLIC)
        assert (past.name, past.last_seq) == ("access", 1)
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'room_keys'").fetchone() == (
            rules.KEY_VERSION,
        )
