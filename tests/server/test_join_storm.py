"""A join storm starves nobody: a real ``triochat serve``, 2,000 clients joining one room as
fast as they can, each reading everything, while an innocent client says hello to another
room (issue 13, finding 7).

The storm is the bench's (:mod:`bench.storm`): its clients read in one epoll loop, fast
enough that the server, not this process, sets the pace; a storm of Trio tasks here is so
slow to read that it spreads the joins out, and then the old server passed too. The
innocent client is a thread of its own, so nothing in this process delays its clock.
``python -m bench --storm-only`` reports the storm's server CPU.

Two bounds: the issue's, under a second on the wall clock, and a tighter one on the
server's own clock, the CPU its event loop used while the innocent client waited. The
second is the invariant: the innocent does not wait for the storm's work. It is bounded as
a share of the whole storm's server CPU, since machines differ in speed: the same code
spent 60-90 ms of a 0.8 s storm on one machine and up to 289 ms of a 1.6-2 s storm on a
slower one; when joins into the storm's room do not take turns the wait spans most of the
storm (440-640 ms of 0.8 s), and connections accepted one per scheduling round all of it.
On a loaded machine the server's clock does not stretch by the time the server waits for a
CPU, as the wall clock does; it still grows somewhat with the suite running beside it, so
the test runs alone.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from bench.runner import FD_RESERVE, raise_fd_limit
from bench.storm import measure_storm

CLIENTS = 2000
WELCOME_MS = 1000.0
WELCOME_RUN_SHARE = 0.3
"""The most of the storm's server CPU that one innocent wait may span."""


@pytest.mark.alone  # 2,000 clients: the rest of the suite would be measured along with it
async def test_a_join_storm_leaves_a_welcome_in_another_room_under_a_second() -> None:
    """Finding: 2,000 joins into one room kept an innocent client 12.9 s from its welcome.

    Every storm client must also end up with exactly its due: its welcome, a members
    list with itself in it, and one ``joined`` for each later member (the bench's roster
    checks; any miss is the storm's error).
    """
    assert raise_fd_limit() > CLIENTS + FD_RESERVE, "RLIMIT_NOFILE: too few descriptors"
    storm = await trio.to_thread.run_sync(
        partial(measure_storm, CLIENTS, server_cpus=None, progress=lambda _: None)
    )
    assert storm.error is None, storm.error
    figures = (
        f"{CLIENTS} joins in {storm.wall_s:.2f} s; innocent welcome max"
        f" {storm.welcome_max_ms:.0f} ms, median {storm.welcome_median_ms:.0f} ms"
        f" over {storm.probes} probes; server CPU in a wait at most"
        f" {storm.welcome_run_max_ms:.0f} ms of {storm.server_cpu_s:.2f} s"
        f" (slowest connect {storm.connect_max_ms:.0f} ms)"
    )
    assert storm.welcome_run_max_ms < WELCOME_RUN_SHARE * storm.server_cpu_s * 1000, figures
    assert storm.welcome_max_ms < WELCOME_MS, figures
