"""One process's share of a big traffic scenario, driven step by step by the coordinator.

Theory of operation
-------------------
The scenarios of :data:`harness.registry.SHARDED` split their members into
shards, one per worker process (``--workers``; with one worker the shard
runs in the coordinator's own process, the same code without the pipe). The
coordinator walks every shard through the same steps, each an order answered
by a report:

1. :class:`OpenOrder` → :class:`Opened`: connect this shard's members (lean
   clients of a :class:`~harness.swarm.Swarm`) and join the room.
2. :class:`PlanOrder` → :class:`Planned`: every member starts counting the
   phase's messages (before any shard sends one, so none is missed), then
   :class:`SendOrder` → :class:`Sent`: send this shard's senders' share of the
   open-loop schedule. Sender ``j`` of all shards together sends message ``k``
   at ``started_ns + (k x senders + j) / rate``: the clock is the machine's
   monotonic clock, the same in every process, so the schedule is one.
3. :class:`SettleOrder` → :class:`~harness.outcome.Outcome`: with every
   sender's count (from all shards), wait until each member has counted every
   sent message or the deadline passes, and judge what arrived.
   Steps 2 and 3 may be repeated: one phase after another. A plan may name
   members that sit the phase out, and the send order may have them say
   ``quit`` at a set point of the schedule (``disconnect``); :class:`GoneOrder`
   → :class:`Gone` then counts those the server closed.
4. Any time: :class:`LeftsOrder` → :class:`Lefts`, how many members have been
   told that a given member left, and why, and :class:`DeparturesOrder` →
   :class:`Departures`, whether the stayers were told of each departure
   exactly once (both only for nicks the open order named in ``watch``: lean
   members keep no roster otherwise); :class:`WhoOrder` → :class:`Listed`,
   every stayer asks ``who`` and compares the answer with the stayers;
   :class:`SyncOrder` → :class:`Synced`, every member pings the server and
   waits for its pong: a barrier, since the server answers in order.
5. :class:`CloseOrder` → :class:`Closed`: ``quit``, wait for the server to let
   go, and report the CPU spent and events received.

The coordinator adds the outcomes (:func:`harness.outcome.merge`), so each
check sees every receiver of every shard.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress

import msgspec
import trio

from harness.fleet import CONNECTS_IN_FLIGHT, QUIT_GRACE, QUIT_REASON
from harness.outcome import Outcome, Usage, judge
from harness.swarm import Member, Swarm, connect
from harness.tally import Arrivals, Book, Tally
from harness.traffic import plan
from harness.wire import counted_text, now_ns
from triochat.errors import ConnectionLost, TriochatError
from triochat.protocol import ProtocolError, encode
from triochat.protocol.codec import decode_server
from triochat.protocol.events import Limits, Ping, Quit, Welcome, Who

POLL = 0.05
SYNC_TOKEN = "harness-sync"


class OpenOrder(msgspec.Struct, tag=True):
    urls: list[str]
    nicks: list[str]
    first_index: int
    """The first member's index among all shards' (URLs go round-robin over all)."""
    room: str
    connect_within: float
    watch: list[str] = msgspec.field(default_factory=list)
    """Nicks whose ``left`` events every member keeps, for :class:`LeftsOrder`."""
    watch_prefix: str = ""
    """Nicks starting with it have their ``joined`` and ``left`` kept (:class:`BalanceOrder`)."""


class Opened(msgspec.Struct, tag=True):
    connected: int
    first_failure: str | None
    per_url: dict[str, int] = msgspec.field(default_factory=dict)
    """Members connected through each URL."""
    limits: Limits | None = None
    """What the server's ``welcome`` announced (None: nobody connected)."""


class PlanOrder(msgspec.Struct, tag=True):
    total: int
    """Messages all shards' senders send together."""
    senders: int
    """Senders in all shards together."""
    idle: list[str] = msgspec.field(default_factory=list)
    """Members that sit this phase out: they neither send nor are judged (they leave in it)."""


class Planned(msgspec.Struct, tag=True):
    """Every member now counts the phase's messages: sending may begin anywhere."""


class SendOrder(msgspec.Struct, tag=True):
    started_ns: int
    rate: float
    first_sender: int
    """This shard's first sender's index among all shards' senders."""
    quit: list[str] = msgspec.field(default_factory=list)
    """Members that say ``quit`` at ``quit_at_ns``, amid the sending (those of other
    shards are ignored): a departure at a set point of the schedule."""
    quit_at_ns: int = 0


