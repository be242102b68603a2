"""Durable history: room events in SQLite, written in groups, before anyone hears of them.

Theory of operation
-------------------
The hub assigns each room event its ``seq`` and holds every delivery that
follows it (see :class:`triochat.server.hub.Hub`). :func:`run_committer` is
one task: it waits until something is held, takes *all* unsaved rows, writes
them in one transaction on a worker thread, then releases the held
deliveries. While one transaction runs, new events pile up and go together in
the next: the busier the server, the bigger each group, so persistence costs a
thread hop and an fsync-free WAL append per *group*, not per message.

Because an ``ack`` is a delivery like any other, a client is acknowledged
only after its message is in the WAL: a process crash (even SIGKILL) loses
nothing that was acknowledged, and since a group is one transaction, it lands
whole or not at all, so ``seq`` has no holes. (``synchronous=NORMAL``: an
OS crash or power cut may lose the last groups; see docs/operations.md.)

Retention is enforced in the same transaction, on the worker thread, once per
``TRIM_EVERY`` events of a room: the hub never waits for it.

Start-up reads nothing but the file's identity: a room is read back when it is
first joined (and again after the hub freed it), by :class:`RoomLoader`, on a
connection of its own, so the number of rooms on disk costs neither start-up
time nor memory. A room whose stored events cannot be served whole (a ``seq``
gap, a line that is not a JSON event) is served from after the damage, with a
warning naming the statement that repairs it.

A room's topic is state beside its events: ``meta`` holds it under
``topic:<room key>``, written in the transaction that saves its ``topic`` event,
so trimming the event away (retention) keeps the topic, and a room read back
(after a restart, or after the hub freed it) has it again.

Rooms by identity
-----------------
Events are stored under the room's name (as shown on the wire), but a room's
identity is its key (:func:`rules.room_key`): look-alike names are one room. The
``rooms`` table maps each key to the one name its events are stored under; a
room is read by key, so a join by any look-alike finds it. Keys depend on the
Unicode data (:data:`rules.KEY_VERSION`): when that changes (and on the first
open of a file made before rooms had keys) the table is rebuilt from the names
in ``events``. ASCII names were stored lowercased, which is still their
canonical name, so their history is served as before. If two stored rooms now
share a key (``mode`` and ``rnode``), the most recently active one is served and
a warning names the other, whose events stay in the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import msgspec
import trio

from triochat.errors import StoreError
from triochat.protocol import rules
from triochat.server.hub import Hub, Row
from triochat.server.outbox import Flusher

log = logging.getLogger(__name__)

TRIM_EVERY = 256
"""Trim a room once per this many of its events, not in every group.

