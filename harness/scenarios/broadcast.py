"""``broadcast``: all N clients send; every client gets every message exactly once, in order.

The clients are split over ``--workers`` shards (:mod:`harness.shard`), each a
process of its own when there are several, and the checks judge the merged
outcome of all of them. ``wss://`` and ``tls://`` targets run through the
client library in this process instead (the shards' lean clients speak plain
``ws://`` and ``tcp://`` only).
"""

from __future__ import annotations

import trio

from harness.context import Context
from harness.fleet import CONNECT_TIMEOUT, CONNECT_TIMEOUT_PER_CLIENT, Fleet, Sim, Unreachable
from harness.meter import WorkerUsage, add_worker
from harness.model import ScenarioResult
from harness.outcome import Outcome, merge
from harness.shard import (
    Closed,
    CloseOrder,
    Opened,
    OpenOrder,
    Planned,
    PlanOrder,
    SendOrder,
    Sent,
    SettleOrder,
)
from harness.swarm import lean_url
from harness.traffic import (
    START_DELAY_NS,
    connect_check_counts,
    delivery_checks,
    open_members,
    outcome_checks,
    phase_wait_s,
    plan,
    run_phase,
)
from harness.wire import now_ns
from harness.workers import Handler, each, expect, open_shards

NAME = "broadcast"
PROVES = "fan-out reaches every member exactly once, in the room's seq order, and how fast"


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with ctx.target(NAME) as target:
        if all(lean_url(url) for url in target.urls):
            await _sharded(ctx, result, target.urls)
        else:
            await _in_process(ctx, result, target.urls)


async def _in_process(ctx: Context, result: ScenarioResult, urls: list[str]) -> None:
    n = ctx.options.clients
    room = ctx.room(NAME)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, urls)
        sims = await open_members(ctx, fleet, NAME, room, n)
        if connect_check_counts(result, len(fleet.connected()), n, _first_failure(sims)):
            live = fleet.connected()
            total = ctx.options.broadcast_messages()
            phase = await run_phase(ctx, NAME, "", room, live, live, total)
            delivery_checks(result, phase)
            result.figures["messages"] = sum(phase.book.sent)
        ctx.progress(f"{NAME}: closing", 0, 1)
        await fleet.close(notes=result.notes)


def _first_failure(sims: list[Sim]) -> str | None:
    return next((sim.failure for sim in sims if sim.client is None), None)


async def _sharded(ctx: Context, result: ScenarioResult, urls: list[str]) -> None:
    n = ctx.options.clients
    workers = max(1, min(ctx.options.workers, n))
    async with open_shards(workers) as shards:
        opened = await _open(ctx, shards, urls, n)
        connected = sum(o.connected for o in opened)
        failure = next((o.first_failure for o in opened if o.first_failure), None)
        if connected == 0:
            raise Unreachable(failure or "no client could connect")
        result.figures["connected_per_url"] = _per_url(urls, opened)
        if connect_check_counts(result, connected, n, failure):
            outcome = await _traffic(ctx, shards, [o.connected for o in opened])
            outcome_checks(result, "", outcome)
            result.figures["messages"] = sum(outcome.sent)
        ctx.progress(f"{NAME}: closing", 0, 1)
        closed = expect(Closed, await each(shards, [CloseOrder()] * len(shards)))
    for part in closed:
        add_worker(WorkerUsage(cpu_s=part.cpu_s if workers > 1 else 0.0, events=part.events))
    result.figures["workers"] = workers


def _per_url(urls: list[str], opened: list[Opened]) -> str:
    """``url: clients`` for each URL, in the order given (spread round-robin)."""
    counts = {url: sum(o.per_url.get(url, 0) for o in opened) for url in urls}
    return ", ".join(f"{url}: {count}" for url, count in counts.items())


async def _open(ctx: Context, shards: list[Handler], urls: list[str], n: int) -> list[Opened]:
    ctx.progress(f"{NAME}: connecting {n} over {len(shards)} workers", 0, n)
    nicks = [ctx.nick(NAME, str(i)) for i in range(n)]
    counts = plan(n, len(shards))
    within = max(CONNECT_TIMEOUT, CONNECT_TIMEOUT_PER_CLIENT * n)
    orders = []
    first = 0
    for count in counts:
        orders.append(OpenOrder(urls, nicks[first : first + count], first, ctx.room(NAME), within))
        first += count
    return expect(Opened, await each(shards, orders))


async def _traffic(ctx: Context, shards: list[Handler], connected: list[int]) -> Outcome:
    senders = sum(connected)
    total = ctx.options.broadcast_messages()
    rate = ctx.options.send_rate()
    expect(Planned, await each(shards, [PlanOrder(total, senders)] * len(shards)))
    started_ns = now_ns() + START_DELAY_NS
    orders = []
    first = 0
    for count in connected:
        orders.append(SendOrder(started_ns, rate, first))
        first += count
    ctx.progress(f"{NAME}: sending {total} messages at {rate:g}/s", 0, 1)
    sent_parts = expect(Sent, await each(shards, orders))
    sent = [sum(column) for column in zip(*(part.sent for part in sent_parts), strict=True)]
    deadline_ns = started_ns + int(phase_wait_s(ctx, total, senders, rate) * 1e9)
    ctx.progress(f"{NAME}: waiting for {sum(sent) * senders} deliveries", 0, 1)
    settle_orders = [SettleOrder(sent, deadline_ns)] * len(shards)
    return merge(expect(Outcome, await each(shards, settle_orders)))
