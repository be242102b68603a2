"""The hub: rooms, members, the nick registry, sequence numbers and fan-out.

Theory of operation
-------------------
Everything that affects who is where lives here, and nothing here awaits: the
hub is plain synchronous code called from session tasks. Trio runs one task at
a time, so each call is atomic with respect to every other session, and the
order in which the hub assigns a room's ``seq`` is exactly the order in which
every member receives those events. No locks, no hub task.

Fan-out encodes a room event once and appends the same bytes to every
member's queue with :meth:`Peer.queue`, an unchecked append (a C call per
recipient: this loop is the server's hottest). It then hands the room's member
snapshot to ``on_fanout``; the server's flusher flushes those peers a few
scheduler turns later, once per burst rather than once per event, and a peer
whose queue has passed its bound is evicted then. Lines for one client
(welcome, acks, errors, replays) go through the checked :meth:`Peer.deliver`
instead. Both paths append to the same queue, so each client gets its lines in
emission order.

Evictions found by the hub itself (a full ``deliver``, or the immediate flush
``on_fanout`` does when no flusher is attached) wait until the fan-out loop
finishes, through a work queue, because evicting broadcasts a ``left`` that may
overflow yet another peer. The queue makes that cascade iterative and lets each
peer be evicted exactly once.

Rooms live while they have members. An empty room stays in memory, idle, for
whoever joins next, until the history budget (``history_bytes``) needs its
room: idle rooms are then freed, least recently used first, and only if that
is not enough are the largest rooms' oldest events dropped. A freed room's
``seq`` never goes back: with a store, the room is loaded again, whole, before
its next join (see :meth:`restore`; a room is freed only once its events are
saved, and not while a load of it is under way); without one, its history is
gone and a room made again under its name numbers on after every ``seq`` the
hub has forgotten, so a client resuming it sees a gap rather than a
different past under the same numbers.

The hub knows nothing of trio or sockets, so its rules are tested directly.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from triochat.protocol import ErrorCode, ProtocolError, encode, encode_history, rules
from triochat.protocol.events import (
    Ack,
    DirectMessage,
    Joined,
    Left,
    LeftReason,
    Members,
    Message,
    NickChanged,
    Ref,
    RoomInfo,
    Rooms,
    Topic,
)
from triochat.server.config import ServerConfig
from triochat.server.roomlog import RoomLog

ROOM_COST = 1024
"""What a room takes in memory besides its history (its objects, its name, the
dict slots that hold it): counted against ``history_bytes`` so that many small
rooms are bounded as well as a few large ones."""
LARGE_ROOM = 100
"""Members from which a room's ``joined`` and ``left`` may be written late: a join
storm (or everyone leaving at once) then costs one write per member per flusher
delay, not one per member per join
(see :meth:`triochat.server.outbox.Flusher.mark_presence`)."""
SHED_TO = 0.9
"""Freeing for the history budget goes down to this share of it, so that it
happens once per tenth of the budget written, not on every event."""


class Peer(Protocol):
    """What the hub needs from a connected client: somewhere to put bytes."""

    def queue(self, line: bytes) -> object:
        """Append a room event's line, unchecked; :meth:`flush` checks the bound.

        A closed peer drops what it is given.
        """
        ...

    def flush(self) -> bool:
        """Send what is queued, or hand it to the writer; ``False`` if over the bound."""
        ...

    def deliver(self, line: bytes, *, replay: bool = False) -> bool:
        """Queue one encoded line without blocking; ``False`` means the outbox is full.

        Every line counts against the bound. ``replay`` marks a page of a
        catch-up: once it is written, the peer calls :meth:`Hub.pump` for the next.
        """
        ...

    def evict(self) -> None:
        """Drop this client because it cannot keep up (``slow_consumer``)."""
        ...


@dataclass(eq=False, slots=True)
class Member:
    """One attached client, as the hub sees it. Identity is the object itself."""

    nick: str
    peer: Peer
    rooms: set[str] = field(default_factory=set)
    catch_ups: list[CatchUp] = field(default_factory=list)
    """Joins whose past is still being sent, oldest first (see :meth:`Hub.pump`); a
    list, not a deque: it holds a few entries, and an empty deque weighs 600 bytes."""
    unwritten: int = 0
    """Bytes of pages :meth:`Hub.pump` sent that the outbox has not yet reported written."""
    queue: Callable[[bytes], object] = field(init=False, repr=False)
    """``peer.queue``, looked up once: fan-out calls it for every recipient."""
    flush: Callable[[], bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.queue = self.peer.queue
        self.flush = self.peer.flush

    def evict(self) -> None:
        self.peer.evict()

    @property
    def key(self) -> str:
        return rules.nick_key(self.nick)


@dataclass(eq=False)
class Room:
    name: str
    log: RoomLog
    members: dict[str, Member] = field(default_factory=dict)
    """Keyed by :func:`rules.nick_key`, in join order. Call :meth:`changed` after a change."""
    catching_up: set[Member] = field(default_factory=set)
    """Members whose past is still being sent: they get this room's events from its
    log until they are level, and only then from fan-out."""
    _recipients: tuple[Member, ...] | None = None
    unsaved: int = 0
    """The store generation of its newest event (see :meth:`Hub.release`): until that
    generation is saved the room may not be freed, or a load could miss it."""
    topic: str | None = None
    """Its current topic: room state, kept apart from the log so that trimming the
    log never loses it (a store keeps it with the room's meta)."""

    def nicks(self) -> list[str]:
        return [m.nick for m in self.members.values()]

    @property
    def recipients(self) -> tuple[Member, ...]:
        """The members, as one tuple shared by every fan-out until membership changes.

        Sharing it lets the flusher flush a room once per burst however many
        events the burst held; being immutable, it also serves as the
        recipients of a held delivery.
        """
        if self._recipients is None:
            catching = self.catching_up
            members = self.members.values()
            self._recipients = (
                tuple(m for m in members if m not in catching) if catching else tuple(members)
            )
        return self._recipients

    def changed(self) -> None:
        self._recipients = None

    def members_event(self) -> bytes:
        """``members`` of this room, its topic included."""
        return encode(Members(room=self.name, nicks=self.nicks(), topic=self.topic))


@dataclass(eq=False)
class CatchUp:
    """One join's past being sent a page at a time; ``pages`` returns False if it fell behind."""

    room: Room
    pages: Generator[bytes, None, bool]


class Row(NamedTuple):
    """One room event as the store keeps it."""

    room: str
    seq: int
    ts: float
    line: bytes


Held = tuple[tuple["Member", ...], bytes, bool, bool, str | None]
"""A delivery waiting for a commit: recipients, encoded line, replay flag, room event
flag, and the room whose presence it is when that may be flushed late (see
:data:`LARGE_ROOM`)."""


def newest_within(lines: list[bytes], budget: int) -> list[bytes]:
    """The newest of ``lines`` whose sizes add up to at most ``budget`` (always the newest one)."""
    total = 0
    for start in range(len(lines) - 1, -1, -1):
        total += len(lines[start])
        if total > budget and start < len(lines) - 1:
            return lines[start + 1 :]
    return lines


def _now() -> float:
    return round(time.time(), 3)


def rooms_page(listed: Iterable[RoomInfo], after: str | None, count: int) -> Rooms:
    """The first ``count`` of ``listed`` by name (plain string order) after ``after``,
    and ``next`` exactly when more follow."""
    wanted = (info for info in listed if after is None or info.room > after)
    first = heapq.nsmallest(count + 1, wanted, key=lambda info: info.room)
    page = first[:count]
    return Rooms(rooms=page, next=page[-1].room if len(first) > count else None)


class Hub:
    """Rooms and members of one server.

    With ``durable`` set, room events are not delivered until a committer (see
    :mod:`triochat.server.store`) has saved them: it takes them with
    :meth:`take_unsaved`, writes them, then calls :meth:`release`. Whatever is
    emitted while something is held waits behind it, so each client still sees
    events in emission order, and nobody hears of an event that a crash could
    lose. ``on_held`` is called when the held list goes from empty to non-empty.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        durable: bool = False,
        server_id: str | None = None,
    ) -> None:
        self._config = config
        self.server_id = server_id or uuid.uuid4().hex
        """Names this history; announced in ``welcome`` (see :class:`Welcome`)."""
        self._durable = durable
        self._unsaved: list[Row] = []
        self._unsaved_topics: dict[str, str] = {}
        """Room name to the topic set since the last commit ("" when cleared)."""
        self._held: list[Held] = []
        self._in_flight = False
        """A group is being written: everything emitted meanwhile queues behind it."""
        self.on_held: Callable[[], None] = lambda: None
        self.on_fanout: Callable[[tuple[Member, ...]], None] = self._flush_now
        """Told the recipients after each fan-out; by default they are flushed at once."""
        self.on_presence: Callable[[str, tuple[Member, ...]], None] = self._presence_now
        """Told a large room's recipients after a ``joined`` or ``left``, with the room's
        name: the flusher may write them later, once for all that room's presence meanwhile."""
        self._rooms: dict[str, Room] = {}
        self._idle: dict[str, Room] = {}
        """The rooms without members, least recently emptied first."""
        self._names: dict[str, str] = {}
        """:func:`rules.room_key` of every room in :attr:`_rooms` to its name. Invariant:
        one room per key, so look-alike names (``access`` in Cyrillic letters, and in
        Latin) are one room, called by the name it was made (or stored) with."""
        self._history_bytes = 0
        """What the rooms in memory take, by :data:`ROOM_COST` and their logs."""
        self._seq_floor = 0
        """The highest ``seq`` of a room freed without a store: rooms start after it."""
        self._pinned: Counter[str] = Counter()
        """Rooms being loaded from the store (see :meth:`pinned`), not to be freed meanwhile."""
        self._generation = 1
        """The store generation of events not yet taken by the committer."""
        self._saved = 0
        """The newest store generation known saved."""
        self._members: dict[str, Member] = {}
        self.deliveries = 0
        """Lines queued for members so far, a room event's once per recipient (metrics)."""
        self._evictions: deque[Member] = deque()
        self._evicting = False

    # --- introspection ------------------------------------------------------

    def __len__(self) -> int:
        """How many clients are attached."""
        return len(self._members)

    def canonical(self, room: str) -> str:
        """The name of the room ``room`` means, ``room_invalid`` if it is no room name.

        That is the name of the room in memory with the same key, if there is one,
        else ``room``'s canonical form (:func:`rules.check_room`). A room on disk
        under a look-alike name is found by the store (see ``RoomLoader``).
        """
        name = rules.check_room(room)
        return self._names.get(rules.room_key(name), name)

    def is_large(self, room: str) -> bool:
        """Whether ``room`` is in memory with at least :data:`LARGE_ROOM` members (a
        name that is no room name is not: its join is refused)."""
        try:
            found = self._rooms.get(self.canonical(room))
        except ProtocolError:
            return False
        return found is not None and len(found.members) >= LARGE_ROOM

    def room_nicks(self, room: str) -> list[str]:
        found = self._rooms.get(room)
        return found.nicks() if found else []

    @property
    def rooms_in_memory(self) -> int:
        return len(self._rooms)

    @property
    def active_rooms(self) -> int:
        """Rooms with members."""
        return self._active

    @property
    def history_bytes(self) -> int:
        """What the rooms in memory take (see :data:`ROOM_COST`), against ``history_bytes``."""
        return self._history_bytes

    # --- attach / detach ----------------------------------------------------

    async def reserve(self, nick: str) -> None:
        """Make sure ``nick`` may be attached or renamed to. One server decides that in
        :meth:`attach` and :meth:`rename` alone; nodes sharing rooms ask Redis first
        (see :class:`triochat.server.shared.SharedHub`)."""

    def unreserve(self, nick: str) -> None:
        """Give back a reserved ``nick`` that was not attached or renamed to after all."""

    async def released(self, member: Member) -> None:
        """Return once a detached ``member``'s nick is free for anyone: at once on one
        server; nodes sharing rooms wait for Redis (the session's goodbye waits too, so a
        client that reconnects after seeing it go finds its nick free)."""

    def attach(self, peer: Peer, nick: str) -> Member:
        """Register ``nick`` for ``peer``; ``nick_invalid`` or ``nick_taken`` if it can't be."""
        nick = rules.check_nick(nick)
        key = rules.nick_key(nick)
        if key in self._members:
            raise ProtocolError(ErrorCode.NICK_TAKEN, f"the nick {nick!r} is taken")
        member = Member(nick=nick, peer=peer)
        self._members[key] = member
        return member

    def detach(self, member: Member, reason: LeftReason) -> None:
        """Remove ``member`` from every room (``left`` with ``reason``) and free its nick.

        Idempotent, so every path that ends a session may call it.
        """
        if self._members.get(member.key) is not member:
            return
        for name in sorted(member.rooms):
            self._leave(self._rooms[name], member, reason)
        member.catch_ups.clear()
        del self._members[member.key]

    # --- rooms --------------------------------------------------------------

    def join(self, member: Member, room: str, *, resume_after: int | None = None) -> None:
        """Join ``room``: everyone gets ``joined``; the joiner then gets the past and the members.

        With ``resume_after`` the joiner gets every retained event after that
        ``seq`` instead of the recent past, so a reconnecting client has no gap.

        The joiner's own ``joined``, its past, ``members``, and whatever the room
        said meanwhile reach it through :meth:`pump`, a page at a time, from the
        room's log; it gets the room's fan-out once it is level. Every page
        counts against its outbox bound, so a client that does not read holds
        its bound at most, never retention x rooms. A small past (the usual
        case) is all sent here, and the joiner is level before this returns.
        """
        name = self._joinable(member, room)
        if name is None:
            return
        target = self._room(name)
        self._idle.pop(name, None)
        target.members[member.key] = member
        target.catching_up.add(member)
        target.changed()
        member.rooms.add(name)
        joined = Joined(room=name, nick=member.nick, seq=target.log.next_seq, ts=_now())
        line = self._publish(target, joined)
        pages = self._catch_up(target, line, joined.seq, resume_after)
        member.catch_ups.append(CatchUp(target, pages))
        self.pump(member)

    def _joinable(self, member: Member, room: str) -> str | None:
        """The name of ``room`` if ``member`` may join it; None (and ``members`` sent) if
        it is in already; ``too_many_rooms`` past the per-client limit."""
        name = self.canonical(room)
        if name in member.rooms:
            self._send(member, self._rooms[name].members_event())
            return None
        if len(member.rooms) >= self._config.max_rooms_per_client:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"at most {self._config.max_rooms_per_client} rooms at once",
            )
        return name

    def pump(self, member: Member, *, written: bool = False) -> None:
        """Send ``member`` the next pages of its catch-ups, up to a quarter of its bound.

        Called on join, and by the member's outbox once the pages sent so far
        have been written (``written``); a member that has gone meanwhile gets
        nothing. Pages stop once a quarter of the bound waits to be written, and a
        page is at most half: what waits stays under the bound, with room for live
        lines. A small past (the usual join) is all sent at once.
        """
        if written:
            member.unwritten = 0
        if self._members.get(member.key) is not member:
            return
        budget = self._page_bytes // 2
        while member.catch_ups and member.unwritten < budget:
            catch_up = member.catch_ups[0]
            try:
                page = next(catch_up.pages)
            except StopIteration as done:
                member.catch_ups.pop(0)
                if not done.value:  # retention dropped events it had not been sent yet
                    self._evict_later([member])
                    return
                catch_up.room.catching_up.discard(member)
                catch_up.room.changed()
                continue
            member.unwritten += len(page)
            self._send(member, page, replay=True)

    def _catch_up(
        self, room: Room, joined: bytes, seq: int, resume_after: int | None
    ) -> Generator[bytes, None, bool]:
        """A join's pages: its ``joined``, the past in ``history`` pages, ``members``, then
        the room's events since the join, straight from its log, until the joiner is level.

        False at the end if the room's retention dropped an event it still owed.
        """
        log, page_events, page_bytes = room.log, self._config.history_max_page, self._page_bytes
        yield joined
        after = seq - 1 - self._config.history_limit if resume_after is None else resume_after
        first = True
        while True:
            after, lines = log.page(after, seq, page_events, page_bytes)
            if lines or first:
                yield encode_history(room.name, lines)
            first = False
            if not lines:
                break
        yield room.members_event()
        level = seq
        while level < log.last_seq:
            last, lines = log.page(level, log.next_seq, page_events, page_bytes)
            if last - len(lines) != level:
                return False
            level = last
            yield b"".join(lines)
        return True

    @property
    def _page_bytes(self) -> int:
        """The most a page of history or a replay holds: half the outbox bound, so a
        client that reads what it is sent is never evicted for it."""
        return self._config.outbox_bytes // 2

    def part(self, member: Member, room: str) -> None:
        name = self._membership(member, room)
        self._leave(self._rooms[name], member, LeftReason.PART)

    def _remove(self, room: Room, member: Member) -> None:
        """Take ``member`` out of ``room``, here, and its catch-up of the room with it."""
        del room.members[member.key]
        if member in room.catching_up:  # its past is abandoned
            room.catching_up.discard(member)
            member.catch_ups = [c for c in member.catch_ups if c.room is not room]
        room.changed()
        member.rooms.discard(room.name)

    def _leave(self, room: Room, member: Member, reason: LeftReason) -> None:
        self._remove(room, member)
        line = self._publish(
            room,
            Left(room=room.name, nick=member.nick, reason=reason, seq=room.log.next_seq, ts=_now()),
        )
        # The leaver's own ``left`` (when it can still hear it: a closed session's
        # outbox swallows it) is its own line, so it never waits for the room's presence.
        self._send(member, line)
        if not room.members:
            self._idle[room.name] = room
            self._shed()

    def admit(self, names: list[str]) -> tuple[list[str], list[str]]:
        """``names`` split into the rooms that have members or can still open, and the rest."""
        room_for = self._config.max_rooms - self._active
        admitted, refused = [], []
        for name in names:
            opens = self._opens(name)
            if not opens or room_for > 0:
                room_for -= opens
                admitted.append(name)
            else:
                refused.append(name)
        return admitted, refused

    @property
    def _active(self) -> int:
        """Rooms with members: what ``max_rooms`` bounds."""
        return len(self._rooms) - len(self._idle)

    def _opens(self, name: str) -> bool:
        """Whether a join to ``name`` would open a room (one without members)."""
        return name not in self._rooms or name in self._idle

    def _room(self, name: str) -> Room:
        """The room ``name``, made if new; ``too_many_rooms`` if the server holds its limit."""
        config = self._config
        if self._opens(name) and self._active >= config.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"the server holds its limit of {config.max_rooms} rooms",
            )
        found = self._rooms.get(name)
        if found is None:
            found = self._keep(
                name,
                RoomLog(
                    config.retention, max_bytes=config.room_history_bytes, last_seq=self._seq_floor
                ),
            )
        return found

    # --- memory: idle rooms, the store, the history budget ---------------------------

    def unloaded(self, names: Iterable[str]) -> list[str]:
        """Of ``names`` (raw; invalid ones skipped), the rooms a store must load before
        a join (see :meth:`restore`): none without a store."""
        if not self._loads_rooms:
            return []
        wanted = []
        for raw in names:
            try:
                name = self.canonical(raw)
            except ProtocolError:
                continue
            if name not in self._rooms:
                wanted.append(name)
        return list(dict.fromkeys(wanted))

    def unloaded_for_who(self, room: str) -> list[str]:
        """The rooms a store must load before ``who`` of ``room`` (see :meth:`unloaded`):
        a room without members may be on disk only, and its topic with it."""
        return self.unloaded([room])

    @property
    def _loads_rooms(self) -> bool:
        """Whether rooms not in memory may exist elsewhere, to be loaded before a join."""
        return self._durable

    @contextmanager
    def pinned(self, names: Sequence[str]) -> Iterator[None]:
        """Keep ``names`` from being freed while a load of them is under way: a room
        loaded and changed meanwhile would make what the load read out of date.

        Pinned by key (:func:`rules.room_key`): the room loaded may be stored under a
        look-alike of the name asked for."""
        keys = [rules.room_key(name) for name in names]
        pinned = self._pinned
        pinned.update(keys)
        try:
            yield
        finally:
            for key in keys:
                pinned[key] -= 1
                if not pinned[key]:
                    del pinned[key]

    def restore(
        self, name: str, rows: Sequence[Row], last_seq: int, topic: str | None = None
    ) -> None:
        """Put room ``name`` back in memory from the store: ``rows`` (its newest events,
        consecutive, oldest first), if there are none the ``seq`` it ended at, and its topic.

        Does nothing if the room is in memory already: that copy is newer. The
        room is idle until someone joins; it is not freed before the next change.
        """
        if rules.room_key(name) in self._names:
            return
        config = self._config
        log = RoomLog.restore(
            config.retention, rows, max_bytes=config.room_history_bytes, last_seq=last_seq
        )
        room = self._keep(name, log)
        room.topic = topic
        self._idle[name] = room

    def _keep(self, name: str, log: RoomLog) -> Room:
        room = self._rooms[name] = Room(name=name, log=log)
        self._names[rules.room_key(name)] = name
        self._history_bytes += ROOM_COST + log.retained_bytes
        return room

    def _shed(self) -> None:
        """Keep the rooms within ``history_bytes``: free idle rooms, least recently
        used first, then trim the largest rooms' oldest events."""
        budget = self._config.history_bytes
        if self._history_bytes <= budget:
            return
        target = budget * SHED_TO
        freeing = self._history_bytes - target
        victims = []
        for room in self._idle.values():
            if freeing <= 0:
                break
            if room.unsaved <= self._saved and rules.room_key(room.name) not in self._pinned:
                victims.append(room)
                freeing -= ROOM_COST + room.log.retained_bytes
        for room in victims:
            self._forget(room)
        while self._history_bytes > target and self._trim_largest(target):
            pass

    def _forget(self, room: Room) -> None:
        del self._rooms[room.name]
        del self._idle[room.name]
        del self._names[rules.room_key(room.name)]
        self._history_bytes -= ROOM_COST + room.log.retained_bytes
        self._seq_floor = max(self._seq_floor, room.log.last_seq)

    def _trim_largest(self, target: float) -> bool:
        """Drop the oldest events of the room holding most; False if none can give any."""
        room = max(self._rooms.values(), key=lambda r: r.log.retained_bytes)
        log = room.log
        before = log.retained_bytes
        log.shrink(max(before - (self._history_bytes - target), before // 2))
        self._history_bytes -= before - log.retained_bytes
        return log.retained_bytes < before

    def _membership(self, member: Member, room: str) -> str:
        name = self.canonical(room)
        if name not in member.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {name!r}")
        return name

    # --- talking ------------------------------------------------------------

    def say(
        self, member: Member, room: str, text: str, ref: Ref = None, *, action: bool = False
    ) -> int:
        """Post ``text`` to ``room``: ``ack`` to the sender, ``message`` to every member."""
        target = self._rooms[self._membership(member, room)]
        seq = target.log.next_seq
        event = Message(
            room=target.name,
            seq=seq,
            from_=member.nick,
            text=text,
            ts=_now(),
            id=ref,
            action=action,
        )
        self._publish(target, event)
        # After the message, so that with history on the ack waits for the commit too.
        self._send(member, encode(Ack(id=ref, room=target.name, seq=seq)))
        return seq

    def dm(
        self, member: Member, to: str, text: str, ref: Ref = None, *, action: bool = False
    ) -> None:
        """A private message to ``to``, echoed to the sender so every view of it is alike."""
        target = self._members.get(rules.nick_key(to))
        if target is None:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"nobody is called {to!r}")
        line = encode(
            DirectMessage(
                from_=member.nick, to=target.nick, text=text, ts=_now(), id=ref, action=action
            )
        )
        for recipient in {target, member}:
            self._send(recipient, line)

    def set_topic(self, member: Member, room: str, text: str) -> None:
        """Set ``room``'s topic to ``text`` (checked; "" clears it): a ``topic`` event
        to every member, the setter included, that history keeps like a message."""
        target = self._rooms[self._membership(member, room)]
        topic = Topic(
            room=target.name, seq=target.log.next_seq, from_=member.nick, text=text, ts=_now()
        )
        target.topic = text or None
        if self._durable:
            self._unsaved_topics[target.name] = text
        self._publish(target, topic)

    def rename(self, member: Member, nick: str) -> None:
        """Change ``member``'s nick; everyone who shares a room with it is told once."""
        nick = rules.check_nick(nick)
        key = rules.nick_key(nick)
        holder = self._members.get(key)
        if holder is not None and holder is not member:
            raise ProtocolError(ErrorCode.NICK_TAKEN, f"the nick {nick!r} is taken")
        old_key, old = member.key, member.nick
        del self._members[old_key]
        member.nick = nick
        self._members[key] = member
        for name in member.rooms:
            room = self._rooms[name]
            # Rebuilt rather than re-keyed in place, so the member keeps its place in join order.
            room.members = {(key if k == old_key else k): m for k, m in room.members.items()}
            room.changed()
        line = encode(NickChanged(old=old, new=nick))
        for peer_member in self._neighbours(member):
            self._send(peer_member, line)

    def _neighbours(self, member: Member) -> Iterable[Member]:
        """``member`` and everyone sharing a room with it, each once."""
        seen: dict[int, Member] = {id(member): member}
        for name in member.rooms:
            for other in self._rooms[name].members.values():
                seen.setdefault(id(other), other)
        return seen.values()

    # --- queries ------------------------------------------------------------

    def who(self, member: Member, room: str | None) -> None:
        """``members`` of ``room``, or of the whole server when ``room`` is None."""
        if room is None:
            nicks = [m.nick for m in self._members.values()]
            self._send(member, encode(Members(room=None, nicks=nicks)))
            return
        name = self.canonical(room)
        found = self._rooms.get(name)
        if found is None:
            self._send(member, encode(Members(room=name, nicks=[])))
        else:
            self._send(member, found.members_event())

    def list_rooms(self, member: Member, after: str | None, limit: int | None) -> None:
        """A ``rooms`` page: the rooms with members, by name, after ``after``."""
        listed = (
            RoomInfo(room=room.name, members=len(room.members), topic=room.topic)
            for room in self._rooms.values()
            if room.members
        )
        self._send(member, encode(rooms_page(listed, after, self.list_count(limit))))

    def list_count(self, limit: int | None) -> int:
        """How many rooms a ``list`` with ``limit`` gets: the default, or clamped to 1..max."""
        config = self._config
        wanted = config.list_limit if limit is None else limit
        return min(max(wanted, 1), config.list_max_page)

    def history(self, member: Member, room: str, before_seq: int | None, limit: int | None) -> None:
        """One page of ``room``'s past, oldest first, ending before ``before_seq``.

        Unlike the replay owed on join, a page asked for counts against the
        outbox bound, so it is capped at half of it in bytes (the newest events
        that fit): a client that reads what it asks for is never evicted, and
        one that keeps asking without reading is, instead of piling up pages.
        """
        target = self._rooms[self._membership(member, room)]
        wanted = self._config.history_limit if limit is None else limit
        page = min(max(wanted, 0), self._config.history_max_page)
        lines = target.log.before(before_seq, page) if page else []
        self._send(member, encode_history(target.name, newest_within(lines, self._page_bytes)))

    # --- fan-out ------------------------------------------------------------------

    def _publish(self, room: Room, event: Joined | Left | Message | Topic) -> bytes:
        """Record a room event and fan it out: encoded once, queued without waiting."""
        line = encode(event)
        log = room.log
        held = log.retained_bytes
        log.append(event.seq, line)
        self._history_bytes += log.retained_bytes - held
        if self._durable:
            self._unsaved.append(Row(room.name, event.seq, event.ts, line))
            room.unsaved = self._generation
        if self._history_bytes > self._config.history_bytes:
            self._shed()
        recipients = room.recipients
        kind = type(event)
        presence = (
            room.name
            if (kind is Joined or kind is Left) and len(recipients) >= LARGE_ROOM
            else None
        )
        self._emit(recipients, line, room_event=True, presence=presence)
        return line

    def answer(self, member: Member, line: bytes) -> None:
        """Send ``member`` a line that answers it (an error, a pong), in the order of its
        requests: on one server every answer is made at once, so that is now, ahead of
        any room event waiting for a commit."""
        if not member.peer.deliver(line):
            self._evict_later([member])

    def _send(self, member: Member, line: bytes, *, replay: bool = False) -> None:
        self._emit((member,), line, replay=replay)

    def _emit(
        self,
        members: tuple[Member, ...],
        line: bytes,
        *,
        replay: bool = False,
        room_event: bool = False,
        presence: str | None = None,
    ) -> None:
        """Deliver now, or hold behind unsaved room events to keep every client's order.

        A held delivery keeps the members of the moment, so someone who joins
        before it is released (and already has the event in its replay) does
        not get it twice.
        """
        held = self._held
        if (room_event and self._durable) or held or self._in_flight:
            if not held:
                self.on_held()
            held.append((members, line, replay, room_event, presence))
            return
        self._deliver(members, line, replay, room_event, presence)

    def _deliver(
        self,
        members: tuple[Member, ...],
        line: bytes,
        replay: bool,
        room_event: bool,
        presence: str | None,
    ) -> None:
        self.deliveries += len(members)
        if room_event:  # the hot path: one C-level append per recipient
            for member in members:
                member.queue(line)
            if presence is None:
                self.on_fanout(members)
            else:
                self.on_presence(presence, members)
            return
        overflowed = [m for m in members if not m.peer.deliver(line, replay=replay)]
        self._evict_later(overflowed)

    def _flush_now(self, members: tuple[Member, ...]) -> None:
        self._evict_later([m for m in members if not m.flush()])

    def _presence_now(self, room: str, members: tuple[Member, ...]) -> None:
        self.on_fanout(members)

    def _evict_later(self, overflowed: list[Member]) -> None:
        if overflowed:
            self._evictions.extend(overflowed)
            self._run_evictions()

    # --- durability (see triochat.server.store) ------------------------------------

    @property
    def holding(self) -> bool:
        """Whether deliveries wait for a commit."""
        return bool(self._held)

    def take_topics(self) -> dict[str, str]:
        """The topics set since last taken, by room name ("" cleared), to be saved in the
        same transaction as the rows :meth:`take_unsaved` gave at the same time."""
        topics, self._unsaved_topics = self._unsaved_topics, {}
        return topics

    def take_unsaved(self) -> tuple[list[Row], list[Held]]:
        """The room events to persist and the deliveries that must wait for them."""
        rows, held = self._unsaved, self._held
        self._unsaved, self._held = [], []
        self._in_flight = True
        self._generation += 1
        return rows, held

    def release(self, held: list[Held]) -> None:
        """Deliver what waited for a commit, in the order it was emitted.

        Everything taken is saved now, so the rooms it touched may be freed.
        """
        self._in_flight = False
        self._saved = self._generation - 1
        for members, line, replay, room_event, presence in held:
            self._deliver(members, line, replay, room_event, presence)
        if self._history_bytes > self._config.history_bytes:
            self._shed()  # rooms that were waiting for this commit may go now

    def _run_evictions(self) -> None:
        """Evict every overflowed member; runs once at the outermost fan-out."""
        if self._evicting:
            return
        self._evicting = True
        try:
            while self._evictions:
                self._evictions.popleft().peer.evict()
        finally:
            self._evicting = False
