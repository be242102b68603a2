"""``slow_reader``: one member stops reading; the room must not notice, and it must be evicted.

Theory of operation
-------------------
The stalled client joins the main room *and* a bulk room, from a socket whose
receive buffer is fixed small before connecting (so the kernel cannot soak up
megabytes for it), and then reads nothing at all. Two pushers post large
messages into the bulk room as fast as flood control allows (burst first, then
90% of the announced rate), which fills the stalled client's outbox in seconds
while the main room runs ordinary counted traffic. The server must evict the
stalled client (``left{reason:"slow_consumer"}``, seen once by every member of
the main room) within ``--evict-within`` seconds, and the main room must get
100% with a p99 latency within a stated bound of a no-fault phase run just
before, with the same clients and schedule.

Pushers and the stalled client are extra clients on top of ``--clients``.
With plain ``ws://`` or ``tcp://`` targets the main room's members are split
over ``--workers`` shards (:mod:`harness.sharded`), as in ``broadcast``;
the pushers and the stalled client stay in this process.
"""

from __future__ import annotations

import trio

from harness import sharded
from harness.context import Context
from harness.fleet import SEND_ERRORS, Fleet, Sim
from harness.model import ScenarioResult
from harness.raw import RawClient, open_raw
from harness.scenarios.common import POLL, wait_until
from harness.shard import Lefts
from harness.swarm import lean_url
from harness.traffic import (
    connect_check,
    connect_check_counts,
    delivery_checks,
    latency_check,
    open_members,
    outcome_checks,
    run_phase,
)
from harness.wire import now_ns
from harness.workers import Handler, open_shards
from triochat.protocol import encode
from triochat.protocol.events import Say

NAME = "slow_reader"
PROVES = "a reader that stops reading is evicted (slow_consumer) and slows nobody else"
RECEIVE_BUFFER = 8 * 1024
PUSHERS = 2
BULK_TEXT = 8000
UNLIMITED_PUSH_RATE = 200.0


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients - 1, 2)
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        if all(lean_url(url) for url in target.urls):
            await _sharded(ctx, result, fleet, target.urls, n)
        else:
            await _in_process(ctx, result, fleet, target.urls, n)
        await fleet.close(notes=result.notes)


async def _in_process(
    ctx: Context, result: ScenarioResult, fleet: Fleet, urls: list[str], n: int
) -> None:
    room, bulk = ctx.room(NAME), ctx.room(NAME, "-bulk")
    slow_nick = ctx.nick(NAME, "stalled")
    sims = await open_members(ctx, fleet, NAME, room, n)
    pushers = await fleet.open([ctx.nick(NAME, f"p{i}") for i in range(PUSHERS)], [bulk])
    if connect_check(result, sims + pushers):
        async with open_raw(urls[0], receive_buffer=RECEIVE_BUFFER) as stalled:
            await stalled.hello(slow_nick, [room, bulk])
            await _measure(ctx, result, room, bulk, sims, pushers, slow_nick, stalled)


async def _sharded(
    ctx: Context, result: ScenarioResult, fleet: Fleet, urls: list[str], n: int
) -> None:
    room, bulk = ctx.room(NAME), ctx.room(NAME, "-bulk")
    slow_nick = ctx.nick(NAME, "stalled")
    async with open_shards(max(1, min(ctx.options.workers, n))) as shards:
        members = await sharded.open_members(
            ctx, result, NAME, shards, urls, n, room, watch=(slow_nick,)
        )
        pushers = await fleet.open([ctx.nick(NAME, f"p{i}") for i in range(PUSHERS)], [bulk])
        failed = [sim for sim in pushers if sim.client is None]
        failure = members.first_failure or (failed[0].failure if failed else None)
        connected = members.connected + len(pushers) - len(failed)
        if connect_check_counts(result, connected, n + PUSHERS, failure):
            async with open_raw(urls[0], receive_buffer=RECEIVE_BUFFER) as stalled:
                await stalled.hello(slow_nick, [room, bulk])
                total = ctx.options.fault_messages()
                baseline = await sharded.run_phase(ctx, NAME, "baseline", shards, members, total)
                outcome_checks(result, "baseline", baseline, "every other client")
                pushed = [0]
                started = now_ns()
                async with trio.open_nursery() as pushing:
                    for sim in pushers:
                        pushing.start_soon(_push, ctx, sim, bulk, pushed)
                    fault = await sharded.run_phase(ctx, NAME, "stalled", shards, members, total)
                    told = await _await_told(ctx, shards, slow_nick)
                    pushing.cancel_scope.cancel()
                outcome_checks(result, "stalled", fault, "every other client")
                latency_check(result, baseline, fault)
                _eviction_verdict(ctx, result, told, started, pushed[0])
        ctx.progress(f"{NAME}: closing", 0, 1)
        await sharded.close(result, shards)


