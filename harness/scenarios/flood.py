"""``flood``: one client sends far over the rate limit; only it is held back.

The flooder fires ``4 x burst + 100`` ``say`` events into the shared room as
fast as its socket takes them. The server must answer the excess with
``error{code:"rate_limited"}`` (or disconnect the flooder; either is
accepted and reported), accept no more than the burst plus the rate over the
flood's duration, and the other members' counted traffic must arrive 100%
with a p99 within the stated bound of a no-fault phase run just before.
Against a server with flood control off (``rate_limit`` 0 in ``welcome``) the
flooder check is skipped: there is nothing to prove. With plain ``ws://`` or
``tcp://`` targets the other members are split over ``--workers`` shards
(:mod:`harness.sharded`); the flooder stays in this process.
"""

from __future__ import annotations

import trio

from harness import sharded
from harness.context import Context
from harness.fleet import SEND_ERRORS, Fleet, Sim
from harness.model import ScenarioResult
from harness.scenarios.common import wait_until
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
from harness.workers import open_shards
from triochat.protocol import encode
from triochat.protocol.events import Say

NAME = "flood"
PROVES = "flood control holds back one flooding client and nobody else"
CHUNK = 50


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients - 1, 2)
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        if all(lean_url(url) for url in target.urls):
            await _sharded(ctx, result, fleet, target.urls, n)
        else:
            await _in_process(ctx, result, fleet, n)
        await fleet.close(notes=result.notes)


async def _in_process(ctx: Context, result: ScenarioResult, fleet: Fleet, n: int) -> None:
    room = ctx.room(NAME)
    sims = await open_members(ctx, fleet, NAME, room, n)
    (flooder,) = await fleet.open([ctx.nick(NAME, "flooder")], [room])
    if connect_check(result, [*sims, flooder]):
        total = ctx.options.fault_messages()
        baseline = await run_phase(ctx, NAME, "baseline", room, sims, sims, total)
        delivery_checks(result, baseline, "every other client")
        async with trio.open_nursery() as flooding:
            flooding.start_soon(_flood_and_count, ctx, result, flooder, room)
            fault = await run_phase(ctx, NAME, "flooded", room, sims, sims, total)
        delivery_checks(result, fault, "every other client")
        latency_check(result, baseline.outcome(), fault.outcome())


async def _sharded(
    ctx: Context, result: ScenarioResult, fleet: Fleet, urls: list[str], n: int
) -> None:
    room = ctx.room(NAME)
    async with open_shards(max(1, min(ctx.options.workers, n))) as shards:
        members = await sharded.open_members(ctx, result, NAME, shards, urls, n, room)
        (flooder,) = await fleet.open([ctx.nick(NAME, "flooder")], [room])
        failure = members.first_failure or flooder.failure
        connected = members.connected + (flooder.client is not None)
        if connect_check_counts(result, connected, n + 1, failure):
            total = ctx.options.fault_messages()
            baseline = await sharded.run_phase(ctx, NAME, "baseline", shards, members, total)
            outcome_checks(result, "baseline", baseline, "every other client")
            async with trio.open_nursery() as flooding:
                flooding.start_soon(_flood_and_count, ctx, result, flooder, room)
                fault = await sharded.run_phase(ctx, NAME, "flooded", shards, members, total)
            outcome_checks(result, "flooded", fault, "every other client")
            latency_check(result, baseline, fault)
        ctx.progress(f"{NAME}: closing", 0, 1)
        await sharded.close(result, shards)


async def _flood_and_count(ctx: Context, result: ScenarioResult, flooder: Sim, room: str) -> None:
    client = flooder.client
    assert client is not None
    assert client.welcome is not None
    limits = client.welcome.limits
    count = 4 * limits.burst + 100
    lines = [encode(Say(room=room, text=f"f:{i}")) for i in range(count)]
    started = now_ns()
    try:
        for i in range(0, count, CHUNK):
            await client.send_raw(b"".join(lines[i : i + CHUNK]))
    except SEND_ERRORS:
        pass
    flood_s = (now_ns() - started) / 1e9
    tally = flooder.tally

    def answered() -> tuple[int, int]:
        done = tally.acks + tally.errors["rate_limited"]
        return (count if flooder.closed_at_ns is not None else done), count

    await wait_until(ctx, f"{NAME}: flooder's answers", answered, ctx.options.settle)
    # The server handled every flood event between the first send and the last answer:
    # the tokens it may have granted are bounded by that span, not by how fast we sent.
    served_s = (now_ns() - started) / 1e9
    result.figures["flood_send_s"] = round(flood_s, 3)
    _flooder_check(result, limits.rate_limit, limits.burst, count, served_s, flooder)


def _flooder_check(
    result: ScenarioResult, rate: float, burst: int, count: int, flood_s: float, flooder: Sim
) -> None:
    tally = flooder.tally
    limited, accepted = tally.errors["rate_limited"], tally.acks
    dropped = flooder.closed_at_ns is not None
    allowed = burst + rate * flood_s + 1
    result.figures.update(
        flood_sent=count,
        flood_accepted=accepted,
        flood_rate_limited=limited,
        flood_answered_s=round(flood_s, 3),
    )
    observed = (
        f"sent {count}, all answered within {flood_s:.2f} s:"
        f" {accepted} accepted, {limited} rate_limited"
        + (", disconnected" if dropped else "")
        + f" (limit {rate:g}/s, burst {burst})"
    )
    if rate <= 0:
        result.check(
            "flooder held back", "skipped: the server has flood control off", None, observed
        )
        return
    result.check(
        "flooder held back",
        "the flooder gets rate_limited errors (or is disconnected) and at most"
        " burst + rate x (first send to last answer) + 1 of its events are accepted",
        (limited > 0 or dropped) and accepted <= allowed,
        observed,
    )