class Sent(msgspec.Struct, tag=True):
    sent: list[int]
    """Per sender of all shards: what this shard's senders sent (others 0)."""
    send_failures: int
    max_send_lag_ms: float


class SettleOrder(msgspec.Struct, tag=True):
    sent: list[int]
    """Every sender's count, from all shards."""
    deadline_ns: int


class LeftsOrder(msgspec.Struct, tag=True):
    nick: str
    """One of the open order's ``watch``."""


class Lefts(msgspec.Struct, tag=True):
    members: int
    told: int
    """Members that got at least one ``left`` of the nick."""
    once: int
    """Members that got exactly one."""
    reasons: list[str]
    """Every reason those ``left`` events gave, once each."""
    first_ns: int | None
    """When the first of them arrived (the machine's monotonic clock)."""

    @staticmethod
    def of(tallies: list[Tally], nick: str) -> Lefts:
        """What ``tallies`` were told of ``nick`` leaving (kept: a roster, or watched)."""
        seen = [tally.left_of(nick) for tally in tallies]
        firsts = [lefts[0].at_ns for lefts in seen if lefts]
        return Lefts(
            members=len(seen),
            told=sum(1 for lefts in seen if lefts),
            once=sum(1 for lefts in seen if len(lefts) == 1),
            reasons=sorted({left.reason for lefts in seen for left in lefts}),
            first_ns=min(firsts, default=None),
        )

    @staticmethod
    def merge(parts: list[Lefts]) -> Lefts:
        firsts = [part.first_ns for part in parts if part.first_ns is not None]
        return Lefts(
            members=sum(part.members for part in parts),
            told=sum(part.told for part in parts),
            once=sum(part.once for part in parts),
            reasons=sorted({reason for part in parts for reason in part.reasons}),
            first_ns=min(firsts, default=None),
        )


class GoneOrder(msgspec.Struct, tag=True):
    nicks: list[str]


class Gone(msgspec.Struct, tag=True):
    named: int
    """Named members in this shard."""
    closed: int
    """Of those, how many the server has closed."""


class DeparturesOrder(msgspec.Struct, tag=True):
    room: str
    departed: list[str]
    reason: str
    """The reason each of their ``left`` events must give."""
    stayers: list[str]
    """Every stayer's nick, all shards': members not named here are not judged."""
    judge: bool = True
    """False: only count the stayers told of as many departures as there were (cheap,
    for waiting); ``wrong`` is then 0."""


class Departures(msgspec.Struct, tag=True):
    stayers: int
    told: int
    """Stayers told of every departure (at least once)."""
    wrong: int
    """Departures a stayer saw other than once with the reason, and stayers seen leaving."""
    example: str | None

    @staticmethod
    def of(members: list[tuple[str, Tally]], order: DeparturesOrder) -> Departures:
        """What the stayers among ``members`` (nick, tally) saw of ``order``'s departures."""
        stayers = set(order.stayers)
        judged = [(nick, tally) for nick, tally in members if nick in stayers]
        if not order.judge:
            due = len(order.departed)
            told = sum(1 for _, tally in judged if len(tally.lefts) >= due)
            return Departures(len(judged), told, 0, None)
        told = wrong = 0
        example = None
        for nick, tally in judged:
            reasons: dict[str, list[str]] = {}
            for left in tally.lefts:
                if left.room == order.room:
                    reasons.setdefault(left.nick, []).append(left.reason)
            told += all(gone in reasons for gone in order.departed)
            for gone in order.departed:
                if reasons.get(gone, []) != [order.reason]:
                    wrong += 1
                    example = example or f"{nick} saw {reasons.get(gone, [])} for {gone}"
            spurious = [other for other in reasons if other in stayers]
            if spurious:
                wrong += 1
                example = example or f"{nick} saw {spurious[0]} leave"
        return Departures(len(judged), told, wrong, example)

    @staticmethod
    def merge(parts: list[Departures]) -> Departures:
        return Departures(
            stayers=sum(part.stayers for part in parts),
            told=sum(part.told for part in parts),
            wrong=sum(part.wrong for part in parts),
            example=next((part.example for part in parts if part.example), None),
        )


