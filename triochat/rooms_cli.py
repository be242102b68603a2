"""``triochat rooms list|purge``: what a harness run or a spammer left in the history.

It works on the server's data file, stopped or running (SQLite WAL), or with
``--redis URL`` on the rooms of the nodes sharing that Redis. A purge removes
a room's stored events for good and keeps its last ``seq``, so the room numbers on
after it: a client that resumes it sees a gap, never another past under the same
numbers. A running server keeps a room it holds in memory (one with members, or
recently used) until it frees it or restarts; purge a room nobody is in, or stop
the server first. Exit codes: 0 done, 1 it could not be done (no such room,
unreadable file), 2 bad usage. Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from triochat import argtypes
from triochat.account_cli import data_arguments
from triochat.errors import RedisError
from triochat.protocol import ProtocolError, rules
from triochat.server.redis_url import parse_redis_url
from triochat.server.store import HistoryStore, RoomSummary, default_db_path

if TYPE_CHECKING:
    from triochat.server.redis_bus import Bus

EXIT_FAILED = 1
EXIT_USAGE = 2
RETENTION = 1
"""A purge or a listing reads no events back: any retention will do."""


def add_rooms_parser(commands: argparse._SubParsersAction[argtypes.Parser]) -> None:
    parser = commands.add_parser(
        "rooms",
        help="list stored rooms, or purge one",
        description="List the rooms in the server's data file, or delete a room's stored"
        " events (the server may be running; see docs/operations.md, 'Rooms').",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every stored room: events, last seq, last active")
    purge = actions.add_parser("purge", help="delete ROOM's stored events for good")
    purge.add_argument("room", metavar="ROOM")
    for action in (listing, purge):
        data_arguments(
            action, "the rooms of the nodes sharing this Redis (serve --redis; not a cluster)"
        )
    parser.set_defaults(run=run_rooms)


def run_rooms(args: argparse.Namespace) -> int:
    if args.redis is not None:
        return trio.run(_in_redis, args)
    path = args.db or str(default_db_path())
    if not Path(path).exists():
        return _fail(f"no data file at {path} (--db names another)", EXIT_FAILED)
    try:
        store = HistoryStore(path, RETENTION)
    except sqlite3.Error as exc:
        return _fail(f"cannot open {path}: {exc}", EXIT_FAILED)
    try:
        if args.action == "list":
            for room in store.rooms():
                print(_row(room))
            return 0
        purged = store.purge(args.room)
    except ProtocolError as exc:
        return _fail(f"{args.room!r}: {exc.message}", EXIT_USAGE)
    except sqlite3.Error as exc:
        return _fail(f"{path}: {exc}", EXIT_FAILED)
    finally:
        store.close()
    if not purged.events:
        return _fail(f"{args.room}: no stored events", EXIT_FAILED)
    print(f"{purged.name}: {purged.events} events removed; it numbers on after {purged.last_seq}")
    return 0


async def _in_redis(args: argparse.Namespace) -> int:
    """The same two actions on Redis: a room's stream is its history; its meta (last seq,
    epoch) stays, so the room numbers on."""
    from triochat.server.redis_bus import Bus, as_text
    from triochat.server.relay import RoomKeys

    try:
        bus = await Bus.connect(parse_redis_url(args.redis), cluster=False)
    except RedisError as exc:
        return _fail(str(exc), EXIT_FAILED)
    try:
        if args.action == "list":
            for room in await _redis_rooms(bus):
                print(_row(room))
            return 0
        keys = RoomKeys.of(rules.check_room(args.room))
        name, last = await bus.command("HMGET", keys.meta, "n", "s")
        events = int(await bus.command("XLEN", keys.log))
        if not events:
            return _fail(f"{args.room}: no stored events", EXIT_FAILED)
        await bus.command("DEL", keys.log)
        shown = as_text(name) or args.room
        print(f"{shown}: {events} events removed; it numbers on after {as_text(last)}")
        return 0
    except ProtocolError as exc:
        return _fail(f"{args.room!r}: {exc.message}", EXIT_USAGE)
    except RedisError as exc:
        return _fail(str(exc), EXIT_FAILED)
    finally:
        await bus.close()


async def _redis_rooms(bus: Bus) -> list[RoomSummary]:
    from triochat.server.redis_bus import as_text
    from triochat.server.relay import RoomKeys

    rooms, cursor = [], "0"
    while True:
        cursor, metas = await bus.command("SCAN", cursor, "MATCH", "tc:{r:*}:m", "COUNT", "500")
        for meta in metas:
            keys = RoomKeys.of_meta(as_text(meta))
            name, last = await bus.command("HMGET", keys.meta, "n", "s")
            events = int(await bus.command("XLEN", keys.log))
            newest = await bus.command("XREVRANGE", keys.log, "+", "-", "COUNT", "1")
            rooms.append(RoomSummary(as_text(name), events, int(as_text(last) or 0), _ts(newest)))
        cursor = as_text(cursor)
        if cursor == "0":
            return sorted(rooms, key=lambda room: rules.room_key(room.name))


class _Stamped(msgspec.Struct):
    ts: float = 0.0


def _ts(newest: Any) -> float:
    """The ``ts`` of the newest event, from ``XREVRANGE … COUNT 1`` (id → [[field, line]])."""
    if not newest:
        return 0.0
    fields = next(iter(newest.values())) if isinstance(newest, dict) else newest[0][1]
    try:
        return msgspec.json.decode(fields[0][1], type=_Stamped).ts
    except msgspec.DecodeError:
        return 0.0


def _row(room: RoomSummary) -> str:
    active = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(room.last_ts)) if room.last_ts else "-"
    return f"{room.name}\t{room.events} events\tlast seq {room.last_seq}\tlast active {active}"


def _fail(message: str, code: int) -> int:
    print(f"triochat rooms: {message}", file=sys.stderr)
    return code
