"""``broadcast``: all N clients send; every client gets every message exactly once, in order."""

from __future__ import annotations

import trio

from harness.context import Context
from harness.fleet import Fleet
from harness.model import ScenarioResult
from harness.traffic import connect_check, delivery_checks, open_members, run_phase

NAME = "broadcast"
PROVES = "fan-out reaches every member exactly once, in the room's seq order, and how fast"


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = ctx.options.clients
    room = ctx.room(NAME)
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        sims = await open_members(ctx, fleet, NAME, room, n)
        if connect_check(result, sims):
            live = fleet.connected()
            total = n * ctx.options.messages_per_client()
            phase = await run_phase(ctx, NAME, "", room, live, live, total)
            delivery_checks(result, phase)
            result.figures["messages"] = sum(phase.book.sent)
        ctx.progress(f"{NAME}: closing", 0, 1)
        await fleet.close(notes=result.notes)