async def _await_told(ctx: Context, shards: list[Handler], slow_nick: str) -> Lefts:
    """Ask the shards until every member was told the stalled client left, or the bound."""
    deadline = trio.current_time() + ctx.options.evict_within
    while True:
        told = await sharded.lefts(shards, slow_nick)
        ctx.progress(f"{NAME}: waiting for eviction", told.told, told.members)
        if told.told >= told.members or trio.current_time() > deadline:
            return told
        await trio.sleep(POLL)


async def _measure(
    ctx: Context,
    result: ScenarioResult,
    room: str,
    bulk: str,
    sims: list[Sim],
    pushers: list[Sim],
    slow_nick: str,
    stalled: RawClient,
) -> None:
    total = ctx.options.fault_messages()
    baseline = await run_phase(ctx, NAME, "baseline", room, sims, sims, total)
    delivery_checks(result, baseline, "every other client")
    pushed = [0]
    started = now_ns()
    async with trio.open_nursery() as pushing:
        for sim in pushers:
            pushing.start_soon(_push, ctx, sim, bulk, pushed)
        fault = await run_phase(ctx, NAME, "stalled", room, sims, sims, total)
        await _await_eviction(ctx, sims, slow_nick)
        pushing.cancel_scope.cancel()
    delivery_checks(result, fault, "every other client")
    latency_check(result, baseline.outcome(), fault.outcome())
    told = Lefts.of([sim.tally for sim in sims], slow_nick)
    _eviction_verdict(ctx, result, told, started, pushed[0])


async def _push(ctx: Context, sim: Sim, room: str, pushed: list[int]) -> None:
    """Large messages as fast as flood control allows: the burst, then 90% of the rate."""
    client = sim.client
    assert client is not None
    limits = client.welcome.limits if client.welcome else None
    size = min(BULK_TEXT, limits.max_text if limits else BULK_TEXT) - 16
    rate = limits.rate_limit if limits and limits.rate_limit > 0 else UNLIMITED_PUSH_RATE
    burst = max((limits.burst if limits else 1) - 4, 1)
    line = encode(Say(room=room, text="b:" + "x" * size))
    try:
        for _ in range(burst):
            await client.send_raw(line)
            pushed[0] += len(line)
        while True:
            await trio.sleep(1 / (0.9 * rate))
            await client.send_raw(line)
            pushed[0] += len(line)
    except SEND_ERRORS:
        return


async def _await_eviction(ctx: Context, sims: list[Sim], slow_nick: str) -> None:
    def told() -> tuple[int, int]:
        return sum(1 for sim in sims if sim.tally.left_of(slow_nick)), len(sims)

    await wait_until(ctx, f"{NAME}: waiting for eviction", told, ctx.options.evict_within)


def _eviction_verdict(
    ctx: Context, result: ScenarioResult, told: Lefts, started: int, pushed: int
) -> None:
    """Every member told once, for ``slow_consumer``, within ``--evict-within`` of ``started``."""
    bound = ctx.options.evict_within
    evicted = told.told >= told.members
    after = (told.first_ns - started) / 1e9 if told.first_ns is not None else None
    result.check(
        "stalled reader evicted",
        f'the stalled client gets left{{reason:"slow_consumer"}} within {bound:g} s',
        evicted and after is not None and after <= bound and told.reasons == ["slow_consumer"],
        f"evicted after {after:.2f} s (seen by all), {pushed / 2**20:.1f} MiB pushed"
        if evicted and after is not None
        else f"not evicted within {bound:g} s; {pushed / 2**20:.1f} MiB pushed",
    )
    result.check(
        "eviction told once",
        "every other member sees exactly one left for the stalled client",
        evicted and told.once == told.members,
        f"{told.once}/{told.members} saw exactly one",
    )
    if after is not None:
        result.figures["eviction_s"] = round(after, 3)
    result.figures["stalled_client_bytes_pushed"] = pushed
