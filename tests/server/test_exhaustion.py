"""No client can make the server hold more than its bounds: a real ``triochat serve``, whose
memory is read from /proc, attacked over real sockets at a size the suite can afford."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.server.helpers import fill, settle_join, skip_until, stalled
from tests.server.test_cli import Proc, serving
from triochat.client import open_client
from triochat.protocol import encode
from triochat.protocol.events import (
    Hello,
    History,
    Join,
    Joined,
    Left,
    LeftReason,
    Part,
    Welcome,
)

MIB = 1 << 20
HEAVY = "\x01" * 7990
"""The longest text, each character stored escaped: a 48 KB line."""


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@asynccontextmanager
async def attacked_server(*extra: str) -> AsyncIterator[tuple[Proc, list[str]]]:
    """A ``triochat serve`` with history in memory and no flood control, stopped in order after."""
    args = ("--port", "0", "--tcp-port", "0", "--no-history", "--rate-limit", "0", *extra)
    async with serving(*args) as (proc, urls):
        yield proc, urls
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.process.wait() == 0


async def time_to_welcome(url: str) -> float:
    started = trio.current_time()
    async with open_client(url, "innocent") as innocent:
        assert isinstance(innocent.welcome, Welcome)
    return trio.current_time() - started


async def test_history_requests_from_a_client_that_never_reads_pin_its_bound_at_most() -> None:
    """Finding: 58 history pages queued in one read (about 28 MB) before any check."""
    ask = encode(History(room="lobby", limit=500)) * 58
    with trio.fail_after(60):
        async with attacked_server() as (proc, urls), open_client(urls[1], "ada") as ada:
            await settle_join(ada)
            await fill(ada, "lobby", 11, HEAVY)
            before = rss(proc.process.pid)
            for n in range(6):
                hoarder = await stalled(urls[1], Hello(nick=f"hoarder{n}"))
                await hoarder.send_all(ask)
                left = await skip_until(ada, Left, nick=f"hoarder{n}")
                assert left.reason is LeftReason.SLOW_CONSUMER
                await hoarder.aclose()
            grown = rss(proc.process.pid) - before
            assert await time_to_welcome(urls[1]) < 1.0
    assert grown < 8 * MIB, f"{grown / MIB:.1f} MiB more after six hoarders"


async def test_resumes_by_clients_that_never_read_pin_their_bound_at_most() -> None:
    """Finding: one small hello with ``resume`` copied a room's whole history into the outbox."""
    with trio.fail_after(60):
        async with attacked_server() as (proc, urls), open_client(urls[1], "ada") as ada:
            await settle_join(ada)
            await fill(ada, "lobby", 200, HEAVY)  # about 10 MB of history
            before = rss(proc.process.pid)
            attackers = []
            for n in range(5):
                attackers.append(await stalled(urls[1], Hello(nick=f"r{n}", resume={"lobby": 0})))
                await skip_until(ada, Joined, nick=f"r{n}")
            grown = rss(proc.process.pid) - before
            assert await time_to_welcome(urls[1]) < 1.0
            for stream in attackers:
                await stream.aclose()
    assert grown < 12 * MIB, f"{grown / MIB:.1f} MiB more after five stalled resumes"


async def test_a_thousand_evicted_sessions_leave_nothing_behind() -> None:
    """Evicted sessions each held a full outbox; none of it may outlive them, GC or not."""
    ask = encode(History(room="lobby", limit=500)) * 8
    with trio.fail_after(90):
        async with (
            attacked_server("--outbox-bytes", "65536") as (proc, urls),
            open_client(urls[1], "ada") as ada,
        ):
            await settle_join(ada)
            await fill(ada, "lobby", 4, "z" * 7000)  # a page is 32 KB: two fill the outbox

            async def hoard(n: int) -> None:
                stream = await stalled(urls[1], Hello(nick=f"h{n}", rooms=["lobby"]))
                await stream.send_all(ask)
                while await stream.receive_some(1 << 16):  # until the server closes
                    pass
                await stream.aclose()

            async def wave(first: int) -> None:
                async with trio.open_nursery() as nursery:
                    for n in range(first, first + 25):
                        nursery.start_soon(hoard, n)

            await wave(0)
            before = rss(proc.process.pid)
            for first in range(25, 1000, 25):
                await wave(first)
            grown = rss(proc.process.pid) - before
            assert await time_to_welcome(urls[1]) < 1.0
    assert grown < 16 * MIB, f"{grown / MIB:.1f} MiB more after 975 evictions"


async def test_joining_again_and_again_without_reading_pins_the_bound_at_most() -> None:
    """Each join owes a past; a client that never reads gets it a page at a time, never all."""
    cycle = encode(Join(room="big")) + encode(Part(room="big"))
    with trio.fail_after(60):
        async with (
            attacked_server() as (proc, urls),
            open_client(urls[1], "ada", rooms=["big"]) as ada,
        ):
            await settle_join(ada)
            await fill(ada, "big", 50, HEAVY)  # a join's past: 50 events, about 2.4 MB
            churner = await stalled(urls[1], Hello(nick="churner", rooms=["lobby"]))
            before = rss(proc.process.pid)
            await churner.send_all(cycle * 100)
            for _ in range(100):  # every cycle done, as the room saw it
                await skip_until(ada, Left, nick="churner", room="big")
            grown = rss(proc.process.pid) - before
            assert await time_to_welcome(urls[1]) < 1.0
            await churner.aclose()
    assert grown < 8 * MIB, f"{grown / MIB:.1f} MiB more after 100 joins never read"