One DELETE of 256 rows costs about what one of 32 does, and trimming in every
group was a fifth of each commit. The file then holds up to ``TRIM_EVERY - 1``
events more than ``retention`` per room; :meth:`HistoryStore.load` reads only the
newest ``retention``, so nobody sees the difference.
"""

CHECKPOINT_PAGES = 200
"""Copy the WAL into the database every this many pages (SQLite's default: 1000).

SQLite checkpoints inside the COMMIT that crosses the mark, so the group being
saved waits for it, about 10 µs per page plus an fsync. At 1000 pages under load
that is a 10-13 ms stall about once a second, which set the p99 of every
durable shape in the bench; at 200 it is 3-4 ms, for ~30 µs more per commit
on average (measured on 32-row groups).
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    ts   REAL NOT NULL,
    line BLOB NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    key  TEXT PRIMARY KEY,
    name TEXT NOT NULL
) WITHOUT ROWID;
"""


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/triochat/history.sqlite3`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "triochat" / "history.sqlite3"


class HistoryStore:
    """The SQLite file. Blocking: call it from a worker thread, one call at a time."""

    def __init__(self, path: Path | str, retention: int) -> None:
        self.path = path
        self._retention = retention
        self.commits = 0
        """Groups written so far, and the seconds they took (metrics)."""
        self.commit_seconds = 0.0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
        self._db.executescript(SCHEMA)
        self._index_rooms()
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        """Loads rooms while the committer writes on ``_db`` (WAL lets both go at once)."""

    def server_id(self) -> str:
        """This database's identity, made on first use and kept for its lifetime."""
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('server_id', ?)", (uuid.uuid4().hex,))
        (value,) = self._db.execute("SELECT value FROM meta WHERE key = 'server_id'").fetchone()
        return str(value)

    def _index_rooms(self) -> None:
        """Make the ``rooms`` table match :data:`rules.KEY_VERSION` (see the module docstring).

        Runs once per file and key version: it reads every room's name and last
        activity, so it costs a scan of ``events`` that one time only.
        """
        found = self._db.execute("SELECT value FROM meta WHERE key = 'room_keys'").fetchone()
        if found is not None and found[0] == rules.KEY_VERSION:
            return
        names = self._db.execute(
            "SELECT room FROM events GROUP BY room ORDER BY MAX(ts) DESC, room"
        ).fetchall()
        with self._transaction():
            self._db.execute("DELETE FROM rooms")
            for (name,) in names:
                key = rules.room_key(name)
                kept = self._db.execute("SELECT name FROM rooms WHERE key = ?", (key,)).fetchone()
                if kept is None:
                    self._db.execute("INSERT INTO rooms VALUES (?, ?)", (key, name))
                else:
                    log.warning(
                        "history database %s: rooms %r and %r now count as one (their names look"
                        " alike); serving %r, the more recently active; %r's events stay in the"
                        " file",
                        self.path,
                        kept[0],
                        name,
                        kept[0],
                        name,
                    )
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('room_keys', ?)", (rules.KEY_VERSION,)
            )

    def stored_name(self, room: str) -> str:
        """The name the room ``room`` (a canonical name) is stored under: that of
        its key if stored, else ``room`` itself."""
        found = self._reader.execute(
            "SELECT name FROM rooms WHERE key = ?", (rules.room_key(room),)
        ).fetchone()
        return room if found is None else str(found[0])

    def read_room(self, room: str) -> Past:
        """The room ``room`` names (by key, see :meth:`stored_name`): its last
        ``retention`` events, oldest first, the ``seq`` it ended at, and its name.

        Only an unbroken run of JSON events is served: if the newest events are
        preceded by a gap or a line that is not a JSON event, the run starts
        after it, and a warning says how to repair the file.
        """
        room = self.stored_name(room)
        topic = self._topic(room)
        query = "SELECT seq, ts, line FROM events WHERE room = ? ORDER BY seq DESC LIMIT ?"
        newest_first: list[Row] = []
        for seq, ts, line in self._reader.execute(query, (room, self._retention)):
            if newest_first and seq != newest_first[-1].seq - 1:
                log.warning(self._damaged(room, seq, f"has no event {seq + 1} after {seq}"))
                break
            if not _is_event(line):
                log.warning(self._damaged(room, seq, f"event {seq} is not a JSON event"))
                break
            newest_first.append(Row(room, seq, ts, bytes(line)))
        if newest_first:
            return Past(newest_first[::-1], newest_first[0].seq, room, topic)
        (last,) = self._reader.execute(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events WHERE room = ?), 0),"
            " COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0))",
            (room, _floor_key(room)),
        ).fetchone()
        return Past([], int(last), room, topic)

    def _topic(self, room: str) -> str | None:
        found = self._reader.execute(
            "SELECT value FROM meta WHERE key = ?", (_topic_key(room),)
        ).fetchone()
        return None if found is None else str(found[0])

    def rooms(self) -> list[RoomSummary]:
        """Every stored room: its name, events kept, last seq and last activity."""
        query = (
            "SELECT rooms.name, COUNT(events.seq), COALESCE(MAX(events.seq), 0),"
            " COALESCE(MAX(events.ts), 0) FROM rooms LEFT JOIN events ON events.room = rooms.name"
            " GROUP BY rooms.name ORDER BY rooms.key"
        )
        return [RoomSummary(*row) for row in self._reader.execute(query)]

    def purge(self, room: str) -> RoomSummary:
        """Delete every stored event of ``room`` (by key); what it held before.

        The room's last ``seq`` is kept (``meta``), so the room numbers on after it
        when it is used again, and a client resuming it sees a gap rather than a
        different past under the same numbers."""
        name = self.stored_name(rules.check_room(room))
        with self._transaction():
            count, last, ts = self._db.execute(
                "SELECT COUNT(seq), COALESCE(MAX(seq), 0), COALESCE(MAX(ts), 0) FROM events"
                " WHERE room = ?",
                (name,),
            ).fetchone()
            self._db.execute("DELETE FROM events WHERE room = ?", (name,))
            if last:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (_floor_key(name), str(last))
                )
        return RoomSummary(name, count, last, ts)

    def load(self) -> dict[str, list[Row]]:
        """Every room's retained events (for tests and tools: the server loads lazily)."""
        rooms = [room for (room,) in self._reader.execute("SELECT name FROM rooms")]
        return {room: self.read_room(room).rows for room in rooms}

    def _damaged(self, room: str, upto: int, what: str) -> str:
        """One line for a room whose stored events cannot all be served, with the way out.

        Dropping the room's events up to ``upto`` leaves the unbroken run that is
        served; its clients lose nothing more than they already do.
        """
        quoted = room.replace("'", "''")
        return (
            f"history database {self.path}: room {room!r} {what}; serving its events after"
            f' {upto}; to drop the rest for good, run: sqlite3 {self.path} "DELETE FROM events'
            f" WHERE room = '{quoted}' AND seq <= {upto}\""
        )

    def write(self, rows: Iterable[Row], topics: dict[str, str] | None = None) -> None:
        """Save ``rows``, the rooms' ``topics`` set meanwhile ("" cleared), and trim the
        rooms due a trim, in one transaction.

        Raises :class:`StoreError` if the database cannot take them (disk full,
        I/O error); the transaction is then rolled back whole.
        """
        due: dict[str, int] = {}
        named: set[str] = set()
        began = time.perf_counter()
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?)", rows_iter(rows, due, named)
                )
                # The hub holds one room per key, so a new key's name is its first writer's.
                self._db.executemany(
                    "INSERT OR IGNORE INTO rooms VALUES (?, ?)",
                    [(rules.room_key(room), room) for room in named],
                )
                self._db.executemany(
                    "DELETE FROM events WHERE room = ? AND seq <= ?",
                    [(room, seq - self._retention) for room, seq in due.items()],
                )
                self._save_topics(topics or {})
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save history to {self.path}: {exc}") from None
        self.commits += 1
        self.commit_seconds += time.perf_counter() - began

    def _save_topics(self, topics: dict[str, str]) -> None:
        """A topic is room state beside the events, so trimming them never loses it."""
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(_topic_key(room), text) for room, text in topics.items() if text],
        )
        self._db.executemany(
            "DELETE FROM meta WHERE key = ?",
            [(_topic_key(room),) for room, text in topics.items() if not text],
        )

    def close(self) -> None:
        self._reader.close()
        self._db.close()

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db


