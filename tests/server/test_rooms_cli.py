"""``triochat rooms list|purge``: a spammed room's stored events go, its seq numbers
do not go back, and every other room stays as it was."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from tests.redisd import needs_redis
from tests.server.conftest import TEST_CONFIG
from tests.server.helpers import fill, settle_join, skip_until
from tests.server.nodes import run_nodes
from triochat import cli
from triochat.client import open_client
from triochat.protocol.events import HistoryPage, Joined
from triochat.server import Server, ServerConfig, serve


async def _run(config: ServerConfig, nick: str, room: str, says: int) -> int:
    """Start a server, say ``says`` things in ``room``, stop it; the last seq seen."""
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        async with open_client(server.url("tcp"), nick, rooms=[room]) as client:
            await settle_join(client)
            await fill(client, room, says, "buy now")
        server.stop()
    return says + 1  # its joined, then its messages


async def _rejoin(config: ServerConfig, room: str) -> tuple[Joined, HistoryPage]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        async with open_client(server.url("tcp"), "again", rooms=[room]) as client:
            joined = await skip_until(client, Joined, nick="again")
            page = await skip_until(client, HistoryPage)
        server.stop()
    return joined, page


async def test_a_purged_room_keeps_nothing_but_its_numbering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "history.sqlite3"
    config = replace(TEST_CONFIG, db_path=str(db))
    with trio.fail_after(20):
        spam_last = await _run(config, "spammer", "spam", 30)
        await _run(config, "ada", "keep", 2)
    assert cli.main(["rooms", "list", "--db", str(db)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:3] for line in listed] == [
        ["keep", "4 events", "last seq 4"],
        ["spam", f"{spam_last + 1} events", f"last seq {spam_last + 1}"],
    ]
    assert cli.main(["rooms", "purge", "spam", "--db", str(db)]) == 0
    removed = capsys.readouterr().out.strip()
    assert removed == f"spam: {spam_last + 1} events removed; it numbers on after {spam_last + 1}"
    with trio.fail_after(20):
        joined, page = await _rejoin(config, "spam")
        assert joined.seq == spam_last + 2  # on after the purged past, not from 1
        assert page.events == []
        _, kept = await _rejoin(config, "keep")
        assert [event.seq for event in kept.events] == [1, 2, 3, 4]


def test_purging_what_is_not_there_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "history.sqlite3"
    assert cli.main(["rooms", "list", "--db", str(db)]) == 1
    assert capsys.readouterr().err == f"triochat rooms: no data file at {db} (--db names another)\n"
    db.touch()
    assert cli.main(["rooms", "purge", "nothing", "--db", str(db)]) == 1
    assert capsys.readouterr().err == "triochat rooms: nothing: no stored events\n"
    assert cli.main(["rooms", "purge", "bad room!", "--db", str(db)]) == 2
    assert capsys.readouterr().err.startswith("triochat rooms: 'bad room!': ")


@needs_redis
async def test_rooms_in_redis_are_listed_and_purged_and_number_on() -> None:
    """As a separate process, as an operator runs it (and as the Redis client library
    wants: one Trio run per process)."""
    async with run_nodes(TEST_CONFIG, count_=1) as nodes:
        rooms = [sys.executable, "-m", "triochat", "rooms"]
        redis = ["--redis", nodes.redis.url]
        with trio.fail_after(30):
            async with open_client(nodes.url("tcp"), "spammer", rooms=["spam"]) as spammer:
                await settle_join(spammer)
                await fill(spammer, "spam", 5, "buy now")
            listed = await trio.run_process([*rooms, "list", *redis], capture_stdout=True)
            assert [line.split("\t")[:3] for line in listed.stdout.decode().splitlines()] == [
                ["spam", "7 events", "last seq 7"]
            ]
            purged = await trio.run_process([*rooms, "purge", "spam", *redis], capture_stdout=True)
            assert purged.stdout.decode().strip() == (
                "spam: 7 events removed; it numbers on after 7"
            )
            async with open_client(nodes.url("ws"), "again", rooms=["spam"]) as again:
                joined = await skip_until(again, Joined, nick="again")
                page = await skip_until(again, HistoryPage)
    assert joined.seq == 8
    assert page.events == []
