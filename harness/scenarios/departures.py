"""``disconnect`` and ``broken_pipe``: clients leave mid-broadcast, politely or not.

Both run counted traffic among the clients that stay and make some others
leave halfway through the schedule. The stayers must still get 100%, see
exactly one ``left`` per departed client with the right reason, and afterwards
``who`` must list exactly the stayers. ``broken_pipe`` also proves the server
keeps serving: a new client connects and is answered afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from msgspec.structs import replace

from harness import sharded
from harness.context import Context
from harness.fleet import QUIT_REASON, SEND_ERRORS, Fleet, Sim
from harness.model import ScenarioResult
from harness.raw import RawClient, open_raw
from harness.scenarios.common import POLL, barrier, room_members, wait_until
from harness.shard import Departures, DeparturesOrder, Listed, WhoOrder
from harness.swarm import lean_url
from harness.traffic import (
    Phase,
    connect_check,
    connect_check_counts,
    delivery_checks,
    open_members,
    outcome_checks,
    run_phase,
)
from harness.workers import Handler, open_shards
from triochat.errors import TriochatError

DISCONNECT_PROVES = "clean quits mid-run: one left{quit} each, member list right, nobody else hurt"
BROKEN_PIPE_PROVES = (
    "abrupt resets and half-sent lines mid-run: one left{disconnected} each, the rest get 100%,"
    " the server keeps serving"
)
DISCONNECT = "disconnect"
BROKEN_PIPE = "broken_pipe"
WHO_ASKERS = 25
"""Stayers per shard that check the member list (the departures are checked at all)."""
VANISH_KINDS = ("reset", "half line + reset", "half line + close")
"""How vanishing clients go, in turn: RST (SO_LINGER 0), or half an event then RST or FIN."""


def _departures(ctx: Context, n: int, minimum: int) -> int:
    return min(max(minimum, n // 5), n - 2)


async def run_disconnect(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients, 3)
    async with ctx.target(DISCONNECT) as target:
        if all(lean_url(url) for url in target.urls):
            await _disconnect_sharded(ctx, result, target.urls, n)
        else:
            await _disconnect_in_process(ctx, result, target.urls, n)


async def _disconnect_in_process(
    ctx: Context, result: ScenarioResult, urls: list[str], n: int
) -> None:
    name, room = DISCONNECT, ctx.room(DISCONNECT)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, urls)
        sims = await open_members(ctx, fleet, name, room, n)
        if connect_check(result, sims):
            live = fleet.connected()
            leaving = ctx.rng(name).sample(live, _departures(ctx, len(live), 1))
            stayers = [sim for sim in live if sim not in leaving]
            phase = await _phase_faulted_midway(ctx, name, room, stayers, partial(_quit, leaving))
            delivery_checks(result, phase, "every staying client")
            await _closed_check(ctx, result, leaving)
            nicks = [sim.nick for sim in leaving]
            await _left_checks(ctx, result, name, room, stayers, nicks, "quit")
        await fleet.close(notes=result.notes)


async def _disconnect_sharded(
    ctx: Context, result: ScenarioResult, urls: list[str], n: int
) -> None:
    """Every member in ``--workers`` shards; the quitters are some of them, chosen as in
    :func:`_disconnect_in_process` (the same seed picks the same nicks)."""
    name, room = DISCONNECT, ctx.room(DISCONNECT)
    nicks = [ctx.nick(name, str(i)) for i in range(n)]
    async with open_shards(max(1, min(ctx.options.workers, n))) as shards:
        members = await sharded.open_members(ctx, result, name, shards, urls, n, room, watch=nicks)
        if connect_check_counts(result, members.connected, n, members.first_failure):
            leaving = ctx.rng(name).sample(nicks, _departures(ctx, n, 1))
            stayers = [nick for nick in nicks if nick not in leaving]
            total = ctx.options.fault_messages()
            outcome = await sharded.run_phase(
                ctx, name, "", shards, members, total, quit_midway=leaving
            )
            outcome_checks(result, "", outcome, "every staying client")
            closed = partial(sharded.gone, shards, leaving)
            await _closed_verdict(ctx, result, closed, len(leaving))
            order = DeparturesOrder(room, leaving, "quit", stayers)
            await _left_checks_sharded(ctx, result, name, shards, order)
        ctx.progress(f"{name}: closing", 0, 1)
        await sharded.close(result, shards)


async def _phase_faulted_midway(
    ctx: Context, name: str, room: str, sims: list[Sim], fault: Callable[[], Awaitable[None]]
) -> Phase:
    """A fault phase among ``sims``, with ``fault`` run halfway through its sending."""
    total = ctx.options.fault_messages()
    midway = total / ctx.options.send_rate() / 2
    async with trio.open_nursery() as faults:
        faults.start_soon(_after, midway, fault)
        return await run_phase(ctx, name, "", room, sims, sims, total)


async def _after(delay: float, fault: Callable[[], Awaitable[None]]) -> None:
    await trio.sleep(delay)
    await fault()


async def _quit(leaving: list[Sim]) -> None:
    for sim in leaving:
        if sim.client is not None:
            with contextlib.suppress(*SEND_ERRORS):
                await sim.client.quit(QUIT_REASON)


async def _closed_check(ctx: Context, result: ScenarioResult, leaving: list[Sim]) -> None:
    async def closed() -> int:
        return sum(1 for sim in leaving if sim.closed_at_ns is not None)

    await _closed_verdict(ctx, result, closed, len(leaving))


async def _closed_verdict(
    ctx: Context, result: ScenarioResult, closed: Callable[[], Awaitable[int]], wanted: int
) -> None:
    """Wait (``--settle`` at most) until the server has closed every quitter, then judge."""
    deadline = trio.current_time() + ctx.options.settle
    while True:
        done = await closed()
        ctx.progress(f"{DISCONNECT}: waiting for quits", done, wanted)
        if done >= wanted or trio.current_time() > deadline:
            break
        await trio.sleep(POLL)
    result.check(
        "quitters closed",
        f"the server closes each quitting client's connection (within {ctx.options.settle:g} s)",
        done == wanted,
        f"{done}/{wanted} closed",
    )


async def _left_checks(
    ctx: Context,
    result: ScenarioResult,
    name: str,
    room: str,
    stayers: list[Sim],
    departed: list[str],
    reason: str,
) -> None:
    """Exactly one ``left{reason}`` per departed nick at every stayer, and ``who`` = stayers."""
    nicks = [sim.nick for sim in stayers]
    order = DeparturesOrder(room, departed, reason, nicks)

    def told() -> tuple[int, int]:
        wanted = set(departed)
        done = sum(1 for sim in stayers if wanted <= {x.nick for x in sim.tally.lefts})
        return done, len(stayers)

    await wait_until(ctx, f"{name}: waiting for left events", told, ctx.options.settle)
    seen = Departures.of([(sim.nick, sim.tally) for sim in stayers], order)
    answered = await barrier(ctx, f"{name}: who", stayers, room, ctx.options.settle)
    lists = [sorted(room_members(sim, room)) for sim in stayers]
    listed = Listed.of(lists, nicks) if answered else Listed(len(stayers), 0, 0, None)
    _left_verdicts(result, order, seen, listed)


async def _left_checks_sharded(
    ctx: Context,
    result: ScenarioResult,
    name: str,
    shards: list[Handler],
    order: DeparturesOrder,
) -> None:
    """:func:`_left_checks` of stayers in shards."""
    deadline = trio.current_time() + ctx.options.settle
    counting = replace(order, judge=False)
    while True:
        seen = await sharded.departures(shards, counting)
        ctx.progress(f"{name}: waiting for left events", seen.told, seen.stayers)
        if seen.told >= seen.stayers or trio.current_time() > deadline:
            break
        await trio.sleep(POLL)
    seen = await sharded.departures(shards, order)
    ctx.progress(f"{name}: who", 0, 1)
    asking = WhoOrder(order.room, order.stayers, ctx.options.settle, askers=WHO_ASKERS)
    listed = await sharded.listed(shards, asking)
    _left_verdicts(result, order, seen, listed)


def _left_verdicts(
    result: ScenarioResult, order: DeparturesOrder, seen: Departures, listed: Listed
) -> None:
    reason = order.reason
    result.check(
        f"one left{{{reason}}} each",
        f'every stayer sees exactly one left{{reason:"{reason}"}} per departed client, no others',
        seen.wrong == 0,
        f"{len(order.departed)} departed x {seen.stayers} stayers: {seen.wrong} wrong"
        + (f"; e.g. {seen.example}" if seen.example else ""),
    )
    answered = listed.answered == listed.stayers
    result.check(
        "member list",
        "afterwards who(room) lists exactly the clients still connected",
        answered and not listed.mismatched,
        f"matches at all {listed.stayers} stayers asked"
        if answered and not listed.mismatched
        else f"{listed.mismatched} stayers disagree"
        + (f"; e.g. {listed.example}" if listed.example else "")
        + ("" if answered else " (who unanswered)"),
    )


# --- broken_pipe ------------------------------------------------------------------------


async def run_broken_pipe(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients, 3)
    async with ctx.target(BROKEN_PIPE) as target, trio.open_nursery() as nursery:
        count = _departures(ctx, n, 3)
        vanished = [ctx.nick(BROKEN_PIPE, f"v{i}") for i in range(count)]
        go = trio.Event()
        try:
            if all(lean_url(url) for url in target.urls):
                await _broken_pipe_sharded(ctx, result, nursery, target.urls, n, vanished, go)
            else:
                await _broken_pipe_in_process(ctx, result, nursery, target.urls, n, vanished, go)
        finally:
            go.set()


async def _broken_pipe_in_process(
    ctx: Context,
    result: ScenarioResult,
    nursery: trio.Nursery,
    urls: list[str],
    n: int,
    vanished: list[str],
    go: trio.Event,
) -> None:
    name, room = BROKEN_PIPE, ctx.room(BROKEN_PIPE)
    fleet = Fleet(nursery, urls)
    ctx.progress(f"{name}: connecting {n}", 0, n)
    stayers = await fleet.open([ctx.nick(name, str(i)) for i in range(n - len(vanished))], [room])
    vanishers_ok = await _start_vanishers(result, nursery, urls, room, vanished, go)
    if connect_check(result, stayers) and vanishers_ok:
        live = fleet.connected()
        phase = await _phase_faulted_midway(ctx, name, room, live, partial(_set, go))
        delivery_checks(result, phase, "every remaining client")
        await _left_checks(ctx, result, name, room, live, vanished, "disconnected")
        await _still_serving(ctx, result, urls[0], room)
    go.set()
    await fleet.close(notes=result.notes)


async def _broken_pipe_sharded(
    ctx: Context,
    result: ScenarioResult,
    nursery: trio.Nursery,
    urls: list[str],
    n: int,
    vanished: list[str],
    go: trio.Event,
) -> None:
    """The stayers in ``--workers`` shards; the vanishing clients stay in this process."""
    name, room = BROKEN_PIPE, ctx.room(BROKEN_PIPE)
    stayers = n - len(vanished)
    nicks = [ctx.nick(name, str(i)) for i in range(stayers)]
    async with open_shards(max(1, min(ctx.options.workers, stayers))) as shards:
        members = await sharded.open_members(
            ctx, result, name, shards, urls, stayers, room, watch=(*nicks, *vanished)
        )
        vanishers_ok = await _start_vanishers(result, nursery, urls, room, vanished, go)
        connected = connect_check_counts(result, members.connected, stayers, members.first_failure)
        if connected and vanishers_ok:
            total = ctx.options.fault_messages()
            midway = total / ctx.options.send_rate() / 2
            async with trio.open_nursery() as faults:
                faults.start_soon(_after, midway, partial(_set, go))
                outcome = await sharded.run_phase(ctx, name, "", shards, members, total)
            outcome_checks(result, "", outcome, "every remaining client")
            order = DeparturesOrder(room, vanished, "disconnected", nicks)
            await _left_checks_sharded(ctx, result, name, shards, order)
            await _still_serving(ctx, result, urls[0], room)
        go.set()
        ctx.progress(f"{name}: closing", 0, 1)
        await sharded.close(result, shards)


async def _start_vanishers(
    result: ScenarioResult,
    nursery: trio.Nursery,
    urls: list[str],
    room: str,
    vanished: list[str],
    go: trio.Event,
) -> bool:
    """Connect the vanishing clients (they vanish once ``go`` is set); whether all did."""
    ready = trio.Semaphore(0)
    failures: list[str] = []
    for i, nick in enumerate(vanished):
        url = urls[i % len(urls)]
        kind = VANISH_KINDS[i % len(VANISH_KINDS)]
        nursery.start_soon(_vanisher, url, nick, room, kind, ready, go, failures)
    for _ in vanished:
        await ready.acquire()
    return result.check(
        "vanishers connected", "every vanishing client connects", not failures, failures or "all"
    )


async def _set(event: trio.Event) -> None:
    event.set()


async def _vanisher(
    url: str,
    nick: str,
    room: str,
    kind: str,
    ready: trio.Semaphore,
    go: trio.Event,
    failures: list[str],
) -> None:
    """Join, read until ``go``, then vanish the ``kind`` way."""
    try:
        async with open_raw(url) as raw:
            await raw.hello(nick, [room])
            ready.release()
            async with trio.open_nursery() as reading:
                reading.start_soon(_drain, raw)
                await go.wait()
                reading.cancel_scope.cancel()
            if kind != "reset":
                await raw.send_half()
            await (raw.drop() if kind == "half line + close" else raw.reset())
    except (TriochatError, OSError) as exc:
        failures.append(f"{nick}: {exc}")
        ready.release()


async def _drain(raw: RawClient) -> None:
    try:
        while True:
            await raw.receive_lines()
    except TriochatError:
        return


async def _still_serving(ctx: Context, result: ScenarioResult, url: str, room: str) -> None:
    """A newcomer connects, speaks and is answered after the faults."""
    observed = "no answer"
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, [url])
        try:
            (sim,) = await fleet.open([ctx.nick(BROKEN_PIPE, "after")], [room])
        except Exception as exc:  # any failure here is the finding, reported as such
            sim = None
            observed = f"cannot connect: {exc}"
        if sim is not None and sim.client is not None:
            await sim.client.say(room, "still there?")
            await wait_until(ctx, f"{BROKEN_PIPE}: newcomer", lambda: (sim.tally.acks, 1), 5.0)
            observed = "newcomer welcomed and acked" if sim.tally.acks else "newcomer not acked"
        elif sim is not None:
            observed = f"cannot connect: {sim.failure}"
        await fleet.close(notes=result.notes)
    result.check(
        "server keeps serving",
        "after the faults a new client connects, says something and gets its ack",
        observed == "newcomer welcomed and acked",
        observed,
    )
