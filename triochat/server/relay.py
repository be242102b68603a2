"""A node's traffic with Redis: calls batched per scheduler turn, what it hears,
its heartbeat, and the rooms it loads (``serve --redis``).

Theory of operation
-------------------
The hub (:class:`triochat.server.shared.SharedHub`) never awaits: it hands the
relay calls with what to do once each is answered (:meth:`Relay.call`). The
**caller** task takes everything queued, lets the scheduler turn finish so the
rest of a burst joins it, and sends it as one pipelined batch; one batch at a
time, so Redis runs a node's calls in the order the hub made them (a client's
messages keep their order). Answers are handed back in that order.

The **listener** task is the only reader of the subscription connection: it
hands every room message to the hub, which delivers in seq order (see
:mod:`triochat.server.shared`), buffers the messages of a room being loaded,
and takes DMs for this node's members.

The **heartbeat** task renews the node's lease and its members' nick leases,
re-checks every room's top seq (pub/sub is the fast path, never the truth: a
subscription lost silently, or messages missed while the connection was down,
show up here and are read from the stream), checks the shared history's id, and
reaps nodes whose lease has expired.

Calls flagged ``retry`` (leaves, nick releases) are tried again on the next
heartbeat until Redis takes them: they free what a dead connection would
otherwise hold forever. Every retried call is idempotent.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from triochat.errors import RedisError
from triochat.protocol import encode, rules
from triochat.protocol.events import Joined, Left, LeftReason, Message, RoomInfo, Topic
from triochat.server.outbox import Flusher
from triochat.server.redis_bus import Bus, Call, as_text

if TYPE_CHECKING:
    from triochat.server.shared import SharedHub

log = logging.getLogger(__name__)

NODES = "tc:nodes"
HISTORY_ID = "tc:id"
NICKS_CHANNEL = "tc:nicks"
REAP_MS = 30_000
"""How long a node that claimed a dead node's reaping has to finish it."""

Done = Callable[[Any], None]
"""What to do with a call's answer: its result, or the exception it met."""


def tag(key: str) -> str:
    """``key`` made safe inside a hash tag (``{`` and ``}`` would end it early)."""
    if "{" in key or "}" in key:
        return key.encode().hex()
    return key


@dataclass(frozen=True)
class RoomKeys:
    """The Redis names of one room (see :mod:`triochat.server.redis_bus`)."""

    meta: str
    log: str
    members: str
    channel: str

    @classmethod
    def of(cls, name: str) -> RoomKeys:
        return cls.at(f"tc:{{r:{tag(rules.room_key(name))}}}")

    @classmethod
    def at(cls, base: str) -> RoomKeys:
        return cls(f"{base}:m", f"{base}:l", f"{base}:u", f"{base}:c")

    @classmethod
    def of_meta(cls, meta: str) -> RoomKeys:
        return cls.at(meta.removesuffix(":m"))


def event_call(keys: RoomKeys, event: Joined | Left | Message | Topic, settings: bytes) -> Call:
    """The ``tc_event`` call of a room event (``settings``: :meth:`Relay.settings`).

    Redis puts the seq into the line: it is encoded once with seq 0, and
    ``"seq":0`` can only be the field itself, since quotes inside JSON strings
    are escaped. Few arguments: the client library's cost grows with each, which
    is also why a batch's consecutive events of one room go as one call
    (:func:`coalesce`)."""
    before, _, after = encode(event).partition(b'"seq":0')
    match event:
        case Joined(nick=nick, room=room):
            what = f"j\n{rules.nick_key(nick)}\n{nick}\n{room}"
        case Left(nick=nick, room=room):
            what = f"l\n{rules.nick_key(nick)}\n{nick}\n{room}"
        case Topic(room=room, text=text):  # one line: rules.check_topic
            what = f"t\n{room}\n{text}"
        case _:
            what = "m"
    return Call(
        "tc_event",
        [keys.meta, keys.log, keys.members, keys.channel],
        [settings, before + b'"seq":', after, what],
    )


