"""``broadcast``: all N clients send; every client gets every message exactly once, in order.

The clients are split over ``--workers`` shards (:mod:`harness.shard`), each a
process of its own when there are several, and the checks judge the merged
outcome of all of them. ``wss://`` and ``tls://`` targets run through the
client library in this process instead (the shards' lean clients speak plain
``ws://`` and ``tcp://`` only).
"""

from __future__ import annotations

import trio

from harness import sharded
from harness.context import Context
from harness.fleet import Fleet, Sim
from harness.model import ScenarioResult
from harness.swarm import lean_url
from harness.traffic import (
    connect_check_counts,
    delivery_checks,
    open_members,
    outcome_checks,
    run_phase,
)
from harness.workers import open_shards

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
        members = await sharded.open_members(ctx, result, NAME, shards, urls, n, ctx.room(NAME))
        if connect_check_counts(result, members.connected, n, members.first_failure):
            total = ctx.options.broadcast_messages()
            outcome = await sharded.run_phase(ctx, NAME, "", shards, members, total)
            outcome_checks(result, "", outcome)
            result.figures["messages"] = sum(outcome.sent)
        ctx.progress(f"{NAME}: closing", 0, 1)
        await sharded.close(result, shards)
