"""``churn``: clients connect and leave in a loop; afterwards nothing of them is left.

A stable group stays in the room throughout while up to 20 workers connect,
post one message and leave, in a loop, for ``--duration`` seconds, rotating
through the three ways to go: ``quit``, a polite close, and an abrupt drop.
Afterwards the server must be back to exactly the stable group, checked
through the protocol: ``who`` (the whole server, filtered to this run's nicks)
and ``who(room)`` list exactly the stable clients, and every stable client saw
exactly one ``joined`` and one ``left`` per churned client. With the harness's
own server it also checks the server's session count. With plain ``ws://`` or
``tcp://`` targets the stable group is split over ``--workers`` shards
(:mod:`harness.sharded`) but for one observer, which stays in this process with
the churning workers and asks ``who``.
"""

from __future__ import annotations

import trio

from harness import sharded
from harness.context import Context, Target
from harness.fleet import SEND_ERRORS, Fleet, Sim
from harness.model import ScenarioResult
from harness.scenarios.common import barrier, room_members, wait_until
from harness.shard import Balance
from harness.swarm import lean_url
from harness.traffic import connect_check, connect_check_counts, open_members
from harness.trust import open_client
from harness.workers import open_shards
from triochat.errors import ConnectionLost

NAME = "churn"
PROVES = "sessions that come and go leave nothing behind (no leaked session or member)"
MAX_WORKERS = 20
LEAVE_WAYS = ("quit", "close", "drop")
QUIT_TIMEOUT = 10.0


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients, 2)
    workers = min(max(1, n // 10), MAX_WORKERS)
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        if all(lean_url(url) for url in target.urls) and n - workers > 1:
            await _sharded(ctx, result, target, fleet, n - workers, workers)
        else:
            await _in_process(ctx, result, target, fleet, n - workers, workers)
        await fleet.close(notes=result.notes)


async def _in_process(
    ctx: Context, result: ScenarioResult, target: Target, fleet: Fleet, count: int, workers: int
) -> None:
    room = ctx.room(NAME)
    stable = await open_members(ctx, fleet, NAME, room, count)
    if connect_check(result, stable):
        churned = await _churn_all(ctx, result, target, room, workers)
        nicks = {sim.nick for sim in stable}
        await _leak_checks(ctx, result, target, room, stable[0], nicks)
        _balance_check(result, Balance.of([(sim.nick, sim.tally) for sim in stable], churned))


async def _sharded(
    ctx: Context, result: ScenarioResult, target: Target, fleet: Fleet, count: int, workers: int
) -> None:
    """The stable group but its observer in ``--workers`` shards."""
    room = ctx.room(NAME)
    async with open_shards(max(1, min(ctx.options.workers, count - 1))) as shards:
        members = await sharded.open_members(
            ctx,
            result,
            NAME,
            shards,
            target.urls,
            count - 1,
            room,
            watch_prefix=_churned_prefix(ctx),
        )
        (observer,) = await fleet.open([ctx.nick(NAME, "observer")], [room])
        connected = members.connected + (observer.client is not None)
        failure = members.first_failure or observer.failure
        if connect_check_counts(result, connected, count, failure):
            churned = await _churn_all(ctx, result, target, room, workers)
            nicks = {nick for part in members.nicks for nick in part} | {observer.nick}
            await _leak_checks(ctx, result, target, room, observer, nicks)
            # The observer's who answer says nothing of what the shards' members have read:
            # each pings, and once it has its pong it has read every event sent before.
            ctx.progress(f"{NAME}: sync", 0, 1)
            synced = await sharded.synced(shards, ctx.options.settle)
            if synced.answered < synced.asked:
                result.notes.append(
                    f"{synced.asked - synced.answered} of {synced.asked} members had no pong"
                    " within --settle: the balance counts what they had read by then"
                )
            mine = Balance.of([(observer.nick, observer.tally)], churned)
            _balance_check(result, Balance.merge([mine, await sharded.balance(shards, churned)]))
        ctx.progress(f"{NAME}: closing", 0, 1)
        await sharded.close(result, shards)


def _churned_prefix(ctx: Context) -> str:
    """What every churned client's nick starts with (``w<worker>x<cycle>``)."""
    return ctx.nick(NAME, "w")


async def _churn_all(
    ctx: Context, result: ScenarioResult, target: Target, room: str, workers: int
) -> list[str]:
    """``workers`` churning workers for ``--duration``; the nicks that came and went."""
    churned: list[str] = []
    failures: list[str] = []
    started = trio.current_time()
    deadline = started + ctx.options.churn_seconds()
    async with trio.open_nursery() as churning:
        for w in range(workers):
            churning.start_soon(_churn, ctx, target, w, room, deadline, churned, failures)
        await wait_until(
            ctx,
            f"{NAME}: {workers} workers",
            lambda: (len(churned), 10**9),
            ctx.options.churn_seconds(),
        )
    result.figures["churn_cycles"] = len(churned)
    elapsed = trio.current_time() - started
    result.figures["churn_cycles_per_s"] = round(len(churned) / max(elapsed, 1e-3), 1)
    result.check(
        "churn ran",
        "at least one connect/leave cycle per worker, none refused",
        len(churned) >= workers and not failures,
        f"{len(churned)} cycles by {workers} workers"
        + (f"; {len(failures)} failed, e.g. {failures[0]}" if failures else ""),
    )
    return churned


async def _churn(
    ctx: Context,
    target: Target,
    worker: int,
    room: str,
    deadline: float,
    churned: list[str],
    failures: list[str],
) -> None:
    cycle = 0
    while cycle == 0 or trio.current_time() < deadline:  # one cycle at least, however short
        nick = ctx.nick(NAME, f"w{worker}x{cycle}")  # see _churned_prefix
        url = target.urls[cycle % len(target.urls)]
        way = LEAVE_WAYS[(worker + cycle) % len(LEAVE_WAYS)]
        cycle += 1
        try:
            await _one_cycle(url, nick, room, way)
        except (*SEND_ERRORS, OSError) as exc:
            failures.append(f"{nick} ({way}): {type(exc).__name__}: {exc}")
            continue
        churned.append(nick)


async def _one_cycle(url: str, nick: str, room: str, way: str) -> None:
    async with open_client(url, nick, rooms=[room]) as client:
        await client.say(room, f"c:{nick}")
        if way == "quit":
            await client.quit()
            with trio.move_on_after(QUIT_TIMEOUT):
                try:
                    while True:
                        await client.receive_lines()
                except ConnectionLost:
                    pass
        elif way == "drop":
            await client.abort()


async def _leak_checks(
    ctx: Context,
    result: ScenarioResult,
    target: Target,
    room: str,
    observer: Sim,
    stable_nicks: set[str],
) -> None:
    """``observer`` asks ``who`` until the server lists exactly ``stable_nicks`` (or
    ``--settle`` passed), then the verdict."""
    assert observer.client is not None
    mine = f"{ctx.run_id}-{NAME[:6]}-"
    stable = len(stable_nicks)

    async def settled() -> bool:
        await barrier(ctx, f"{NAME}: who", [observer], room, ctx.options.settle)
        await observer.client.who(None)  # type: ignore[union-attr]
        await barrier(ctx, f"{NAME}: who", [observer], room, ctx.options.settle)
        everyone = {nick for nick in observer.tally.members.get(None, []) if nick.startswith(mine)}
        return (
            everyone == stable_nicks
            and room_members(observer, room) == stable_nicks
            and _server_settled(target, stable)
        )

    deadline = trio.current_time() + ctx.options.settle
    clean = await settled()
    while not clean and trio.current_time() < deadline:
        await trio.sleep(0.2)
        clean = await settled()
    online = {nick for nick in observer.tally.members.get(None, []) if nick.startswith(mine)}
    leaked = sorted(online - stable_nicks)
    result.check(
        "no leaked members",
        "afterwards who and who(room) list exactly the clients still connected",
        online == stable_nicks and room_members(observer, room) == stable_nicks,
        f"{len(online)} of this run online, {len(stable_nicks)} expected"
        + (f"; leaked e.g. {leaked[:3]}" if leaked else ""),
    )
    if target.server is not None:
        server = target.server
        result.check(
            "server sessions",
            "the in-process server holds exactly one session per connected client",
            server.connections == stable and len(server.hub) == stable,
            f"{server.connections} sessions, {len(server.hub)} members, {stable} expected",
        )


def _server_settled(target: Target, expected: int) -> bool:
    server = target.server
    return server is None or (server.connections == expected and len(server.hub) == expected)


def _balance_check(result: ScenarioResult, seen: Balance) -> None:
    result.check(
        "joins and leaves balance",
        "every stable client saw exactly one joined and one left per churned client",
        seen.wrong == 0,
        f"{seen.churned} churned x {seen.stable} stable: {seen.wrong} wrong"
        + (f"; e.g. {seen.example}" if seen.example else ""),
    )