def rows_iter(rows: Iterable[Row], due: dict[str, int], named: set[str]) -> Iterable[Row]:
    """``rows`` as they are, noting each room due a trim and its newest seq on the way,
    and every room's name in ``named``.

    A room is due when one of its rows has a seq that is a multiple of
    ``TRIM_EVERY``; seqs are consecutive, so that happens once per ``TRIM_EVERY``
    events of the room, whatever the group sizes.
    """
    for row in rows:
        named.add(row.room)
        if row.room in due or row.seq % TRIM_EVERY == 0:
            due[row.room] = row.seq
        yield row


def _is_event(line: bytes) -> bool:
    """Whether a stored line is a JSON object, as every room event is (else it would be
    served raw inside a ``history`` page, breaking it for every client)."""
    try:
        return isinstance(msgspec.json.decode(line), dict)
    except msgspec.DecodeError:
        return False


def _floor_key(room: str) -> str:
    """The ``meta`` key of the last ``seq`` of a room whose events were purged."""
    return f"floor:{rules.room_key(room)}"


def _topic_key(room: str) -> str:
    """The ``meta`` key of a room's current topic (absent: none)."""
    return f"topic:{rules.room_key(room)}"


class RoomSummary(NamedTuple):
    """A stored room, as ``triochat rooms list`` shows it."""

    name: str
    events: int
    last_seq: int
    last_ts: float


