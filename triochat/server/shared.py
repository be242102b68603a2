"""Rooms shared by many nodes through Redis (``serve --redis``): the hub of one node.

Theory of operation
-------------------
Redis orders every room (see :mod:`triochat.server.redis_bus`); a node holds a
*mirror* of each room its clients are in and delivers to them what it hears, in
seq order. The rules of one server (:class:`triochat.server.hub.Hub`) stay: the
hub never awaits, and each client gets a room's events and its own answers in
the order one server would give them. What changes is where a room event is
decided: the hub hands it to the relay (:mod:`triochat.server.relay`) and acts
once Redis has given it a seq.

Invariants of a mirror (:class:`SharedRoom`):

1. Its log holds consecutive seqs ending at its *level*. An event heard at
   level + 1 is appended and fanned out to the node's members; one heard later
   waits in ``early`` while the gap before it is read from the stream; one at or
   below the level is a duplicate and is dropped. So every node delivers every
   event once, in one order, whatever pub/sub loses or repeats.
2. What the node owes a client once the room reaches a seq (the sender's
   ``ack``, the joiner's past, the leaver's own ``left``) waits in ``due`` under
   that seq: the sender hears its message before its ack, as on one server.
3. The roster (every node's members) changes only by ``joined`` and ``left`` in
   seq order, from a snapshot read in the same step as the log: every node
   shows the same members at the same seq.
4. A mirror is forgotten (its channel left) only when no member, call in
   flight, due action or load needs it.
5. A client's answers come in the order of its requests, as on one server: an
   answer that waits for Redis (an ack, a DM's echo, ``who``) holds a place in
   the member's ``_waiting`` queue, and every later answer (an error, a pong,
   a history page) waits behind it.

What one server keeps in the hub alone, this node asks Redis for: nicks are
claimed there before :meth:`attach` (see :meth:`Relay.claim`), DMs to a member
of another node go through Redis, and ``who`` without a room lists every node's
members.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
import trio

from triochat.errors import RedisError
from triochat.protocol import ErrorCode, ProtocolError, encode, rules
from triochat.protocol.events import (
    Ack,
    DirectMessage,
    Error,
    Joined,
    Left,
    LeftReason,
    Members,
    Message,
    NickChanged,
    Ref,
    RoomInfo,
    Topic,
)
from triochat.server.config import ServerConfig
from triochat.server.hub import LARGE_ROOM, CatchUp, Hub, Member, Room, rooms_page
from triochat.server.redis_bus import Call, as_text
from triochat.server.relay import (
    NICKS_CHANNEL,
    Relay,
    RoomKeys,
    event_call,
    members_of,
    nick_lease,
    now,
)
from triochat.server.roomlog import RoomLog

log = logging.getLogger(__name__)

UNAVAILABLE = "the shared store (redis) did not answer; try again"


class _Named(msgspec.Struct):
    """The one field of a ``joined`` or ``left`` line the roster needs."""

    nick: str


class _Titled(msgspec.Struct):
    """The one field of a ``topic`` line the room's state needs."""

    text: str


class _Renamed(msgspec.Struct):
    """A nick change, as nodes tell each other (on :data:`NICKS_CHANNEL`)."""

    node: str
    old: str
    new: str
    rooms: list[str]


_named = msgspec.json.Decoder(_Named)
_titled = msgspec.json.Decoder(_Titled)
_renamed = msgspec.json.Decoder(_Renamed)


@dataclass(eq=False)
class SharedRoom(Room):
    """A node's mirror of a room (see the module docstring for its invariants)."""

    keys: RoomKeys = field(default_factory=lambda: RoomKeys("", "", "", ""))
    epoch: str = ""
    roster: dict[str, str] = field(default_factory=dict)
    """Every node's members: nick key to nick, in join order."""
    early: dict[int, bytes] = field(default_factory=dict)
    due: dict[int, list[Callable[[], None]]] = field(default_factory=dict)
    in_flight: int = 0
    """This node's calls about the room that Redis has not answered yet."""
    filling: bool = False
    """A read of a gap is under way."""

    def nicks(self) -> list[str]:
        return list(self.roster.values())

    @property
    def level(self) -> int:
        return self.log.last_seq


