"""``triochat rooms list|purge``: what a harness run or a spammer left in the history.

It works on the server's data file, stopped or running (SQLite WAL). A purge removes
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

from triochat import argtypes
from triochat.protocol import ProtocolError
from triochat.server.store import HistoryStore, RoomSummary, default_db_path

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
        action.add_argument(
            "--db",
            type=argtypes.file_in_existing_folder,
            help=f"the server's data file (default: {default_db_path()})",
        )
    parser.set_defaults(run=run_rooms)


def run_rooms(args: argparse.Namespace) -> int:
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


def _row(room: RoomSummary) -> str:
    active = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(room.last_ts)) if room.last_ts else "-"
    return f"{room.name}\t{room.events} events\tlast seq {room.last_seq}\tlast active {active}"


def _fail(message: str, code: int) -> int:
    print(f"triochat rooms: {message}", file=sys.stderr)
    return code