class WhoOrder(msgspec.Struct, tag=True):
    room: str
    stayers: list[str]
    """Every stayer's nick, all shards': what ``who`` must list, and who asks."""
    within: float
    askers: int = 0
    """At most this many stayers of each shard ask (0: all). Each answer lists the whole
    room, so every one of N members asking costs the server and the shards O(N^2) bytes."""


class SyncOrder(msgspec.Struct, tag=True):
    within: float


class Synced(msgspec.Struct, tag=True):
    asked: int
    answered: int
    """Members whose pong came within the order's time: each has read every event the
    server queued for it before."""

    @staticmethod
    def merge(parts: list[Synced]) -> Synced:
        return Synced(sum(part.asked for part in parts), sum(part.answered for part in parts))


class Listed(msgspec.Struct, tag=True):
    stayers: int
    answered: int
    mismatched: int
    example: list[str] | None
    """The first list that differs, sorted, its first five."""

    @staticmethod
    def of(lists: Sequence[Sequence[str] | None], stayers: list[str]) -> Listed:
        """``lists[i]``: what stayer ``i``'s ``who`` answered (None: no answer in time)."""
        wanted = set(stayers)
        answers = [answer for answer in lists if answer is not None]
        wrong = [answer for answer in answers if set(answer) != wanted]
        example = sorted(wrong[0])[:5] if wrong else None
        return Listed(len(lists), len(answers), len(wrong), example)

    @staticmethod
    def merge(parts: list[Listed]) -> Listed:
        return Listed(
            stayers=sum(part.stayers for part in parts),
            answered=sum(part.answered for part in parts),
            mismatched=sum(part.mismatched for part in parts),
            example=next((part.example for part in parts if part.example), None),
        )


class BalanceOrder(msgspec.Struct, tag=True):
    churned: list[str]
    """Clients that came and went (their nicks start with the open order's prefix)."""


class Balance(msgspec.Struct, tag=True):
    stable: int
    churned: int
    wrong: int
    """(member, churned client) pairs other than one ``joined`` and one ``left``."""
    example: str | None

    @staticmethod
    def of(members: list[tuple[str, Tally]], churned: list[str]) -> Balance:
        wrong = 0
        example = None
        for nick, tally in members:
            lefts: Counter[str] = Counter(left.nick for left in tally.lefts)
            for gone in churned:
                if tally.joined[gone] != 1 or lefts[gone] != 1:
                    wrong += 1
                    example = example or (
                        f"{nick} saw {gone} join {tally.joined[gone]}x, leave {lefts[gone]}x"
                    )
        return Balance(len(members), len(churned), wrong, example)

    @staticmethod
    def merge(parts: list[Balance]) -> Balance:
        return Balance(
            stable=sum(part.stable for part in parts),
            churned=max(part.churned for part in parts),
            wrong=sum(part.wrong for part in parts),
            example=next((part.example for part in parts if part.example), None),
        )


class CloseOrder(msgspec.Struct, tag=True):
    pass


class Closed(msgspec.Struct, tag=True):
    cpu_s: float
    events: int


class Failed(msgspec.Struct, tag=True):
    """A worker's step raised: one line saying what."""

    error: str


Order = (
    OpenOrder
    | PlanOrder
    | SendOrder
    | SettleOrder
    | LeftsOrder
    | GoneOrder
    | DeparturesOrder
    | WhoOrder
    | SyncOrder
    | BalanceOrder
    | CloseOrder
)
Answer = (
    Opened
    | Planned
    | Sent
    | Outcome
    | Lefts
    | Gone
    | Departures
    | Listed
    | Synced
    | Balance
    | Closed
    | Failed
)


def _limits(lines: list[bytes]) -> list[Limits]:
    """The limits the ``welcome`` among ``lines`` announced."""
    found = []
    for line in lines:
        if line.startswith(b'{"type":"welcome"'):
            with suppress(ProtocolError):  # a garbled welcome announces nothing
                event = decode_server(line)
                if isinstance(event, Welcome):
                    found.append(event.limits)
    return found


async def await_deliveries(arrived: Callable[[], bool], deadline_ns: int) -> None:
    """Until ``arrived()`` or the deadline passed (polled: tallies count as the reader
    reads, and tell nobody)."""
    while not arrived() and now_ns() < deadline_ns:  # noqa: ASYNC110
        await trio.sleep(POLL)


