"""``churn``: clients connect and leave in a loop; afterwards nothing of them is left.

A stable group stays in the room throughout while up to 20 workers connect,
post one message and leave, in a loop, for ``--duration`` seconds, rotating
through the three ways to go: ``quit``, a polite close, and an abrupt drop.
Afterwards the server must be back to exactly the stable group, checked
through the protocol: ``who`` (the whole server, filtered to this run's nicks)
and ``who(room)`` list exactly the stable clients, and every stable client saw
exactly one ``joined`` and one ``left`` per churned client. With the harness's
own server it also checks the server's session count.
"""

from __future__ import annotations

import trio

from harness.context import Context, Target
from harness.fleet import SEND_ERRORS, Fleet, Sim
from harness.model import ScenarioResult
from harness.scenarios.common import barrier, room_members, wait_until
from harness.traffic import connect_check, open_members
from harness.trust import open_client
from triochat.errors import ConnectionLost

NAME = "churn"
PROVES = "sessions that come and go leave nothing behind (no leaked session or member)"
MAX_WORKERS = 20
LEAVE_WAYS = ("quit", "close", "drop")
QUIT_TIMEOUT = 10.0


async def run(ctx: Context, result: ScenarioResult) -> None:
    n = max(ctx.options.clients, 2)
    workers = min(max(1, n // 10), MAX_WORKERS)
    room = ctx.room(NAME)
    async with ctx.target(NAME) as target, trio.open_nursery() as nursery:
        fleet = Fleet(nursery, target.urls)
        stable = await open_members(ctx, fleet, NAME, room, n - workers)
        if connect_check(result, stable):
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
            await _leak_checks(ctx, result, target, room, stable, churned)
        await fleet.close(notes=result.notes)


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
        nick = ctx.nick(NAME, f"w{worker}x{cycle}")
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
    stable: list[Sim],
    churned: list[str],
) -> None:
    stable_nicks = {sim.nick for sim in stable}
    observer = stable[0]
    assert observer.client is not None
    mine = f"{ctx.run_id}-{NAME[:6]}-"

    async def settled() -> bool:
        await barrier(ctx, f"{NAME}: who", [observer], room, ctx.options.settle)
        await observer.client.who(None)  # type: ignore[union-attr]
        await barrier(ctx, f"{NAME}: who", [observer], room, ctx.options.settle)
        everyone = {nick for nick in observer.tally.members.get(None, []) if nick.startswith(mine)}
        return (
            everyone == stable_nicks
            and room_members(observer, room) == stable_nicks
            and _server_settled(target, len(stable))
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
    _balance_check(result, stable, churned)
    if target.server is not None:
        server = target.server
        result.check(
            "server sessions",
            "the in-process server holds exactly one session per connected client",
            server.connections == len(stable) and len(server.hub) == len(stable),
            f"{server.connections} sessions, {len(server.hub)} members, {len(stable)} expected",
        )


def _server_settled(target: Target, expected: int) -> bool:
    server = target.server
    return server is None or (server.connections == expected and len(server.hub) == expected)


def _balance_check(result: ScenarioResult, stable: list[Sim], churned: list[str]) -> None:
    wrong = 0
    example = ""
    for sim in stable:
        lefts: dict[str, int] = {}
        for left in sim.tally.lefts:
            lefts[left.nick] = lefts.get(left.nick, 0) + 1
        for nick in churned:
            if sim.tally.joined[nick] != 1 or lefts.get(nick, 0) != 1:
                wrong += 1
                example = example or (
                    f"; e.g. {sim.nick} saw {nick} join {sim.tally.joined[nick]}x,"
                    f" leave {lefts.get(nick, 0)}x"
                )
    result.check(
        "joins and leaves balance",
        "every stable client saw exactly one joined and one left per churned client",
        wrong == 0,
        f"{len(churned)} churned x {len(stable)} stable: {wrong} wrong" + example,
    )
