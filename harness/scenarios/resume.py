"""``resume``: clients drop mid-broadcast, come back with ``hello.resume`` and miss nothing.

Theory of operation
-------------------
N - D *stayers* send counted traffic (open loop, spread over at least
:data:`MIN_TRAFFIC_S` seconds so there is a "mid" to drop in). D *droppers*
(N/5, at least 2 where N allows, so both kinds run) only receive. Each drops
at a seeded random moment early in the schedule, alternately

* by a **clean close**: the client library's close (WebSocket close handshake,
  or a TCP FIN), or
* **abruptly**: a raw socket closed with ``SO_LINGER`` 0, i.e. a TCP reset,

stays away a seeded random while as the others keep sending, then reconnects
through the client library with the same nick and
``resume={room: the last seq it received}``.

The server's promise (docs/protocol.md): the resumed client first gets its own
``joined`` (seq J), then the replay as ``history`` pages, oldest first, holding
exactly the seqs it missed (last + 1 .. J - 1), then ``members``, then live
events (J + 1, ...). A :class:`Resumption` merges the way any client must: it
holds its ``joined`` back until the replay is in, so the receiver's
:class:`~harness.tally.Tally` sees one stream of room events and the ordinary
checks apply unchanged across session 1, replay and session 2. Nothing is
deduplicated: a replayed copy of a message the client already had is a
*duplicate*, a seq the replay skipped is a *gap*, both failures.

The nick: the server frees it once it has noticed the old session end, which
after a reset can take a moment. The dropper does not wait for a ``left``
(only other members see it); it retries ``Rejected(nick_taken)`` with a short
doubling backoff for up to ``--settle`` seconds, and the retries are reported.

Droppers read typed events (``Client.receive``), not raw lines: the events
that arrive in the same read as ``welcome`` (the resumed client's ``joined``
and replay) are only returned that way.
"""

from __future__ import annotations

import math
import statistics
from contextlib import suppress
from dataclasses import dataclass, field
from enum import Enum, auto

import trio
from wsproto.utilities import LocalProtocolError

from harness import sharded
from harness.context import Context
from harness.fleet import (
    CONNECT_TIMEOUT,
    CONNECT_TIMEOUT_PER_CLIENT,
    QUIT_REASON,
    SEND_ERRORS,
    Fleet,
    Sim,
)
from harness.model import ScenarioResult
from harness.outcome import Outcome, Usage, judge, merge
from harness.raw import RawClient, open_raw
from harness.shard import await_deliveries
from harness.swarm import lean_url
from harness.tally import Book, Tally
from harness.traffic import Phase, outcome_checks, plan, run_phase
from harness.trust import open_client
from harness.wire import ROOM_EVENTS, Line, decode_line, now_ns, parse_counted
from harness.workers import Handler, open_shards
from triochat.client import Client
from triochat.errors import ConnectError, ConnectionLost, Rejected, TriochatError
from triochat.protocol import ErrorCode, ProtocolError, decode_server, encode
from triochat.protocol.events import HistoryPage, Ping, Pong, ServerEvent, Welcome

NAME = "resume"
PROVES = (
    "clients that drop mid-broadcast (clean close or reset) and reconnect with resume end with"
    " every message exactly once, the replay before live events"
)
CLEAN, RESET = "clean close", "reset"
KINDS = (CLEAN, RESET)
MIN_TRAFFIC_S = 1.0
"""The traffic lasts at least this long (its rate is lowered if need be)."""
DROP_AT = (0.15, 0.35)
"""When a dropper drops, as a fraction of the traffic's duration (seeded uniform)."""
AWAY = (0.2, 0.35)
"""How long it stays away, as a fraction of the traffic's duration (seeded uniform)."""
RETRY_FIRST_S = 0.01
RETRY_MOST_S = 0.2
CLOSE_GRACE_S = 5.0


class Stage(Enum):
    AWAITING_JOIN = auto()
    AWAITING_REPLAY = auto()
    REPLAYING = auto()
    LIVE = auto()


