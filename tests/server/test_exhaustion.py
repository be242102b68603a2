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
    HistoryPage,
    Join,
    Joined,
    Left,
    LeftReason,
    Part,
    Welcome,
)
from triochat.server.hub import Row
from triochat.server.store import HistoryStore

MIB = 1 << 20
HEAVY = "\U0001f642" * 7990
"""The longest text, of the heaviest characters text may hold (4 bytes of UTF-8 each;
control characters, which JSON escapes to 6, are refused): a 32 KB line."""


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
            await fill(ada, "lobby", 17, HEAVY)
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
            await fill(ada, "lobby", 300, HEAVY)  # about 10 MB of history
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
            await fill(ada, "big", 75, HEAVY)  # a join's past: 75 events, about 2.4 MB
            churner = await stalled(urls[1], Hello(nick="churner", rooms=["lobby"]))
            before = rss(proc.process.pid)
            await churner.send_all(cycle * 100)
            for _ in range(100):  # every cycle done, as the room saw it
                await skip_until(ada, Left, nick="churner", room="big")
            grown = rss(proc.process.pid) - before
            assert await time_to_welcome(urls[1]) < 1.0
            await churner.aclose()
    assert grown < 8 * MIB, f"{grown / MIB:.1f} MiB more after 100 joins never read"


async def test_fresh_rooms_made_across_reconnects_stay_within_the_history_budget() -> None:
    """Finding: every room ever named stayed in memory (~900 bytes each), from one client
    reconnecting to get round the per-connection limits."""
    budget, per_connection, connections = 2 * MIB, 4000, 5
    with trio.fail_after(90):
        async with attacked_server("--history-bytes", str(budget)) as (proc, urls):
            before = rss(proc.process.pid)
            for c in range(connections):
                async with open_client(urls[1], f"churner{c}") as churner:
                    await settle_join(churner)
                    for first in range(0, per_connection, 100):  # read as it goes
                        rooms = [f"c{c}-{n}" for n in range(first, first + 100)]
                        await churner.send_raw(
                            b"".join(encode(Join(room=r)) + encode(Part(room=r)) for r in rooms)
                        )
                        await skip_until(churner, Left, room=rooms[-1])
            grown = rss(proc.process.pid) - before
            assert await time_to_welcome(urls[1]) < 1.0
    made = per_connection * connections
    assert grown < budget + 6 * MIB, f"{grown / MIB:.1f} MiB more after {made} rooms"


async def test_half_a_million_stored_rooms_start_at_once_and_load_when_joined(
    tmp_path: Path,
) -> None:
    """Finding: with --db, every room was loaded at start-up (500,000: 12.1 s, 607 MB)."""
    db = tmp_path / "history.sqlite3"
    store = HistoryStore(db, retention=100)
    store.write(
        Row(f"r{n}", 1, 1.0, encode(Joined(room=f"r{n}", nick="ada", seq=1, ts=1.0)))
        for n in range(500_000)
    )
    store.close()
    with trio.fail_after(60):
        started = trio.current_time()
        async with serving("--port", "0", "--tcp-port", "0", "--db", str(db)) as (proc, urls):
            took = trio.current_time() - started
            memory = rss(proc.process.pid)
            async with open_client(urls[1], "bob", rooms=["r123456"]) as bob:
                joined = await skip_until(bob, Joined, nick="bob")
                page = await skip_until(bob, HistoryPage)
            proc.process.send_signal(signal.SIGTERM)
            assert await proc.process.wait() == 0
    assert took < 2.0, f"{took:.2f} s to start"
    assert memory < 100 * MIB, f"{memory / MIB:.0f} MiB at start"
    assert joined.seq == 2
    assert [(e.nick, e.seq) for e in page.events if isinstance(e, Joined)] == [("ada", 1)]
