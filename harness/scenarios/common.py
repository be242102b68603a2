"""Small waits shared by scenarios: every one bounded by a deadline, none a bare sleep."""

from __future__ import annotations

from collections.abc import Callable

import trio

from harness.context import Context
from harness.fleet import Sim

POLL = 0.05


async def wait_until(
    ctx: Context, label: str, progress: Callable[[], tuple[int, int]], within: float
) -> bool:
    """Poll ``progress`` (done, wanted) until done >= wanted; False if ``within`` seconds passed."""
    deadline = trio.current_time() + within
    while True:
        done, wanted = progress()
        ctx.progress(label, done, wanted)
        if done >= wanted:
            return True
        if trio.current_time() > deadline:
            return False
        await trio.sleep(POLL)


async def barrier(ctx: Context, label: str, sims: list[Sim], room: str, within: float) -> bool:
    """Ask each sim ``who(room)`` and wait for every answer.

    Events reach one client in order, so once the answer is in, everything the
    server queued for that client before it has arrived too.
    """
    before = {sim.index: sim.tally.members_replies for sim in sims}
    for sim in sims:
        if sim.client is not None and sim.alive:
            await sim.client.who(room)

    def answered() -> tuple[int, int]:
        done = sum(1 for sim in sims if sim.tally.members_replies > before[sim.index])
        return done, len(sims)

    return await wait_until(ctx, label, answered, within)


def room_members(sim: Sim, room: str) -> set[str]:
    return set(sim.tally.members.get(room, []))