def as_line(event: ServerEvent) -> Line:
    """The harness's view of a typed event (the few fields a tally reads)."""
    return decode_line(encode(event))


def _is_room_event(line: Line, room: str) -> bool:
    return line.room == room and (line.type in ROOM_EVENTS or line.type == "members")


class Resumption:
    """One resumed session's events, merged in seq order into the receiver's tally.

    Own ``joined`` (seq J) is held back until the replay is in; the replay must
    hold exactly the seqs ``after + 1 .. J - 1``, each once, in ``history``
    pages that come before any live event. Anything else is a violation.
    """

    def __init__(self, tally: Tally, room: str, nick: str, after: int) -> None:
        self.tally = tally
        self.room = room
        self.nick = nick
        self.after = after
        self.stage = Stage.AWAITING_JOIN
        self.held: Line | None = None
        self.replayed_seqs: list[int] = []
        self.pages = 0
        self.replayed_messages = 0
        self.violations: list[str] = []
        self.done_ns: int | None = None

    def take(self, event: ServerEvent, stamp: int) -> None:
        if isinstance(event, HistoryPage) and event.room == self.room:
            self._page(event, stamp)
            return
        line = as_line(event)
        if self.stage is Stage.AWAITING_JOIN and self._own_join(line):
            self.held = line
            self.stage = Stage.AWAITING_REPLAY
            return
        if self.stage in (Stage.AWAITING_REPLAY, Stage.REPLAYING) and _is_room_event(
            line, self.room
        ):
            if self.stage is Stage.AWAITING_REPLAY and line.type != "members":
                self.violations.append(f"live {line.type} (seq {line.seq}) before the replay")
            self._finish(stamp)
        self.tally.take_line(line, stamp)

    def _own_join(self, line: Line) -> bool:
        return line.type == "joined" and line.room == self.room and line.nick == self.nick

    def _page(self, page: HistoryPage, stamp: int) -> None:
        if self.stage in (Stage.AWAITING_REPLAY, Stage.REPLAYING):
            self.stage = Stage.REPLAYING
        else:
            self.violations.append(f"a history page while {self.stage.name.lower()}")
        self.pages += 1
        for event in page.events:
            line = as_line(event)
            self.replayed_seqs.append(line.seq)
            if line.type == "message" and parse_counted(line.text) is not None:
                self.replayed_messages += 1
            self.tally.take_line(line, stamp, replayed=True)

    def _finish(self, stamp: int) -> None:
        """The replay is in: check it covered exactly the gap, then release own ``joined``."""
        if self.stage is Stage.AWAITING_REPLAY:
            self.violations.append("no history page after joined")
        assert self.held is not None
        missed = list(range(self.after + 1, self.held.seq))
        if self.replayed_seqs != missed:
            self.violations.append(
                f"replayed seqs {_span(self.replayed_seqs)}, expected {_span(missed)}"
            )
        self.tally.take_line(self.held, stamp)
        self.stage = Stage.LIVE
        self.done_ns = stamp


def _span(seqs: list[int]) -> str:
    if not seqs:
        return "none"
    return f"{seqs[0]}..{seqs[-1]} ({len(seqs)} events)"


