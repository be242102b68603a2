"""A join storm starves nobody: a real ``triochat serve``, clients joining one room as fast
as they can, each reading everything, while an innocent client says hello to another room
(issue 13, finding 7; ``python -m bench --storm-only`` measures the storm's CPU)."""

from __future__ import annotations

import statistics
from contextlib import AsyncExitStack

import trio

from bench import wire
from bench.loadgen import RECV_BYTES
from bench.runner import FD_RESERVE, raise_fd_limit
from bench.storm import STORM_ROOM, Prober, Roster, nicks
from tests.server.helpers import host_port
from tests.server.test_cli import serving

CLIENTS = 2000
"""The acceptance's storm. Each client is owed about 2,000 lines; the server's outboxes are
made to hold twice that, so this process, a slower reader than the bench's load generator,
never has one of its clients evicted as a slow consumer."""
WELCOME_S = 1.0
SERVE = ["--port", "0", "--tcp-port", "0", "--no-history", "--rate-limit", "0"]
SERVE += ["--outbox-events", str(2 * CLIENTS)]


async def join_and_read(url: str, roster: Roster, streams: AsyncExitStack) -> None:
    """Say hello to the storm room, then read until ``roster`` knows every member."""
    stream = await streams.enter_async_context(await trio.open_tcp_stream(*host_port(url)))
    await stream.send_all(wire.hello(roster.nick.decode(), STORM_ROOM))
    while not roster.done:
        data = await stream.receive_some(RECV_BYTES)
        assert data, f"{roster.nick.decode()}: closed by the server knowing {roster.known}"
        roster.feed(data)


async def test_a_join_storm_leaves_a_welcome_in_another_room_under_a_second() -> None:
    """Finding: 2,000 joins into one room kept an innocent client 12.9 s from its welcome.

    The innocent client is the bench's: a thread of its own, so the storm's readers in
    this process do not delay its clock.
    """
    assert raise_fd_limit() > CLIENTS + FD_RESERVE, "RLIMIT_NOFILE: too few descriptors"
    everyone = nicks(CLIENTS)
    rosters = [Roster(nick, everyone) for nick in everyone]
    with trio.fail_after(60):
        # The server is killed on the way out, before its clients close: a graceful stop,
        # or clients leaving first, would announce 2,000 departures (seconds, and not the
        # subject here).
        async with AsyncExitStack() as streams, serving(*SERVE) as (_, urls):
            url = next(u for u in urls if u.startswith("tcp://"))
            innocent = Prober(host_port(url))
            began = trio.current_time()
            innocent.start()
            try:
                with trio.move_on_after(30):
                    async with trio.open_nursery() as storm:
                        for roster in rosters:
                            storm.start_soon(join_and_read, url, roster, streams)
            finally:
                await trio.to_thread.run_sync(innocent.stop)
            wall = trio.current_time() - began
    problems = [problem for roster in rosters for problem in roster.problems()]
    assert not problems, f"{len(problems)} problems, first: {problems[:3]}"
    assert innocent.error is None
    waits = innocent.waits
    figures = (
        f"{CLIENTS} joins in {wall:.2f} s; innocent welcome max {max(waits):.3f} s, "
        f"median {statistics.median(waits):.3f} s over {len(waits)} probes"
    )
    assert max(waits) < WELCOME_S, figures