def coalesce(calls: list[Call]) -> tuple[list[Call], list[int]]:
    """``calls`` with each run of consecutive ``tc_event`` calls of one room made one
    call (one publication, too), and how many of the original calls each stands for."""
    merged: list[Call] = []
    sizes: list[int] = []
    for call in calls:
        last = merged[-1] if merged else None
        if (
            last is not None
            and call.function == "tc_event"
            and last.function == "tc_event"
            and call.keys[0] == last.keys[0]
            and call.args[0] == last.args[0]  # the same node's settings
        ):
            last.args.extend(call.args[1:])
            sizes[-1] += 1
        else:
            merged.append(Call(call.function, call.keys, list(call.args)))
            sizes.append(1)
    return merged, sizes


def nick_lease(key: str) -> str:
    return f"tc:{{n:{tag(key)}}}"


@dataclass(frozen=True)
class NodeKeys:
    live: str
    rooms: str
    nicks: str
    channel: str
    reap: str

    @classmethod
    def of(cls, node: str) -> NodeKeys:
        base = f"tc:{{d:{node}}}"
        return cls(f"{base}:live", f"{base}:rooms", f"{base}:nicks", f"{base}:c", f"{base}:reap")


@dataclass
class Relay:
    """One node's link to Redis; ``lease`` and ``beat`` in seconds."""

    bus: Bus
    node: str
    lease: float = 10.0
    beat: float = 2.0
    on_lost: Callable[[str], None] = lambda new_id: None
    """Told the shared history's new id when Redis lost what the node holds."""
    history_id: str = ""
    healthy: bool = True
    """Whether the last heartbeat reached Redis (``/readyz``)."""
    batches: int = 0
    """Batches sent, and the calls in them (metrics)."""
    calls: int = 0
    gap_reads: int = 0
    """Stream reads of events pub/sub did not bring (metrics)."""
    _queue: list[tuple[Call, Done, bool]] = field(default_factory=list)
    _retry: list[tuple[Call, Done]] = field(default_factory=list)
    _wakeup: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    _hub: SharedHub | None = None
    _subscribing: trio.Lock = field(default_factory=trio.Lock)
    _loading: dict[bytes, list[bytes]] = field(default_factory=dict)
    """Channels of rooms being loaded: what was heard on them meanwhile."""
    _nicks: dict[str, str] = field(default_factory=dict)
    """This node's nick leases: lease key to holder."""
    _dropped: set[str] = field(default_factory=set)
    """Room channels to leave, once no load needs them again."""
    _lost: str | None = None
    """Why this node found Redis without what it held, until the heartbeat acts on it."""
    flusher: Flusher | None = None
    """Told while a batch is out (see :meth:`Flusher.committing`): the burst it carries comes
    back on pub/sub with its answer, and is written in one flush with the acks."""
    _nursery: trio.Nursery | None = None
    _renewed: float = -math.inf
    """When the nick leases were last renewed (trio's clock)."""

    @property
    def keys(self) -> NodeKeys:
        return NodeKeys.of(self.node)

    @property
    def lease_ms(self) -> str:
        return str(int(self.lease * 1000))

    def settings(self, retention: int, node: str | None = None) -> bytes:
        """What ``tc_event`` needs of this node (or of ``node``, when a reaper leaves on
        a dead node's behalf): the retention, the node's id, sharded or not."""
        return f"{retention}\n{node or self.node}\n{int(self.bus.sharded)}".encode()

    def holder(self, nick: str) -> str:
        return f"{self.node}\n{nick}"

    # --- start ----------------------------------------------------------------

    async def start(self) -> str:
        """Announce the node and find (or make) the shared history's id."""
        await self._beat_once()
        self.history_id = await self._history_id()
        await self.bus.subscribe({self.keys.channel, NICKS_CHANNEL}, sharded=False)
        return self.history_id

    async def _history_id(self) -> str:
        await self.bus.command("SET", HISTORY_ID, uuid.uuid4().hex, "NX")
        found = await self.bus.command("GET", HISTORY_ID)
        return as_text(found)

    def serve(self, hub: SharedHub) -> None:
        """Work for ``hub`` (which calls this as it is made)."""
        self._hub = hub

    async def run(self) -> None:
        """The caller, listener and heartbeat tasks, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._caller)
            nursery.start_soon(self._listener)
            nursery.start_soon(self._heartbeat)

    async def stop(self) -> None:
        """Send what is still queued (the last leaves), free the node's nicks and lease."""
        with trio.move_on_after(2):
            await self._send(self._take())
            releases = [Call("tc_release", [key], [held]) for key, held in self._nicks.items()]
            live = self.keys
            await self.bus.batch(releases)
            await self.bus.command("DEL", live.live, live.rooms, live.nicks)
            await self.bus.command("SREM", NODES, self.node)

    # --- calls ----------------------------------------------------------------

    def call(self, call: Call, done: Done, *, retry: bool = False) -> None:
        """Queue ``call``; ``done`` gets its answer, in queue order, on a later turn."""
        if not self._queue:
            self._wakeup.unpark_all()
        self._queue.append((call, done, retry))

    def _take(self) -> list[tuple[Call, Done, bool]]:
        taken, self._queue = self._queue, []
        return taken

    async def _caller(self) -> None:
        while True:
            while not self._queue:
                await self._wakeup.park()
            await trio.lowlevel.cancel_shielded_checkpoint()  # the rest of this turn's burst
            await self._send(self._take())

    async def _send(self, taken: list[tuple[Call, Done, bool]]) -> None:
        if not taken:
            return
        calls, sizes = coalesce([call for call, _, _ in taken])
        self.batches += 1
        self.calls += len(calls)
        with self.flusher.committing() if self.flusher is not None else nullcontext():
            answers = await self.bus.batch(calls)
        results: list[Any] = []
        for call, size, answer in zip(calls, sizes, answers, strict=True):
            if call.function != "tc_event":
                results.append(answer)
            elif isinstance(answer, Exception):
                results += [answer] * size
            else:
                results += answer  # one seq per event
        for (call, done, retry), result in zip(taken, results, strict=True):
            if isinstance(result, Exception) and retry:
                self._retry.append((call, done))
                continue
            done(result)

    # --- nicks ----------------------------------------------------------------

    async def claim(self, key: str, nick: str) -> bool:
        """Take ``nick`` (key ``key``) for this node; False if another node holds it."""
        lease, held = nick_lease(key), self.holder(nick)
        taken = await self.bus.call(Call("tc_claim", [lease], [held, self.lease_ms]))
        if taken != 1:
            return False
        self._nicks[lease] = held
        self.call(Call("tc_index", [self.keys.nicks], ["put", key, nick]), _ignore, retry=True)
        return True

    def release(self, key: str, nick: str, done: Done | None = None) -> None:
        """Free a nick of this node's; ``done`` is called once Redis has (or it was not held)."""
        lease = nick_lease(key)
        held = self._nicks.pop(lease, None)
        if held is None:
            if done is not None:
                done(None)
            return
        self.call(Call("tc_release", [lease], [held]), done or _ignore, retry=True)
        self.call(Call("tc_index", [self.keys.nicks], ["del", key]), _ignore, retry=True)

    def everyone(self, done: Callable[[list[str]], None]) -> None:
        """Every node's members' nicks, to ``done`` (``who`` without a room)."""

        async def ask() -> None:
            nicks: list[str] = []
            try:
                for node in await self.bus.command("SMEMBERS", NODES) or []:
                    held = await self.bus.command("HVALS", NodeKeys.of(as_text(node)).nicks) or []
                    nicks.extend(as_text(nick) for nick in held)
            except RedisError as exc:
                log.debug("redis: %s", exc)
            done(sorted(nicks, key=str.casefold))

        assert self._nursery is not None
        self._nursery.start_soon(ask)

    def listed(self, done: Callable[[list[RoomInfo]], None]) -> None:
        """Every room with members on any node, to ``done`` (``list``): the rooms each
        node's index names, each counted and named by Redis in one batch."""

        async def ask() -> None:
            rooms: list[RoomInfo] = []
            try:
                metas: set[str] = set()
                for node in await self.bus.command("SMEMBERS", NODES) or []:
                    held = await self.bus.command("SMEMBERS", NodeKeys.of(as_text(node)).rooms)
                    metas.update(as_text(meta) for meta in held or [])
                rooms = await self._room_infos(sorted(metas))
            except RedisError as exc:
                log.debug("redis: %s", exc)
            done(rooms)

        assert self._nursery is not None
        self._nursery.start_soon(ask)

    async def _room_infos(self, metas: list[str]) -> list[RoomInfo]:
        calls = []
        for meta in metas:
            keys = RoomKeys.of_meta(meta)
            calls.append(Call("tc_info", [keys.meta, keys.members], []))
        infos = []
        for meta, info in zip(metas, await self.bus.batch(calls), strict=True):
            if isinstance(info, Exception):
                raise RedisError(f"redis tc_info: {info}")
            name, members, topic = as_text(info[0]) or _key_of(meta), int(info[1]), info[2]
            if members:
                infos.append(RoomInfo(room=name, members=members, topic=as_text(topic) or None))
        return infos

    # --- rooms ----------------------------------------------------------------

    async def load(self, names: Iterable[str]) -> None:
        """Mirror each of ``names`` the hub does not hold: subscribe first, then read the
        room in one step, then hand the hub what was heard meanwhile (it merges by seq).

        A room Redis could not give is not loaded: its join is refused as ``unavailable``.
        """
        try:
            await self._load(names)
        except RedisError as exc:
            log.warning("redis: cannot load rooms: %s", exc)  # the joins say unavailable

    async def _load(self, names: Iterable[str]) -> None:
        hub = self._hub
        assert hub is not None
        async with self._subscribing:
            for name in hub.unloaded(names):
                keys = RoomKeys.of(name)
                channel = keys.channel.encode()
                self._loading[channel] = []
                self._dropped.discard(keys.channel)
                try:
                    await self.bus.subscribe({keys.channel}, sharded=self.bus.sharded)
                    snapshot = await self.bus.call(
                        Call("tc_load", [keys.meta, keys.log, keys.members], [str(hub.retention)])
                    )
                finally:
                    heard = self._loading.pop(channel)
                hub.mirror(name, keys, snapshot, heard)

    def drop(self, keys: RoomKeys) -> None:
        """The hub forgot a room: leave its channel (later, unless it is loaded again)."""
        self._dropped.add(keys.channel)
        self.call(Call("tc_index", [self.keys.rooms], ["rem", keys.meta]), _ignore, retry=True)

    def joined_room(self, keys: RoomKeys) -> None:
        self.call(Call("tc_index", [self.keys.rooms], ["add", keys.meta]), _ignore, retry=True)

    async def _leave_dropped(self) -> None:
        hub = self._hub
        assert hub is not None
        async with self._subscribing:
            gone = {channel for channel in self._dropped if not hub.hears(channel.encode())}
            self._dropped.clear()
            await self.bus.unsubscribe(gone, sharded=self.bus.sharded)

    # --- hearing --------------------------------------------------------------

    async def _listener(self) -> None:
        hub = self._hub
        assert hub is not None
        own, nicks = self.keys.channel.encode(), NICKS_CHANNEL.encode()
        while True:
            for channel, payload in await self.bus.messages():
                loading = self._loading.get(channel)
                if loading is not None:
                    loading.append(payload)
                elif channel == own:
                    hub.hear_direct(payload)
                elif channel == nicks:
                    hub.hear_rename(payload)
                else:
                    hub.hear(channel, payload)

    # --- heartbeat ------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.beat)  # a period, not a synchronisation
            try:
                await self._beat_once()
                if not self.healthy:
                    log.warning("redis: reachable again")
                self.healthy = True
                await self._check()
                await self._leave_dropped()
                await self._reap()
            except RedisError as exc:
                if self.healthy:
                    log.warning("redis: %s", exc)
                self.healthy = False

    async def _beat_once(self) -> None:
        keys = self.keys
        await self.bus.command("SET", keys.live, "1", "PX", self.lease_ms)
        await self.bus.command("SADD", NODES, self.node)
        now = trio.current_time()
        if now - self._renewed >= self.lease / 3:  # a third of a lease: soon enough
            self._renewed = now
            await self._renew(list(self._nicks.items()))
        retry, self._retry = self._retry, []
        for call, done in retry:
            self.call(call, done, retry=True)

    async def _renew(self, held: list[tuple[str, str]]) -> None:
        """Renew this node's nick leases; take again any that ran out (Redis lost it, or
        stalled past it) unless another node holds it now."""
        if not held:
            return
        calls = [Call("tc_renew", [lease], [holder, self.lease_ms]) for lease, holder in held]
        for (lease, holder), kept in zip(held, await self.bus.batch(calls), strict=True):
            if kept == 0:
                again = await self.bus.batch([Call("tc_claim", [lease], [holder, self.lease_ms])])
                if again[0] != 1:
                    log.warning("redis: nick %r of this node is now held elsewhere", holder)

    async def _check(self) -> None:
        """Re-check the shared history's id and every room's top seq."""
        hub = self._hub
        assert hub is not None
        found = await self._history_id()
        if found == self.history_id and self._lost is not None:
            found = uuid.uuid4().hex  # this node saw the loss first: a new history
            await self.bus.command("SET", HISTORY_ID, found)
        self._lost = None
        if found != self.history_id:
            log.warning("redis: the shared history is not the one this node served; clients told")
            self.history_id = found
            self.on_lost(found)
            return
        rooms = hub.mirrors()
        # Levels as they were when asked: a room may move on while the answer comes.
        levels = [room.level for room in rooms]
        tops = await self.bus.batch([Call("tc_top", [room.keys.meta], []) for room in rooms])
        for room, level, top in zip(rooms, levels, tops, strict=True):
            if not isinstance(top, Exception):
                hub.check_top(room, as_text(top[0]), int(top[1]), level)

    def lost(self, why: str) -> None:
        """Redis no longer holds what this node has (a room's epoch changed): the next
        heartbeat starts a new shared history, and every node tells its clients."""
        if self._lost is None:
            log.warning("redis: %s", why)
        self._lost = why

    async def _reap(self) -> None:
        """Announce the members of nodes whose lease ran out as left, once per dead node."""
        hub = self._hub
        assert hub is not None
        nodes = [as_text(n) for n in await self.bus.command("SMEMBERS", NODES) or []]
        for node in nodes:
            if node == self.node:
                continue
            keys = NodeKeys.of(node)
            if await self.bus.command("EXISTS", keys.live):
                continue
            if (
                await self.bus.command("SET", keys.reap, self.node, "NX", "PX", str(REAP_MS))
                is None
            ):
                continue
            metas = [as_text(m) for m in await self.bus.command("SMEMBERS", keys.rooms) or []]
            for meta in metas:
                await self._reap_room(node, RoomKeys.of_meta(meta))
            await self.bus.command("DEL", keys.rooms, keys.nicks)
            await self.bus.command("SREM", NODES, node)
            log.info(
                "redis: node %s stopped beating; its members left (%d rooms)", node, len(metas)
            )

    async def _reap_room(self, node: str, keys: RoomKeys) -> None:
        """``left{disconnected}`` for each member ``node`` had in the room (each leave is
        refused by Redis unless the member is still that node's)."""
        top = await self.bus.call(Call("tc_top", [keys.meta], []))
        name = as_text(top[2]) or _key_of(keys.meta)
        roster = await self.bus.call(Call("tc_roster", [keys.members], []))
        hub = self._hub
        assert hub is not None
        calls = []
        for holder in members_of(roster):
            if holder.node != node:
                continue
            left = Left(
                room=name, nick=holder.nick, reason=LeftReason.DISCONNECTED, seq=0, ts=now()
            )
            calls.append(event_call(keys, left, self.settings(hub.retention, node)))
        await self.bus.batch(calls)


class Holder(NamedTuple):
    """A room member as Redis keeps it."""

    key: str
    node: str
    nick: str


def members_of(flat: list[Any]) -> list[Holder]:
    """A room's members from ``tc_roster`` or ``tc_load`` (flat key, value pairs), in
    join order: each value is ``node\\nSEQ\\nnick``, SEQ that of its ``joined``."""
    joined = []
    for key, value in zip(flat[0::2], flat[1::2], strict=True):
        node, seq, nick = as_text(value).split("\n", 2)
        joined.append((int(seq), Holder(as_text(key), node, nick)))
    return [holder for _, holder in sorted(joined)]


def now() -> float:
    return round(time.time(), 3)


def _key_of(meta: str) -> str:
    """The room key in a meta key: the name of a room made by something else than a
    join, which has none."""
    return meta.partition("{r:")[2].partition("}")[0]


def _ignore(result: Any) -> None:
    if isinstance(result, Exception):
        log.debug("redis: %s", result)