@dataclass(eq=False)
class Dropper:
    """A receiver that drops (``kind``) when ``drop_scope``'s deadline passes, then resumes."""

    sim: Sim
    room: str
    kind: str
    patience: float
    """Seconds to connect, and to keep retrying ``nick_taken`` when resuming."""
    away_s: float = 0.0
    drop_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stop: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    connected: bool = False
    settled: bool = False
    step: str = "connecting"
    failure: str | None = None
    server_ids: list[str] = field(default_factory=list)
    dropped_ns: int | None = None
    reconnect_ns: int | None = None
    nick_retries: int = 0
    close_race: bool = False
    resumption: Resumption | None = None
    client: Client | None = None
    """The resumed session's client, while it is open."""
    leaving: bool = False
    """The scenario is over and this dropper said ``quit``: the server closing is expected."""

    @property
    def resumed(self) -> bool:
        return self.resumption is not None and self.resumption.done_ns is not None

    def resume_ms(self) -> float | None:
        """From the start of the reconnect to the replay being in."""
        if self.resumption is None or self.resumption.done_ns is None or not self.reconnect_ns:
            return None
        return (self.resumption.done_ns - self.reconnect_ns) / 1e6

    async def run(self, ready: trio.Semaphore) -> None:
        try:
            await (self._clean_session(ready) if self.kind == CLEAN else self._reset_session(ready))
            self.dropped_ns = now_ns()
            self.step = "away"
            await trio.sleep(self.away_s)
            await self._resume()
        except* LocalProtocolError:
            # trio-websocket's Pong-after-Close race (see harness.fleet): harmless at the end.
            self.close_race = True
            if not self.resumed:
                self.failure = f"{self.step}: WebSocket close race"
        except* (TriochatError, ProtocolError, OSError) as group:
            self.failure = f"{self.step}: {_first_leaf(group)}"
        finally:
            self._settle(ready)
            self.ended.set()

    def _settle(self, ready: trio.Semaphore) -> None:
        if not self.settled:
            self.settled = True
            ready.release()

    def _welcomed(self, server_id: str | None, ready: trio.Semaphore) -> None:
        """Session 1 is up; ``server_id`` unless the welcome was already taken in."""
        if server_id is not None:
            self.server_ids.append(server_id)
        self.connected = True
        self.step = "before its drop"
        self._settle(ready)

    # --- session 1 ------------------------------------------------------------------------

    async def _clean_session(self, ready: trio.Semaphore) -> None:
        async with open_client(
            self.sim.url, self.sim.nick, rooms=[self.room], connect_timeout=self.patience
        ) as client:
            self._welcomed(client.welcome.server_id if client.welcome else "?", ready)
            with self.drop_scope:
                while True:
                    self._take_first(await client.receive())
            self.step = "closing"

    async def _reset_session(self, ready: trio.Semaphore) -> None:
        with trio.CancelScope(deadline=trio.current_time() + self.patience) as connecting:
            async with open_raw(self.sim.url) as raw:
                lines = await raw.hello(self.sim.nick, [self.room])
                connecting.deadline = math.inf
                await self._take_raw(raw, lines)
                self._welcomed(None, ready)
                with self.drop_scope:
                    while True:
                        await self._take_raw(raw, await raw.receive_lines())
                self.step = "resetting"
                await raw.reset()
        if connecting.cancelled_caught:
            raise ConnectError(f"{self.sim.url}: timed out")

    async def _take_raw(self, raw: RawClient, lines: list[bytes]) -> None:
        for raw_line in lines:
            try:
                event = decode_server(raw_line)
            except ProtocolError:
                self.sim.tally.garbled += 1
                continue
            if isinstance(event, Ping):  # a raw TCP client answers keepalives itself
                await raw.send_line(encode(Pong(token=event.token)))
            self._take_first(event)

    def _take_first(self, event: ServerEvent) -> None:
        if isinstance(event, Welcome):
            self.server_ids.append(event.server_id)
        elif not isinstance(event, HistoryPage):  # the recent past on join: not counted
            self.sim.tally.take_line(as_line(event), now_ns())

    # --- session 2 ------------------------------------------------------------------------

    async def _resume(self) -> None:
        """Reconnect with ``resume``; retry while the old session still holds the nick."""
        self.step = "resuming"
        self.reconnect_ns = now_ns()
        after = self.sim.tally.last_seq(self.room) or 0
        self.resumption = Resumption(self.sim.tally, self.room, self.sim.nick, after)
        give_up = trio.current_time() + self.patience
        delay = RETRY_FIRST_S
        while True:
            try:
                async with open_client(
                    self.sim.url,
                    self.sim.nick,
                    rooms=[self.room],
                    resume={self.room: after},
                    connect_timeout=self.patience,
                ) as client:
                    await self._resumed_session(client)
                return
            except Rejected as exc:
                if exc.code != ErrorCode.NICK_TAKEN or trio.current_time() > give_up:
                    raise
            self.nick_retries += 1
            await trio.sleep(delay)
            delay = min(2 * delay, RETRY_MOST_S)

    async def _resumed_session(self, client: Client) -> None:
        assert self.resumption is not None
        self.server_ids.append(client.welcome.server_id if client.welcome else "?")
        self.step = "after resuming"
        self.client = client
        with self.stop:
            try:
                while True:
                    self.resumption.take(await client.receive(), now_ns())
            except ConnectionLost:
                if not self.leaving:
                    raise

    async def leave(self) -> None:
        """Say ``quit`` on the resumed session, if it is open; the server then closes it."""
        self.leaving = True
        if self.client is not None:
            with suppress(*SEND_ERRORS):
                await self.client.quit(QUIT_REASON)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# --- the scenario ---------------------------------------------------------------------------


