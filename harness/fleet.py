"""Simulated clients built on the client library: many, cheap, each counting what it reads.

Theory of operation
-------------------
Each :class:`Sim` runs as one task: it connects (a :class:`trio.CapacityLimiter`
keeps connection attempts in flight bounded, so a thousand clients do not
overflow the listen backlog), says ``hello``, then reads raw lines into its
:class:`~harness.tally.Tally` until it is told to stop or the server closes the
connection. Scenario code sends through ``sim.client`` while the reader runs.

:meth:`Fleet.open` returns once every client is welcomed or has failed. If
not a single one got through and the first failure was a
:class:`~triochat.errors.ConnectError`, the server is unreachable: that is
:class:`Unreachable`, which the command line turns into exit status 2.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field

import trio
from wsproto.utilities import LocalProtocolError

from harness.meter import register
from harness.tally import Tally
from harness.trust import open_client
from harness.wire import now_ns
from triochat.client import Client
from triochat.errors import ConnectError, ConnectionLost, Rejected, TriochatError
from triochat.protocol import ProtocolError
from triochat.protocol.events import Limits

CONNECTS_IN_FLIGHT = 64
CONNECT_TIMEOUT = 10.0
CONNECT_TIMEOUT_PER_CLIENT = 0.03
"""A big run saturates the machine (its own server shares the process): allow more time."""
QUIT_GRACE = 5.0
"""Seconds the server has to end sessions after the harness says ``quit``."""
QUIT_REASON = "harness run finished"
SEND_ERRORS = (TriochatError, trio.BusyResourceError)
"""What a send may raise when the connection ends under it. ``BusyResourceError``
escapes the client library when its close (``send_eof``) overlaps a send
(reported upstream); until that is fixed, senders treat it as a lost connection."""


class Unreachable(Exception):
    """No client could reach the server; the message is one line for a person."""


@dataclass(eq=False)
class Sim:
    index: int
    nick: str
    url: str
    rooms: list[str]
    tally: Tally = field(default_factory=Tally)
    client: Client | None = None
    failure: str | None = None
    closed_at_ns: int | None = None
    """When the server ended the connection (None while it is open)."""
    settled: bool = False
    """Connected or failed: :meth:`Fleet.open` no longer waits for it."""
    stop: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)

    @property
    def alive(self) -> bool:
        return self.client is not None and self.closed_at_ns is None


class Fleet:
    """A group of simulated clients that share rooms, run in the caller's nursery."""

    def __init__(self, nursery: trio.Nursery, urls: list[str]) -> None:
        self._nursery = nursery
        self._urls = urls
        self._limiter = trio.CapacityLimiter(CONNECTS_IN_FLIGHT)
        self.sims: list[Sim] = []
        self.limits: Limits | None = None
        self.close_races = 0
        """Clients whose polite close hit trio-websocket's Pong-after-Close race."""
        self.connect_timeout = CONNECT_TIMEOUT
        register(self)

    async def open(self, nicks: list[str], rooms: list[str]) -> list[Sim]:
        """Connect one client per nick (URLs round-robin); return once all are settled."""
        start = len(self.sims)
        self.connect_timeout = max(
            self.connect_timeout, CONNECT_TIMEOUT_PER_CLIENT * (start + len(nicks))
        )
        batch = [
            Sim(start + i, nick, self._urls[(start + i) % len(self._urls)], rooms)
            for i, nick in enumerate(nicks)
        ]
        self.sims += batch
        settled = trio.Semaphore(0)
        for sim in batch:
            self._nursery.start_soon(self._live, sim, settled)
        for _ in batch:
            await settled.acquire()
        self._check_reachable(batch)
        return batch

    def _check_reachable(self, batch: list[Sim]) -> None:
        if batch and all(sim.client is None for sim in batch):
            raise Unreachable(batch[0].failure or "no client could connect")

    async def _live(self, sim: Sim, settled: trio.Semaphore) -> None:
        try:
            await self._session(sim, settled)
        except* LocalProtocolError:
            # trio-websocket answers a server Ping that crosses our Close with a Pong,
            # which wsproto refuses: a client-side race at close, not a server fault.
            self.close_races += 1
        except* (TriochatError, ProtocolError, OSError) as group:
            sim.failure = _one_line(_first_leaf(group))
        finally:
            if not sim.settled:
                sim.settled = True
                settled.release()
            sim.ended.set()

    async def _session(self, sim: Sim, settled: trio.Semaphore) -> None:
        await self._limiter.acquire_on_behalf_of(sim)
        holding = True
        try:
            async with open_client(
                sim.url,
                sim.nick,
                rooms=sim.rooms,
                connect_timeout=self.connect_timeout,
            ) as client:
                self._limiter.release_on_behalf_of(sim)
                holding = False
                sim.client = client
                if self.limits is None and client.welcome is not None:
                    self.limits = client.welcome.limits
                sim.settled = True
                settled.release()
                with sim.stop:
                    await _read(client, sim)
        finally:
            if holding:
                self._limiter.release_on_behalf_of(sim)

    def connected(self) -> list[Sim]:
        return [sim for sim in self.sims if sim.client is not None]

    async def close(self, sims: list[Sim] | None = None, *, notes: list[str] | None = None) -> None:
        """Leave the way the protocol asks: ``quit``, then read until the server closes.

        So a shared server records ``left{quit}`` and frees the nicks at once.
        Clients the server has not let go within :data:`QUIT_GRACE` are closed
        from this side. Returns when every one has closed; close races of the
        WebSocket library (see :meth:`_live`) go to ``notes``.
        """
        chosen = self.sims if sims is None else sims
        with trio.move_on_after(QUIT_GRACE):
            for sim in chosen:
                if sim.client is not None and sim.alive:
                    with suppress(*SEND_ERRORS):
                        await sim.client.quit(QUIT_REASON)
            for sim in chosen:
                await sim.ended.wait()  # the reader sees the server close, then ends
        for sim in chosen:
            sim.stop.cancel()
        for sim in chosen:
            await sim.ended.wait()
        if notes is not None and self.close_races:
            notes.append(
                f"{self.close_races} client closes met trio-websocket's Pong-after-Close race"
                " (client side, not a server fault)"
            )


async def _read(client: Client, sim: Sim) -> None:
    try:
        while True:
            sim.tally.take(await client.receive_lines())
    except ConnectionLost:
        sim.closed_at_ns = now_ns()


async def quit_and_wait(client: Client) -> None:
    """Say ``quit`` and read until the server closes (within :data:`QUIT_GRACE`)."""
    with trio.move_on_after(QUIT_GRACE), suppress(*SEND_ERRORS):
        await client.quit(QUIT_REASON)
        while True:
            await client.receive_lines()


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ConnectError | Rejected):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