class Shard:
    """Members in this process; runs in the caller's nursery until :meth:`close`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.swarm = Swarm()
        self._reading = trio.CancelScope()
        self._read_done = trio.Event()
        self._book: Book | None = None
        self._phase_members: list[Member] = []
        """The members that send and are judged in the current phase."""
        self._room = ""
        self._sent: Sent | None = None
        self._usage = Usage()
        self._reads_before = (0, 0)
        """The swarm's reads and lines when the current phase was planned."""
        self._started_cpu_s = time.process_time()

    async def open(self, order: OpenOrder) -> Opened:
        self._room = order.room
        limiter = trio.CapacityLimiter(CONNECTS_IN_FLIGHT)
        failures: list[str] = []
        joined: list[Member] = []
        watch = frozenset(order.watch)
        announced: list[Limits] = []

        async def one(i: int, nick: str) -> None:
            index = order.first_index + i
            url = order.urls[index % len(order.urls)]
            async with limiter:
                try:
                    member, early = await connect(
                        index, url, nick, [order.room], order.connect_within
                    )
                except (TriochatError, ProtocolError, OSError) as exc:
                    failures.append(str(exc))
                    return
            # Read it from now on: every later member's join reaches it, and a member
            # left unread until all are in would be evicted by the server, its outbox full.
            member.tally.watch = watch
            member.tally.watch_prefix = order.watch_prefix
            self.swarm.add(member, early)
            if not announced:
                announced.extend(_limits(early))
            joined.append(member)

        self._nursery.start_soon(self._read)
        async with trio.open_nursery() as nursery:
            for i, nick in enumerate(order.nicks):
                nursery.start_soon(one, i, nick)
        per_url: dict[str, int] = {}
        for member in joined:
            url = order.urls[member.index % len(order.urls)]
            per_url[url] = per_url.get(url, 0) + 1
        first = failures[0] if failures else None
        return Opened(len(joined), first, per_url, announced[0] if announced else None)

    async def _read(self) -> None:
        try:
            with self._reading:
                await self.swarm.run()
        finally:
            self._read_done.set()

    def plan(self, order: PlanOrder) -> Planned:
        book = Book(plan(order.total, order.senders))
        idle = set(order.idle)
        self._phase_members = [m for m in self.swarm.members if m.nick not in idle]
        for member in self._phase_members:
            member.tally.follow(book)
        self._book = book
        self._usage = Usage()
        self._reads_before = (self.swarm.reads, self.swarm.lines)
        return Planned()

    async def send(self, order: SendOrder) -> Sent:
        book = self._book
        assert book is not None, "send before plan"
        book.started_ns = order.started_ns
        senders = len(book.planned)
        sent = [0] * senders
        lag = [0.0]
        failures = [0]
        async with trio.open_nursery() as nursery:
            for position, member in enumerate(self._phase_members):
                j = order.first_sender + position
                nursery.start_soon(self._series, order, book, j, member, sent, lag, failures)
            if order.quit:
                nursery.start_soon(self._quit_at, order)
        self._sent = Sent(sent, failures[0], round(lag[0], 3))
        return self._sent

    async def _series(
        self,
        order: SendOrder,
        book: Book,
        j: int,
        member: Member,
        sent: list[int],
        lag: list[float],
        failures: list[int],
    ) -> None:
        for k in range(book.planned[j]):
            scheduled = order.started_ns + int((k * len(book.planned) + j) * 1e9 / order.rate)
            delay = (scheduled - now_ns()) / 1e9
            if delay > 0:
                await trio.sleep(delay)
            if not member.alive:
                return
            try:
                await member.say(self._room, counted_text(j, k, scheduled))
            except ConnectionLost:
                failures[0] += 1
                return
            sent[j] += 1
            lag[0] = max(lag[0], (now_ns() - scheduled) / 1e6)

    async def settle(self, order: SettleOrder) -> Outcome:
        book, own = self._book, self._sent
        assert book is not None, "settle before send"
        assert own is not None, "settle before send"
        members = self._phase_members
        sent = sum(order.sent)
        arrivals = Arrivals(book, members)
        await await_deliveries(lambda: arrivals.all_in(sent), order.deadline_ns)
        return judge(
            book,
            [member.tally for member in members],
            judged_sent=order.sent,
            own_sent=own.sent,
            complete=arrivals.complete(sent),
            closed=arrivals.closed,
            send_failures=own.send_failures,
            max_send_lag_ms=own.max_send_lag_ms,
            usage=self._usage,
            reads=(
                self.swarm.reads - self._reads_before[0],
                self.swarm.lines - self._reads_before[1],
            ),
        )

    def lefts(self, order: LeftsOrder) -> Lefts:
        return Lefts.of([member.tally for member in self.swarm.members], order.nick)

    async def _quit_at(self, order: SendOrder) -> None:
        await trio.sleep_until(trio.current_time() + (order.quit_at_ns - now_ns()) / 1e9)
        named = set(order.quit)
        line = encode(Quit(reason=QUIT_REASON))
        for member in self.swarm.members:
            if member.nick in named and member.alive:
                with suppress(ConnectionLost):
                    await member.send_line(line)

    def gone(self, order: GoneOrder) -> Gone:
        named = set(order.nicks)
        mine = [m for m in self.swarm.members if m.nick in named]
        return Gone(len(mine), sum(1 for m in mine if m.closed_at_ns is not None))

    def departures(self, order: DeparturesOrder) -> Departures:
        return Departures.of([(m.nick, m.tally) for m in self.swarm.members], order)

    async def who(self, order: WhoOrder) -> Listed:
        """Every stayer of this shard asks ``who``; what they were told, once all answered
        (or ``within`` passed)."""
        stayers = set(order.stayers)
        asking = [m for m in self.swarm.members if m.nick in stayers][: order.askers or None]
        answered = await _ask(
            asking, encode(Who(room=order.room)), lambda m: m.tally.members_replies, order.within
        )
        return Listed.of(
            [
                m.tally.members.get(order.room, []) if done else None
                for m, done in zip(asking, answered, strict=True)
            ],
            order.stayers,
        )

    async def sync(self, order: SyncOrder) -> Synced:
        """Every live member pings and waits for its pong: O(1) bytes each, where an
        answer to ``who`` lists the whole room."""
        asking = [m for m in self.swarm.members if m.alive]
        line = encode(Ping(token=SYNC_TOKEN))
        answered = await _ask(asking, line, lambda m: m.tally.pongs, order.within)
        return Synced(len(asking), sum(answered))

    async def close(self) -> Closed:
        for member in self.swarm.members:  # nothing asks any more: no rosters of the goodbyes
            member.tally.watch, member.tally.watch_prefix = frozenset(), ""
        await self.swarm.quit(QUIT_REASON, QUIT_GRACE)
        self._reading.cancel()
        await self._read_done.wait()  # no task waits on the sockets when they close
        self.swarm.release()
        events = sum(member.tally.events for member in self.swarm.members)
        return Closed(round(time.process_time() - self._started_cpu_s, 3), events)

    async def handle(self, order: Order) -> Answer:
        """Carry out one order (the worker's loop and the in-process path both come here)."""
        if isinstance(order, OpenOrder):
            return await self.open(order)
        if isinstance(order, PlanOrder):
            return self.plan(order)
        if isinstance(order, SendOrder):
            return await self.send(order)
        if isinstance(order, SettleOrder):
            return await self.settle(order)
        if isinstance(order, LeftsOrder):
            return self.lefts(order)
        if isinstance(order, GoneOrder):
            return self.gone(order)
        if isinstance(order, DeparturesOrder):
            return self.departures(order)
        if isinstance(order, WhoOrder):
            return await self.who(order)
        if isinstance(order, SyncOrder):
            return await self.sync(order)
        if isinstance(order, BalanceOrder):
            members = [(m.nick, m.tally) for m in self.swarm.members]
            return Balance.of(members, order.churned)
        return await self.close()


async def _ask(
    members: list[Member], line: bytes, answers: Callable[[Member], int], within: float
) -> list[bool]:
    """Send ``line`` to every member and wait (``within`` s at most) until each has
    counted one more answer. Events reach a member in order, so an answer also means
    that everything the server queued for it before has arrived. Who answered."""
    before = [answers(m) for m in members]
    for member in members:
        if member.alive:
            with suppress(ConnectionLost):
                await member.send_line(line)

    def answered() -> list[bool]:
        return [answers(m) > b for m, b in zip(members, before, strict=True)]

    with trio.move_on_after(within):
        # A poll: tallies count as the swarm reads, and signal nothing.
        while not all(answered()):  # noqa: ASYNC110
            await trio.sleep(POLL)
    return answered()