class Past(NamedTuple):
    """A room as the store has it: its retained events, the ``seq`` it ended at, the
    name it is stored under (a look-alike of the name asked for, maybe), and its topic."""

    rows: list[Row]
    last_seq: int
    name: str
    topic: str | None = None


class Opened(NamedTuple):
    store: HistoryStore
    server_id: str


async def open_store(path: Path | str, retention: int) -> Opened:
    """Open (or create) the store at ``path``; rooms are read later, as they are joined."""

    def _open() -> Opened:
        store = HistoryStore(path, retention)
        return Opened(store, store.server_id())

    try:
        return await trio.to_thread.run_sync(_open)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open history database {path}: {exc}") from None


class RoomLoader:
    """Reads rooms the hub does not hold back into it before they are joined.

    One load at a time, on the store's reading connection, in a worker thread.
    The rooms are pinned in the hub meanwhile (see :meth:`Hub.pinned`), and put
    in without a checkpoint between the load's end and the caller's join.
    """

    def __init__(
        self, hub: Hub, store: HistoryStore, on_failure: Callable[[StoreError], None]
    ) -> None:
        self._hub = hub
        self._store = store
        self._lock = trio.Lock()
        self._on_failure = on_failure

    async def load(self, names: Iterable[str]) -> None:
        """Make sure every room of ``names`` that exists on disk is in the hub.

        Shielded: a join must not be lost half done (the read cannot be cut
        short anyway; a worker thread runs to its end). If the database cannot
        be read, ``on_failure`` hears of it and :class:`StoreError` is raised.
        """
        missing = self._hub.unloaded(names)
        if not missing:
            return
        with trio.CancelScope(shield=True), self._hub.pinned(missing):
            async with self._lock:
                pasts = await trio.to_thread.run_sync(self._read, missing)
        for past in pasts:
            self._hub.restore(past.name, past.rows, past.last_seq, past.topic)

    def _read(self, names: list[str]) -> list[Past]:
        try:
            return [self._store.read_room(name) for name in names]
        except sqlite3.Error as exc:
            error = StoreError(f"cannot read history from {self._store.path}: {exc}")
        trio.from_thread.run_sync(self._on_failure, error)
        raise error


async def run_committer(hub: Hub, store: HistoryStore, flusher: Flusher) -> None:
    """Save and release held deliveries forever (see the module docstring).

    Like the flusher, the committer lets a burst settle (:meth:`Flusher.settle`)
    between the first held event and taking the group, so the rest of the burst
    already on its way joins it: each group then pays SQLite's fixed cost (BEGIN,
    COMMIT, the WAL write; about 100 µs) once per burst instead of about twice.

    The ``flusher`` is told while a group is being written (see
    :meth:`Flusher.committing`), so a group that arrives while the one before
    it is saved does not split every later burst in two.
    """
    wakeup = trio.lowlevel.ParkingLot()

    def wake() -> None:
        wakeup.unpark_all()

    hub.on_held = wake
    try:
        while True:
            while not hub.holding:
                await wakeup.park()
            await flusher.settle()
            with flusher.committing():
                await commit_once(hub, store)
    finally:
        hub.on_held = lambda: None


async def commit_once(hub: Hub, store: HistoryStore) -> None:
    """One group: write what is unsaved, then deliver what waited for it.

    If the write fails (:class:`StoreError`), nothing is released: every
    delivery stays held, since nobody may hear of an event that is not saved.
    """
    rows, held = hub.take_unsaved()
    topics = hub.take_topics()
    if rows:
        await trio.to_thread.run_sync(store.write, rows, topics)
    hub.release(held)