def _drop_count(n: int) -> int:
    return min(max(2, n // 5), n - 1)


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients, 3)
    count = _drop_count(n)
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        if all(lean_url(url) for url in target.urls):
            droppers = await _sharded(ctx, result, target.urls, n, count)
        else:
            droppers = await _in_process(ctx, result, fleet, target.urls, n, count)
        await fleet.close(notes=result.notes)
        races = sum(1 for dropper in droppers if dropper.close_race)
        if races:
            result.notes.append(
                f"{races} dropper closes met trio-websocket's Pong-after-Close race"
            )


def _droppers(ctx: Context, urls: list[str], n: int, count: int, patience: float) -> list[Dropper]:
    """The scenario's ``count`` droppers, numbered after its ``n - count`` stayers."""
    room = ctx.room(NAME)
    return [
        Dropper(
            Sim(n - count + i, ctx.nick(NAME, f"d{i}"), urls[i % len(urls)], [room]),
            room,
            KINDS[i % len(KINDS)],
            patience=max(ctx.options.settle, patience),
        )
        for i in range(count)
    ]


async def _start(droppers: list[Dropper], nursery: trio.Nursery) -> None:
    """Start every dropper's session 1; return once each is up or has failed."""
    ready = trio.Semaphore(0)
    for dropper in droppers:
        nursery.start_soon(dropper.run, ready)
    for _ in droppers:
        await ready.acquire()


async def _in_process(
    ctx: Context, result: ScenarioResult, fleet: Fleet, urls: list[str], n: int, count: int
) -> list[Dropper]:
    room = ctx.room(NAME)
    ctx.progress(f"{NAME}: connecting {n}", 0, n)
    stayers = await fleet.open([ctx.nick(NAME, str(i)) for i in range(n - count)], [room])
    droppers = _droppers(ctx, urls, n, count, fleet.connect_timeout)
    async with trio.open_nursery() as dropping:
        await _start(droppers, dropping)
        failures = [sim.failure or "?" for sim in stayers if sim.client is None]
        if _connect_check(result, len(stayers), failures, droppers):
            phase = await _traffic(ctx, room, fleet.connected(), droppers)
            others = [sim.tally.received() for sim in phase.receivers[: len(stayers)]]
            _checks(result, phase.outcome(), (min(others), max(others)), droppers)
        await _stop(ctx, droppers)
        dropping.cancel_scope.cancel()
    return droppers


async def _sharded(
    ctx: Context, result: ScenarioResult, urls: list[str], n: int, count: int
) -> list[Dropper]:
    """The stayers in ``--workers`` shards; the droppers (the client library's clients,
    reconnecting) stay in this process and are judged with them."""
    room = ctx.room(NAME)
    stayers = n - count
    patience = max(CONNECT_TIMEOUT, CONNECT_TIMEOUT_PER_CLIENT * stayers)
    droppers = _droppers(ctx, urls, n, count, patience)
    async with open_shards(max(1, min(ctx.options.workers, stayers))) as shards:
        members = await sharded.open_members(ctx, result, NAME, shards, urls, stayers, room)
        async with trio.open_nursery() as dropping:
            await _start(droppers, dropping)
            failures = [members.first_failure or "?"] * (stayers - members.connected)
            if _connect_check(result, stayers, failures, droppers):
                outcome, others = await _traffic_sharded(ctx, shards, members, droppers)
                _checks(result, outcome, others, droppers)
            await _stop(ctx, droppers)
            dropping.cancel_scope.cancel()
        ctx.progress(f"{NAME}: closing", 0, 1)
        await sharded.close(result, shards)
    return droppers


def _connect_check(
    result: ScenarioResult, stayers: int, failures: list[str], droppers: list[Dropper]
) -> bool:
    """``failures``: the stayers' (one each that did not connect)."""
    failures = failures + [d.failure or "?" for d in droppers if not d.connected]
    total = stayers + len(droppers)
    first = f"; first failure: {failures[0]}" if failures else ""
    return result.check(
        "all connected",
        "every simulated client connects and is welcomed",
        not failures,
        f"{total - len(failures)}/{total} connected{first}",
    )


def _schedule(ctx: Context, droppers: list[Dropper]) -> tuple[int, float]:
    """The traffic's size and rate, and each dropper's drop and time away (seeded)."""
    total = ctx.options.fault_messages()
    rate = min(ctx.options.send_rate(), total / MIN_TRAFFIC_S)
    span = total / rate
    start = trio.current_time()
    rng = ctx.rng(NAME)
    for dropper in droppers:
        dropper.drop_scope.deadline = start + rng.uniform(*DROP_AT) * span
        dropper.away_s = rng.uniform(*AWAY) * span
    return total, rate


async def _traffic(ctx: Context, room: str, stayers: list[Sim], droppers: list[Dropper]) -> Phase:
    """Counted traffic from the stayers while each dropper drops, waits and resumes."""
    total, rate = _schedule(ctx, droppers)
    receivers = stayers + [dropper.sim for dropper in droppers]
    # Reconnecting is a join that every member hears, plus a replay: at large N
    # the droppers catch up as slowly as they connected in the first place.
    catch_up = CONNECT_TIMEOUT_PER_CLIENT * len(receivers)
    return await run_phase(
        ctx, NAME, "", room, stayers, receivers, total, rate=rate, extra_settle=catch_up
    )


async def _traffic_sharded(
    ctx: Context, shards: list[Handler], members: sharded.Members, droppers: list[Dropper]
) -> tuple[Outcome, tuple[int, int]]:
    """:func:`_traffic` with the stayers in shards: the outcome of every receiver, and the
    fewest and most messages a stayer got."""
    catch_up = CONNECT_TIMEOUT_PER_CLIENT * (members.connected + len(droppers))
    total, rate = _schedule(ctx, droppers)
    planned = await sharded.plan_phase(
        ctx, NAME, "", shards, members, total, rate=rate, extra_settle=catch_up
    )
    book = Book(plan(total, planned.senders), planned.started_ns)
    tallies = [dropper.sim.tally for dropper in droppers]
    for tally in tallies:
        tally.follow(book)
    usage = Usage()
    sent = await sharded.send_phase(ctx, shards, planned)
    wanted = sum(sent) * len(tallies)
    async with trio.open_nursery() as settling:
        settling.start_soon(await_deliveries, lambda: book.delivered >= wanted, planned.deadline_ns)
        stayers = await sharded.settle_phase(ctx, shards, planned)
    mine = judge(
        book,
        tallies,
        judged_sent=sent,
        own_sent=[0] * len(sent),
        complete=book.delivered >= wanted,
        send_failures=0,
        max_send_lag_ms=0.0,
        usage=usage,
    )
    return merge([stayers, mine]), (stayers.fewest, stayers.most)


async def _stop(ctx: Context, droppers: list[Dropper]) -> None:
    """Resumed sessions quit (within a grace), then stop reading; the caller cancels the rest."""
    ctx.progress(f"{NAME}: closing", 0, 1)
    with trio.move_on_after(CLOSE_GRACE_S):
        for dropper in droppers:
            await dropper.leave()
        for dropper in droppers:
            if dropper.resumption is not None:
                await dropper.ended.wait()
    for dropper in droppers:
        dropper.stop.cancel()


def _checks(
    result: ScenarioResult, outcome: Outcome, others: tuple[int, int], droppers: list[Dropper]
) -> None:
    """``others``: the fewest and most counted messages a client that stayed got."""
    outcome_checks(result, "", outcome, "every client, resumed ones included,")
    _resumed_check(result, droppers)
    _replay_check(result, droppers)
    _count_check(result, sum(outcome.sent), others, droppers)
    _figures(result, sum(outcome.sent), droppers)


def _resumed_check(result: ScenarioResult, droppers: list[Dropper]) -> None:
    problems = []
    for dropper in droppers:
        if dropper.failure or not dropper.resumed:
            problems.append(
                f"{dropper.sim.nick} ({dropper.kind}): {dropper.failure or dropper.step}"
            )
        elif len(set(dropper.server_ids)) != 1:
            problems.append(f"{dropper.sim.nick}: server_id changed {dropper.server_ids}")
    done = len(droppers) - len(problems)
    kinds = ", ".join(f"{sum(d.kind == k for d in droppers)} by {k}" for k in KINDS)
    retries = sum(dropper.nick_retries for dropper in droppers)
    result.check(
        "all resumed",
        "every dropper drops as scheduled and reconnects with its nick and hello.resume"
        " to the same server_id (nick_taken retried for up to --settle s)",
        not problems,
        f"{done}/{len(droppers)} dropped and resumed ({kinds}), nick_taken retries {retries}"
        + (f"; e.g. {problems[0]}" if problems else ""),
    )


def _replay_check(result: ScenarioResult, droppers: list[Dropper]) -> None:
    resumptions = [d.resumption for d in droppers if d.resumption is not None]
    violations = [f"{r.nick}: {v}" for r in resumptions for v in r.violations] + [
        f"{r.nick}: replay never completed" for r in resumptions if r.done_ns is None
    ]
    pages = sum(r.pages for r in resumptions)
    replayed = sum(len(r.replayed_seqs) for r in resumptions)
    result.check(
        "replay before live",
        "each resumed session gets its joined, then history pages with exactly the seqs it"
        " missed (last+1 .. joined-1, each once, oldest first), before any live event",
        bool(resumptions) and len(resumptions) == len(droppers) and not violations,
        f"{len(resumptions)} resumes, {pages} history pages, {replayed} events replayed;"
        f" violations {len(violations)}" + (f"; e.g. {violations[0]}" if violations else ""),
    )


def _count_check(
    result: ScenarioResult, sent: int, others: tuple[int, int], droppers: list[Dropper]
) -> None:
    resumed = [dropper.sim.tally.received() for dropper in droppers]
    result.check(
        "resumed count",
        "every resumed client ends with as many messages as every other client, all of those sent",
        set(resumed) == set(others) == {sent},
        f"{sent} sent; resumed clients got {_range(resumed)}, the others {_range(list(others))}",
    )


def _range(values: list[int]) -> str:
    if not values:
        return "nothing"
    low, high = min(values), max(values)
    return f"{low} each" if low == high else f"{low}..{high}"


def _figures(result: ScenarioResult, sent: int, droppers: list[Dropper]) -> None:
    resumptions = [d.resumption for d in droppers if d.resumption is not None]
    times = [ms for ms in (d.resume_ms() for d in droppers) if ms is not None]
    result.figures.update(
        {
            "messages": sent,
            "reconnects": sum(1 for d in droppers if d.resumed),
            "nick_taken_retries": sum(d.nick_retries for d in droppers),
            "history_pages": sum(r.pages for r in resumptions),
            "replayed_events": sum(len(r.replayed_seqs) for r in resumptions),
            "replayed_messages": sum(r.replayed_messages for r in resumptions),
            "resume_p50_ms": round(statistics.median(times), 2) if times else 0.0,
            "resume_max_ms": round(max(times), 2) if times else 0.0,
        }
    )
