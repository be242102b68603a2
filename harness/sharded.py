"""A scenario's members in shards (:mod:`harness.shard`): the coordinator's side.

Opening, counted phases, the questions the checks ask (who was told of a
departure, who is listed, who came and went) and closing, each as one order to
every shard at once, their answers merged so that a check sees every member of
every shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from harness.context import Context
from harness.fleet import CONNECT_TIMEOUT, CONNECT_TIMEOUT_PER_CLIENT, Unreachable
from harness.meter import WorkerUsage, add_worker
from harness.model import ScenarioResult
from harness.outcome import Outcome, merge
from harness.shard import (
    Balance,
    BalanceOrder,
    Closed,
    CloseOrder,
    Departures,
    DeparturesOrder,
    Gone,
    GoneOrder,
    Lefts,
    LeftsOrder,
    Listed,
    Opened,
    OpenOrder,
    Planned,
    PlanOrder,
    SendOrder,
    Sent,
    SettleOrder,
    Synced,
    SyncOrder,
    WhoOrder,
)
from harness.traffic import START_DELAY_NS, connect_check_counts, phase_wait_s, plan
from harness.wire import now_ns
from harness.workers import Handler, each, every, expect, open_shards
from triochat.protocol.events import Limits


@dataclass(frozen=True)
class Members:
    """The members the shards connected: how many in each shard, each shard's nicks (those
    it was given), and the first failure."""

    per_shard: list[int]
    nicks: list[list[str]]
    first_failure: str | None
    limits: Limits | None
    """What the server's ``welcome`` announced."""

    @property
    def connected(self) -> int:
        return sum(self.per_shard)


async def open_members(
    ctx: Context,
    result: ScenarioResult,
    scenario: str,
    shards: list[Handler],
    urls: list[str],
    n: int,
    room: str,
    *,
    watch: Sequence[str] = (),
    watch_prefix: str = "",
) -> Members:
    """Connect the scenario's ``n`` numbered members to ``room``, spread over ``shards``
    (and over ``urls``, round-robin); :class:`Unreachable` if none could connect.

    Sets the ``connected_per_url`` figure."""
    ctx.progress(f"{scenario}: connecting {n} over {len(shards)} workers", 0, n)
    nicks = [ctx.nick(scenario, str(i)) for i in range(n)]
    within = max(CONNECT_TIMEOUT, CONNECT_TIMEOUT_PER_CLIENT * n)
    orders = []
    parts = []
    first = 0
    for count in plan(n, len(shards)):
        parts.append(nicks[first : first + count])
        orders.append(
            OpenOrder(
                urls, parts[-1], first, room, within, watch=list(watch), watch_prefix=watch_prefix
            )
        )
        first += count
    opened = expect(Opened, await each(shards, orders))
    failure = next((o.first_failure for o in opened if o.first_failure), None)
    limits = next((o.limits for o in opened if o.limits is not None), None)
    members = Members([o.connected for o in opened], parts, failure, limits)
    if members.connected == 0:
        raise Unreachable(failure or "no client could connect")
    result.figures["connected_per_url"] = _per_url(urls, opened)
    return members


def _per_url(urls: list[str], opened: list[Opened]) -> str:
    """``url: clients`` for each URL, in the order given (spread round-robin)."""
    counts = {url: sum(o.per_url.get(url, 0) for o in opened) for url in urls}
    return ", ".join(f"{url}: {count}" for url, count in counts.items())


@dataclass
class Running:
    """A phase under way in the shards: planned, then sent."""

    scenario: str
    label: str
    total: int
    senders: int
    rate: float
    per_shard: list[int]
    """Senders per shard."""
    started_ns: int
    deadline_ns: int
    """When every delivery must be in: the schedule, ``--settle`` and any extra."""
    quit_midway: list[str]
    sent: list[int] | None = None
    """Every sender's count, once sent."""

    @property
    def what(self) -> str:
        return f"{self.scenario}: {self.label + ': ' if self.label else ''}"


async def plan_phase(
    ctx: Context,
    scenario: str,
    label: str,
    shards: list[Handler],
    members: Members,
    total: int,
    *,
    rate: float | None = None,
    extra_settle: float = 0.0,
    quit_midway: Sequence[str] = (),
) -> Running:
    """Every member but those called ``quit_midway`` starts counting a phase of ``total``
    messages at ``rate`` (default ``--rate``); nothing is sent yet. (Every member
    connected: a phase follows a passed connect check.)

    The members called ``quit_midway`` sit the phase out (they neither send nor are
    judged) and say ``quit`` halfway through its schedule. ``extra_settle`` adds time for
    work the phase causes beyond delivery."""
    sitting = set(quit_midway)
    per_shard = [sum(1 for nick in part if nick not in sitting) for part in members.nicks]
    senders = sum(per_shard)
    rate = rate or ctx.options.send_rate()
    planning = PlanOrder(total, senders, idle=list(quit_midway))
    await every(shards, planning, Planned)
    started_ns = now_ns() + START_DELAY_NS
    wait_s = phase_wait_s(ctx, total, senders, rate) + extra_settle
    deadline_ns = started_ns + int(wait_s * 1e9)
    return Running(
        scenario, label, total, senders, rate, per_shard, started_ns, deadline_ns, [*quit_midway]
    )