@dataclass(eq=False, slots=True)
class _Ticket:
    """A place in a member's answers; ``lines`` is None until the answer is known."""

    lines: list[bytes] | None = None


class SharedHub(Hub):
    """The hub of one node of many; see the module docstring."""

    def __init__(self, config: ServerConfig, relay: Relay) -> None:
        super().__init__(config, server_id=relay.history_id)
        self._relay = relay
        self._channels: dict[bytes, SharedRoom] = {}
        self._waiting: dict[Member, deque[_Ticket]] = {}
        """Members with an answer that waits for Redis, and every answer behind it."""
        self._settings = relay.settings(config.retention)
        self._releasing: dict[Member, trio.Event] = {}
        """Detached members whose nick Redis has not freed yet."""
        relay.serve(self)

    @property
    def retention(self) -> int:
        return self._config.retention

    def mirrors(self) -> list[SharedRoom]:
        return list(self._channels.values())

    def hears(self, channel: bytes) -> bool:
        return channel in self._channels

    def _shared(self, name: str) -> SharedRoom:
        room = self._rooms[name]
        assert isinstance(room, SharedRoom)
        return room

    # --- answers in order (invariant 5) ------------------------------------------

    def _ticket(self, member: Member) -> _Ticket:
        ticket = _Ticket()
        self._waiting.setdefault(member, deque()).append(ticket)
        return ticket

    def _fulfil(self, member: Member, ticket: _Ticket, *lines: bytes) -> None:
        ticket.lines = list(lines)
        waiting = self._waiting.get(member)
        if waiting is None:
            return  # gone meanwhile
        while waiting and waiting[0].lines is not None:
            for line in waiting.popleft().lines or ():
                super()._send(member, line)
        if not waiting:
            del self._waiting[member]

    def _send(self, member: Member, line: bytes, *, replay: bool = False) -> None:
        waiting = self._waiting.get(member)
        if waiting and not replay:
            waiting.append(_Ticket([line]))
        else:
            super()._send(member, line, replay=replay)

    def answer(self, member: Member, line: bytes) -> None:
        self._send(member, line)

    # --- nicks ------------------------------------------------------------------

    async def reserve(self, nick: str) -> None:
        """Claim ``nick`` across nodes; ``nick_taken`` if another node's member has it."""
        nick = rules.check_nick(nick)
        key = rules.nick_key(nick)
        if key in self._members:
            return  # this node's own rule (attach, rename) decides
        try:
            taken = await self._relay.claim(key, nick)
        except RedisError:
            raise ProtocolError(ErrorCode.UNAVAILABLE, UNAVAILABLE) from None
        if not taken:
            raise ProtocolError(ErrorCode.NICK_TAKEN, f"the nick {nick!r} is taken")

    def unreserve(self, nick: str) -> None:
        try:
            nick = rules.check_nick(nick)
        except ProtocolError:
            return
        key = rules.nick_key(nick)
        held = self._members.get(key)
        if held is None:
            self._relay.release(key, nick)

    def detach(self, member: Member, reason: LeftReason) -> None:
        attached = self._members.get(member.key) is member
        super().detach(member, reason)
        self._waiting.pop(member, None)
        if attached:
            freed = self._releasing[member] = trio.Event()
            self._relay.release(member.key, member.nick, lambda result: freed.set())

    async def released(self, member: Member) -> None:
        freed = self._releasing.get(member)
        if freed is not None:
            try:
                await freed.wait()
            finally:
                del self._releasing[member]

    # --- loading and forgetting mirrors --------------------------------------------

    @property
    def _loads_rooms(self) -> bool:
        return True  # every room lives in Redis

    def mirror(self, name: str, keys: RoomKeys, snapshot: list[Any], heard: list[bytes]) -> None:
        """Hold room ``name`` as Redis had it (``snapshot`` of ``tc_load``), then what
        was heard on its channel since subscribing (see :meth:`Relay.load`)."""
        if rules.room_key(name) in self._names:
            return
        epoch, top, stored, roster, events, topic = snapshot
        seqs = [int(seq) for seq in events[0::2]][::-1]
        lines = [bytes(line) for line in events[1::2]][::-1]
        first = seqs[0] if seqs else int(top) + 1
        config = self._config
        log_ = RoomLog(config.retention, max_bytes=config.room_history_bytes, last_seq=first - 1)
        for seq, line in zip(seqs, lines, strict=True):
            log_.append(seq, line)
        name = as_text(stored) or name
        room = SharedRoom(name=name, log=log_, keys=keys, epoch=as_text(epoch))
        room.topic = as_text(topic) or None
        for holder in members_of(roster):
            room.roster[holder.key] = holder.nick
        self._rooms[name] = room
        self._names[rules.room_key(name)] = name
        self._history_bytes += log_.retained_bytes
        self._idle[name] = room
        self._channels[keys.channel.encode()] = room
        for payload in heard:
            self.hear(keys.channel.encode(), payload)

    def unloaded_for_who(self, room: str) -> list[str]:
        """None: ``who`` of a room this node does not mirror asks Redis (``tc_who``) rather
        than subscribing to it."""
        return []

    def _settle(self, room: SharedRoom) -> None:
        """Forget ``room`` if nothing needs it any more (invariant 4)."""
        if room.members or room.in_flight or room.due or room.filling:
            return
        if rules.room_key(room.name) in self._pinned or self._rooms.get(room.name) is not room:
            return
        self._idle.pop(room.name, None)
        del self._rooms[room.name]
        del self._names[rules.room_key(room.name)]
        del self._channels[room.keys.channel.encode()]
        self._history_bytes -= room.log.retained_bytes
        self._relay.drop(room.keys)

    def _forget(self, room: Room) -> None:
        assert isinstance(room, SharedRoom)
        self._settle(room)

    # --- room events ---------------------------------------------------------------

    def _ask(
        self,
        room: SharedRoom,
        event: Joined | Left | Message | Topic,
        done: Callable[[Any], None],
    ) -> None:
        """Have Redis order ``event``; ``done`` gets its seq (0: not an event) or an error."""
        room.in_flight += 1

        def answered(result: Any) -> None:
            room.in_flight -= 1
            done(result)
            self._settle(room)

        call = event_call(room.keys, event, self._settings)
        self._relay.call(call, answered, retry=isinstance(event, Left))

    def _when(self, room: SharedRoom, seq: int, action: Callable[[], None]) -> None:
        """Do ``action`` once ``room`` has delivered ``seq`` (invariant 2)."""
        if room.level >= seq:
            action()
        else:
            room.due.setdefault(seq, []).append(action)

    def join(self, member: Member, room: str, *, resume_after: int | None = None) -> None:
        name = self._joinable(member, room)
        if name is None:
            return
        if name not in self._rooms:
            raise ProtocolError(ErrorCode.UNAVAILABLE, UNAVAILABLE)
        self._room(name)  # the server's room limit
        target = self._shared(name)
        self._idle.pop(name, None)
        target.members[member.key] = member
        target.catching_up.add(member)
        target.changed()
        member.rooms.add(name)
        self._relay.joined_room(target.keys)
        joined = Joined(room=name, nick=member.nick, seq=0, ts=now())
        self._ask(target, joined, partial(self._joined, member, target, joined, resume_after))

    def _joined(
        self,
        member: Member,
        room: SharedRoom,
        joined: Joined,
        resume_after: int | None,
        result: Any,
    ) -> None:
        if isinstance(result, Exception) or not result:
            self._unjoin(member, room)
            return
        seq = int(result)
        line = encode(msgspec.structs.replace(joined, seq=seq))
        self._when(room, seq, partial(self._catch_up_from, member, room, line, seq, resume_after))

    def _unjoin(self, member: Member, room: SharedRoom) -> None:
        """Redis did not take a join: the client is told, and a leave (refused by Redis
        unless the join did happen after all) makes sure no ghost stays."""
        if room.members.get(member.key) is member:
            self._drop_member(room, member)
        self._send(member, encode(Error(code=ErrorCode.UNAVAILABLE, message=UNAVAILABLE)))
        left = Left(
            room=room.name, nick=member.nick, reason=LeftReason.DISCONNECTED, seq=0, ts=now()
        )
        self._ask(room, left, lambda result: None)

    def _catch_up_from(
        self, member: Member, room: SharedRoom, line: bytes, seq: int, resume_after: int | None
    ) -> None:
        if member not in room.catching_up or self._members.get(member.key) is not member:
            return
        member.catch_ups.append(CatchUp(room, self._catch_up(room, line, seq, resume_after)))
        self.pump(member)

    def _drop_member(self, room: SharedRoom, member: Member) -> None:
        self._remove(room, member)
        if not room.members:
            self._idle[room.name] = room

    def _leave(self, room: Room, member: Member, reason: LeftReason) -> None:
        assert isinstance(room, SharedRoom)
        self._drop_member(room, member)
        left = Left(room=room.name, nick=member.nick, reason=reason, seq=0, ts=now())
        self._ask(room, left, partial(self._left, member, room, left))

    def _left(self, member: Member, room: SharedRoom, left: Left, result: Any) -> None:
        if isinstance(result, Exception) or not result:
            return
        seq = int(result)
        line = encode(msgspec.structs.replace(left, seq=seq))
        self._when(room, seq, partial(self._send, member, line))

    def say(
        self, member: Member, room: str, text: str, ref: Ref = None, *, action: bool = False
    ) -> int:
        """Post ``text``; the ``ack`` follows once Redis has ordered it and it is delivered
        here. Returns 0: the seq is not known yet."""
        target = self._shared(self._membership(member, room))
        message = Message(
            room=target.name, seq=0, from_=member.nick, text=text, ts=now(), id=ref, action=action
        )
        ticket = self._ticket(member)
        self._ask(target, message, partial(self._said, member, target, ref, ticket))
        return 0

    def _said(
        self, member: Member, room: SharedRoom, ref: Ref, ticket: _Ticket, result: Any
    ) -> None:
        if isinstance(result, Exception):
            error = Error(code=ErrorCode.UNAVAILABLE, message=f"not sent: {UNAVAILABLE}", ref=ref)
            self._fulfil(member, ticket, encode(error))
            return
        seq = int(result)
        ack = encode(Ack(id=ref, room=room.name, seq=seq))
        self._when(room, seq, partial(self._fulfil, member, ticket, ack))

    def set_topic(self, member: Member, room: str, text: str) -> None:
        """Have Redis order the ``topic`` event and keep the topic with the room's meta, in
        one call; the setter's later answers wait until the event is delivered here."""
        target = self._shared(self._membership(member, room))
        topic = Topic(room=target.name, seq=0, from_=member.nick, text=text, ts=now())
        ticket = self._ticket(member)
        self._ask(target, topic, partial(self._topic_set, member, target, ticket))

    def _topic_set(self, member: Member, room: SharedRoom, ticket: _Ticket, result: Any) -> None:
        if isinstance(result, Exception):
            error = Error(code=ErrorCode.UNAVAILABLE, message=f"topic not set: {UNAVAILABLE}")
            self._fulfil(member, ticket, encode(error))
            return
        self._when(room, int(result), partial(self._fulfil, member, ticket))

    # --- hearing ---------------------------------------------------------------------

    def hear(self, channel: bytes, payload: bytes) -> None:
        """A room's events as published: ``<first seq> <epoch> <line>...``, each line
        ending in a newline, their seqs consecutive."""
        room = self._channels.get(channel)
        if room is None:
            return
        first, epoch, lines = payload.split(b" ", 2)
        seq, era = int(first), epoch.decode()
        for line in lines.splitlines(keepends=True):
            self._take(room, seq, era, line)
            seq += 1

    def _take(self, room: SharedRoom, seq: int, epoch: str, line: bytes) -> None:
        if epoch != room.epoch:
            if room.epoch:  # made anew in Redis: what this node holds is another history
                self._relay.lost(f"room {room.name!r} has a new epoch in redis")
                return
            room.epoch = epoch  # the room was new when loaded
        level = room.level
        if seq <= level:
            return
        if seq > level + 1:
            room.early[seq] = line
            self._fill(room, level + 1, seq - 1)
            return
        self._apply(room, seq, line)
        early = room.early
        while early and self._rooms.get(room.name) is room:  # not forgotten meanwhile
            line_ = early.pop(room.level + 1, None)
            if line_ is None:
                break
            self._apply(room, room.level + 1, line_)
        if early and min(early) <= room.level:
            room.early = {s: ln for s, ln in early.items() if s > room.level}

    def _apply(self, room: SharedRoom, seq: int, line: bytes) -> None:
        """Invariant 1: ``seq`` is the level + 1."""
        log_ = room.log
        held = log_.retained_bytes
        log_.append(seq, line)
        self._history_bytes += log_.retained_bytes - held
        kind = line[9:10]  # b'{"type":"' then the type's first letter
        if kind == b"j":
            nick = _named.decode(line).nick
            room.roster[rules.nick_key(nick)] = nick
        elif kind == b"l":
            room.roster.pop(rules.nick_key(_named.decode(line).nick), None)
        elif kind == b"t":
            room.topic = _titled.decode(line).text or None
        recipients = room.recipients
        presence = room.name if kind in b"jl" and len(recipients) >= LARGE_ROOM else None
        self._emit(recipients, line, room_event=True, presence=presence)
        due = room.due.pop(seq, None)
        if due is not None:
            for action in due:
                action()
            self._settle(room)  # the last thing a room without members here waited for
        if self._history_bytes > self._config.history_bytes:
            self._shed()

    def _fill(self, room: SharedRoom, first: int, last: int) -> None:
        """Read seqs ``first``..``last`` from the stream (once at a time per room)."""
        if room.filling:
            return
        room.filling = True
        self._relay.gap_reads += 1
        call = Call("tc_range", [room.keys.log], [str(first), str(last)])
        self._relay.call(call, partial(self._filled, room, first))

    def _filled(self, room: SharedRoom, first: int, result: Any) -> None:
        room.filling = False
        if isinstance(result, Exception):
            return  # the heartbeat's re-check asks again
        seqs = [int(seq) for seq in result[0::2]]
        if not seqs or seqs[0] > first:
            self._resync(room)
            return
        for seq, line in zip(seqs, result[1::2], strict=True):
            self._take(room, seq, room.epoch, bytes(line))
        self._settle(room)

    def _resync(self, room: SharedRoom) -> None:
        """The stream no longer holds what this node missed (retention passed it): its
        members here cannot be brought level, so they are evicted and resume elsewhere."""
        log.warning("redis: room %r: missed events are past retention; evicting", room.name)
        for member in list(room.members.values()):
            self._evict_later([member])

    def check_top(self, room: SharedRoom, epoch: str, top: int, level: int) -> None:
        """The heartbeat's re-check of Redis's ``epoch`` and ``top`` seq, asked when the
        room was at ``level``: a room ahead of this node is read from its stream; one
        behind what this node had delivered then has lost events."""
        if self._rooms.get(room.name) is not room:
            return  # forgotten meanwhile
        if not epoch:
            if room.epoch and level:
                self._relay.lost(f"room {room.name!r} is gone from redis")
            return
        if room.epoch and epoch != room.epoch:
            self._relay.lost(f"room {room.name!r} has a new epoch in redis")
            return
        if top < level:  # a restored snapshot, or a replica without the tail
            self._relay.lost(f"room {room.name!r} went back from seq {level} to {top}")
        elif top > room.level:
            self._fill(room, room.level + 1, top)

    # --- DMs, nick changes, who ---------------------------------------------------------

    def dm(
        self, member: Member, to: str, text: str, ref: Ref = None, *, action: bool = False
    ) -> None:
        key = rules.nick_key(to)
        if key in self._members:
            super().dm(member, to, text, ref, action=action)
            return
        line = encode(
            DirectMessage(from_=member.nick, to="", text=text, ts=now(), id=ref, action=action)
        )
        before, _, after = line.partition(b'"to":""')
        call = Call("tc_dm", [nick_lease(key)], [before + b'"to":', after, key])
        ticket = self._ticket(member)
        self._relay.call(call, partial(self._dm_sent, member, ticket, before, after, to, ref))

    def _dm_sent(
        self,
        member: Member,
        ticket: _Ticket,
        before: bytes,
        after: bytes,
        to: str,
        ref: Ref,
        result: Any,
    ) -> None:
        if isinstance(result, Exception):
            error = Error(code=ErrorCode.UNAVAILABLE, message=f"not sent: {UNAVAILABLE}", ref=ref)
        elif not result:
            error = Error(code=ErrorCode.NO_SUCH_USER, message=f"nobody is called {to!r}", ref=ref)
        else:
            nick = msgspec.json.encode(as_text(result))
            self._fulfil(member, ticket, before + b'"to":' + nick + after)
            return
        self._fulfil(member, ticket, encode(error))

    def hear_direct(self, payload: bytes) -> None:
        """A DM for one of this node's members: ``d\\n<nick key>\\n<line>``."""
        _, key, line = payload.split(b"\n", 2)
        member = self._members.get(key.decode())
        if member is not None:
            self._send(member, line)

    def rename(self, member: Member, nick: str) -> None:
        old_key, old = member.key, member.nick
        super().rename(member, nick)
        if member.nick == old:
            return
        rooms = sorted(member.rooms)
        for name in rooms:
            room = self._shared(name)
            room.roster = {(member.key if k == old_key else k): v for k, v in room.roster.items()}
            room.roster[member.key] = member.nick
            self._relay.call(
                Call(
                    "tc_rename",
                    [room.keys.members],
                    [old_key, member.key, self._relay.node, member.nick],
                ),
                lambda result: None,
                retry=True,
            )
        news = _Renamed(node=self._relay.node, old=old, new=member.nick, rooms=rooms)
        self._relay.call(
            Call("tc_publish", [], [NICKS_CHANNEL, msgspec.json.encode(news)]), lambda r: None
        )
        if old_key != member.key:
            self._relay.release(old_key, old)

    def hear_rename(self, payload: bytes) -> None:
        """Another node's member changed its nick: rosters follow, neighbours here are told."""
        news = _renamed.decode(payload)
        if news.node == self._relay.node:
            return
        old_key, new_key = rules.nick_key(news.old), rules.nick_key(news.new)
        told: dict[int, Member] = {}
        for name in news.rooms:
            room = self._channels.get(RoomKeys.of(name).channel.encode())
            if room is None:
                continue
            room.roster = {(new_key if k == old_key else k): v for k, v in room.roster.items()}
            room.roster[new_key] = news.new
            for local in room.members.values():
                told.setdefault(id(local), local)
        line = encode(NickChanged(old=news.old, new=news.new))
        for local in told.values():
            self._send(local, line)

    def who(self, member: Member, room: str | None) -> None:
        if room is not None:
            name = self.canonical(room)
            if name in self._rooms:
                super().who(member, name)
                return
            keys = RoomKeys.of(name)
            call = Call("tc_who", [keys.members, keys.meta], [])
            self._relay.call(call, partial(self._roster_for, member, self._ticket(member), name))
            return
        self._relay.everyone(partial(self._everyone_for, member, self._ticket(member)))

    def _roster_for(self, member: Member, ticket: _Ticket, name: str, result: Any) -> None:
        if isinstance(result, Exception):
            members = Members(room=name, nicks=[])
        else:
            roster, topic = result
            nicks = [holder.nick for holder in members_of(roster)]
            members = Members(room=name, nicks=nicks, topic=as_text(topic) or None)
        self._fulfil(member, ticket, encode(members))

    def list_rooms(self, member: Member, after: str | None, limit: int | None) -> None:
        """Rooms with members on any node, counted cluster-wide (see :meth:`Relay.listed`)."""
        count = self.list_count(limit)
        ticket = self._ticket(member)
        self._relay.listed(partial(self._listed_for, member, ticket, after, count))

    def _listed_for(
        self,
        member: Member,
        ticket: _Ticket,
        after: str | None,
        count: int,
        rooms: list[RoomInfo],
    ) -> None:
        self._fulfil(member, ticket, encode(rooms_page(rooms, after, count)))

    def _everyone_for(self, member: Member, ticket: _Ticket, nicks: list[str]) -> None:
        self._fulfil(member, ticket, encode(Members(room=None, nicks=nicks)))
