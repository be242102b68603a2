"""Trio as a guest of asyncio: it runs alongside, and stopping it leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest
import trio

from tui.guest import TrioGuest

pytestmark = pytest.mark.asyncio


async def test_trio_runs_beside_asyncio_and_stops_completely() -> None:
    ticks: list[int] = []
    cleaned: list[str] = []
    listeners: list[trio.SocketListener] = []
    started = asyncio.Event()

    async def ticker() -> None:
        try:
            for n in range(1_000_000):
                ticks.append(n)
                await trio.sleep(0.001)
        finally:
            cleaned.append("ticker")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners.extend(await trio.open_tcp_listeners(0, host="127.0.0.1"))
            nursery.start_soon(ticker)
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cleaned.append("main")
                for listener in listeners:
                    await trio.aclose_forcefully(listener)

    guest = TrioGuest()
    guest.start(main)
    async with asyncio.timeout(10):
        await started.wait()
        while len(ticks) < 5:  # noqa: ASYNC110 (asyncio runs while Trio makes progress)
            await asyncio.sleep(0.001)
    assert guest.running
    await guest.aclose()
    assert guest.finished
    assert not guest.running
    assert sorted(cleaned) == ["main", "ticker"]
    assert all(listener.socket.fileno() == -1 for listener in listeners)
    count = len(ticks)
    await asyncio.sleep(0.01)
    assert len(ticks) == count  # nothing of Trio runs any more
    assert not guest.call_soon(print)


async def test_call_soon_runs_inside_trio() -> None:
    seen: list[bool] = []
    send, receive = trio.open_memory_channel[int](1)

    async def main() -> None:
        async with receive:
            value = await receive.receive()
            seen.append(value == 42)

    guest = TrioGuest()
    guest.start(main)
    async with asyncio.timeout(10):
        while not guest.call_soon(send.send_nowait, 42):  # noqa: ASYNC110 (Trio starting)
            await asyncio.sleep(0.001)
        await guest.wait()
    assert seen == [True]