async def send_phase(ctx: Context, shards: list[Handler], running: Running) -> list[int]:
    """Each shard's senders send their part of the schedule; every sender's count."""
    orders = []
    first = 0
    quit_at_ns = running.started_ns + int(running.total / running.rate / 2 * 1e9)
    for count in running.per_shard:
        order = SendOrder(running.started_ns, running.rate, first, running.quit_midway, quit_at_ns)
        orders.append(order)
        first += count
    ctx.progress(f"{running.what}sending {running.total} messages at {running.rate:g}/s", 0, 1)
    parts = expect(Sent, await each(shards, orders))
    running.sent = [sum(column) for column in zip(*(part.sent for part in parts), strict=True)]
    return running.sent


async def settle_phase(ctx: Context, shards: list[Handler], running: Running) -> Outcome:
    """Once every member counted every message sent, or the deadline passed: what they saw."""
    assert running.sent is not None, "settle before send"
    wanted = sum(running.sent) * running.senders
    ctx.progress(f"{running.what}waiting for {wanted} deliveries", 0, 1)
    return merge(await every(shards, SettleOrder(running.sent, running.deadline_ns), Outcome))


async def run_phase(
    ctx: Context,
    scenario: str,
    label: str,
    shards: list[Handler],
    members: Members,
    total: int,
    *,
    quit_midway: Sequence[str] = (),
) -> Outcome:
    """:func:`plan_phase`, :func:`send_phase` and :func:`settle_phase`: the merged outcome."""
    running = await plan_phase(
        ctx, scenario, label, shards, members, total, quit_midway=quit_midway
    )
    await send_phase(ctx, shards, running)
    return await settle_phase(ctx, shards, running)


async def phase_beside(
    ctx: Context,
    result: ScenarioResult,
    scenario: str,
    urls: list[str],
    n: int,
    room: str,
    beside: Callable[[trio.Nursery, Members], None],
) -> Outcome | None:
    """The walk of a scenario whose misbehaving clients act during one counted phase:
    ``n`` members in ``--workers`` shards, then one phase among them while the tasks that
    ``beside`` starts run (the phase's end waits for them too), then close.

    The phase's outcome to judge; None if not every member connected."""
    async with open_shards(max(1, min(ctx.options.workers, n))) as shards:
        members = await open_members(ctx, result, scenario, shards, urls, n, room)
        outcome = None
        if connect_check_counts(result, members.connected, n, members.first_failure):
            async with trio.open_nursery() as nursery:
                beside(nursery, members)
                total = ctx.options.fault_messages()
                outcome = await run_phase(ctx, scenario, "", shards, members, total)
        ctx.progress(f"{scenario}: closing", 0, 1)
        await close(result, shards)
    return outcome


async def lefts(shards: list[Handler], nick: str) -> Lefts:
    """What every member of every shard was told of ``nick`` leaving (a watched nick)."""
    return Lefts.merge(await every(shards, LeftsOrder(nick), Lefts))


async def gone(shards: list[Handler], nicks: list[str]) -> int:
    """How many of the members called ``nicks`` the server has closed."""
    answers = await every(shards, GoneOrder(nicks), Gone)
    return sum(answer.closed for answer in answers)


async def departures(shards: list[Handler], order: DeparturesOrder) -> Departures:
    """What every stayer of every shard was told of ``order``'s departures."""
    return Departures.merge(await every(shards, order, Departures))


async def listed(shards: list[Handler], order: WhoOrder) -> Listed:
    """Every stayer of every shard asks ``who``; what they were told."""
    return Listed.merge(await every(shards, order, Listed))


async def synced(shards: list[Handler], within: float) -> Synced:
    """Every member of every shard pings and waits for its pong (a barrier)."""
    return Synced.merge(await every(shards, SyncOrder(within), Synced))


async def balance(shards: list[Handler], churned: list[str]) -> Balance:
    """How every member of every shard saw the ``churned`` clients come and go."""
    return Balance.merge(await every(shards, BalanceOrder(churned), Balance))


async def close(result: ScenarioResult, shards: list[Handler]) -> None:
    """Close every shard's members; their processes' CPU goes to the scenario's meter."""
    closed = await every(shards, CloseOrder(), Closed)
    remote = len(shards) > 1
    for part in closed:
        add_worker(WorkerUsage(cpu_s=part.cpu_s if remote else 0.0, events=part.events))
    result.figures["workers"] = len(shards)
